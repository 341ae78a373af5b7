#!/usr/bin/env python3
"""The webapp example's front end: a message board kept in the database instance.

    python app.py --db-address 192.168.0.2 initdb   # create the table
    python app.py --db-address 192.168.0.2 run      # serve http://0.0.0.0:5000/

GET / lists the messages with a form; POST / (form field `message`) adds one. GET /messages
streams them as text with chunked transfer encoding (one chunk per message).
"""

import argparse
import html
import json
import socket
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Database:
    def __init__(self, address, port):
        self.base = f"http://{address}:{port}"

    def execute(self, *statements):
        request = urllib.request.Request(f"{self.base}/db/execute", json.dumps(statements).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def query(self, sql):
        with urllib.request.urlopen(f"{self.base}/db/query?q={urllib.parse.quote(sql)}", timeout=10) as response:
            return json.load(response)["results"][0]["values"]


def handler_for(db):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _page(self, status, body, content_type="text/html; charset=utf-8"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/messages":
                return self._stream()
            if self.path != "/":
                return self._page(404, "not found\n", "text/plain")
            rows = db.query("SELECT id, message FROM messages ORDER BY id")
            items = "".join(f"<li>{html.escape(message)}</li>" for _, message in rows)
            self._page(200, f"<html><body><h1>Messages from {socket.gethostname()}</h1><ul>{items}</ul>"
                            "<form method=post><input name=message><button>Add</button></form></body></html>\n")

        def _stream(self):
            rows = db.query("SELECT id, message FROM messages ORDER BY id")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for ident, message in rows:
                chunk = f"{ident}: {message}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            message = form.get("message", [""])[0].strip()
            if not message:
                return self._page(400, "a message is required\n", "text/plain")
            db.execute(["INSERT INTO messages (message) VALUES (?)", message])
            self.send_response(303)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-address", required=True, help="the database instance's address on the network")
    parser.add_argument("--db-port", type=int, default=4001)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("action", choices=["initdb", "run"])
    args = parser.parse_args()
    db = Database(args.db_address, args.db_port)
    if args.action == "initdb":
        db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, message TEXT NOT NULL)")
        print("database ready", flush=True)
        return
    ThreadingHTTPServer(("0.0.0.0", args.port), handler_for(db)).serve_forever()


if __name__ == "__main__":
    main()
