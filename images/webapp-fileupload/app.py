"""The webapp_fileupload example's front end: files uploaded through a form on port 5000 are kept in
/webapp/uploads, and their names in the database instance (rqlite, through sqlalchemy_rqlite).

    python app.py --db-address ADDRESS [--db-port 4001] initdb   # creates the table
    python app.py --db-address ADDRESS [--db-port 4001] run      # serves http://0.0.0.0:5000/

GET / lists the uploaded files with a form; POST / (multipart field `file`) stores one;
GET /images/NAME sends it back.
"""

import argparse
from pathlib import Path

from flask import Flask, redirect, render_template, request, send_from_directory, url_for
from flask_sqlalchemy import SQLAlchemy
from werkzeug.utils import secure_filename

parser = argparse.ArgumentParser(description="files uploaded through a form, their names kept in rqlite")
parser.add_argument("--db-address", default="localhost", help="the database instance's address")
parser.add_argument("--db-port", default="4001", help="its rqlite HTTP port")
parser.add_argument("command", choices=("initdb", "run"))
args = parser.parse_args()

UPLOADS = Path("uploads").resolve()  # beside app.py: the example starts it in /webapp
SHOWN = 64

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = f"rqlite+pyrqlite://{args.db_address}:{args.db_port}/"
db = SQLAlchemy(app)


class Img(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    filename = db.Column(db.String(255))


@app.get("/")
def listing():
    newest = db.session.scalars(db.select(Img).order_by(Img.id.desc()).limit(SHOWN))
    return render_template("index.html", images=list(newest))


@app.get("/images/<filename>")
def download_image(filename):
    return send_from_directory(UPLOADS, filename)


@app.post("/")
def upload():
    sent = request.files.get("file")
    name = secure_filename(sent.filename or "") if sent else ""
    if not name:
        return render_template("error.html"), 400
    UPLOADS.mkdir(exist_ok=True)
    sent.save(UPLOADS / name)
    db.session.add(Img(filename=name))
    db.session.commit()
    return redirect(url_for("listing"))


if args.command == "initdb":
    with app.app_context():
        db.create_all()
else:
    app.run(host="0.0.0.0", port=5000)
