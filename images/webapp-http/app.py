"""The webapp example's front end: a message board on port 5000 whose messages live in the
database instance (rqlite, reached with SQLAlchemy through the sqlalchemy_rqlite dialect).

    python app.py --db-address ADDRESS [--db-port 4001] initdb   # creates the table
    python app.py --db-address ADDRESS [--db-port 4001] run      # serves http://0.0.0.0:5000/

GET / shows the newest messages and a form; POST / (form field `message`) adds one. GET /messages
streams them all as text, oldest first, one chunk each (chunked transfer encoding: the server
speaks HTTP/1.1 and keeps connections alive).
"""

import argparse

from flask import Flask, redirect, render_template, request, stream_with_context, url_for
from flask_sqlalchemy import SQLAlchemy
from werkzeug.serving import WSGIRequestHandler

parser = argparse.ArgumentParser(description="a message board kept in rqlite")
parser.add_argument("--db-address", default="localhost", help="the database instance's address")
parser.add_argument("--db-port", default="4001", help="its rqlite HTTP port")
parser.add_argument("command", choices=("initdb", "run"))
args = parser.parse_args()

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = f"rqlite+pyrqlite://{args.db_address}:{args.db_port}/"
db = SQLAlchemy(app)

SHOWN = 16


class Line(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    message = db.Column(db.String(255))


@app.get("/")
def board():
    newest = db.session.scalars(db.select(Line).order_by(Line.id.desc()).limit(SHOWN))
    return render_template("index.html", messages=list(newest))


@app.post("/")
def post():
    db.session.add(Line(message=request.form["message"]))
    db.session.commit()
    return redirect(url_for("board"))


@app.get("/messages")
def messages_as_text():
    def lines():
        for line in db.session.scalars(db.select(Line).order_by(Line.id)):
            yield f"{line.id}: {line.message}\n"

    return app.response_class(stream_with_context(lines()), mimetype="text/plain")


if args.command == "initdb":
    with app.app_context():
        db.create_all()
else:
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    app.run(host="0.0.0.0", port=5000)
