#!/usr/bin/env python3
"""SQLite over HTTP for the webapp example (rqlite's API shape, a small part of it).

    POST /db/execute   body: JSON list of SQL statements, each a string or [sql, *params]
                       -> {"results": [{"rows_affected": n, "last_insert_id": id}, ...]}
    GET  /db/query?q=SELECT...  -> {"results": [{"columns": [...], "values": [[...], ...]}]}

Errors answer 400 with {"error": "..."}. One writer at a time (SQLite's own lock).
"""

import argparse
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    database = ""

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if urlparse(self.path).path != "/db/execute":
            return self._answer(404, {"error": "no such endpoint"})
        try:
            statements = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            results = []
            with LOCK, sqlite3.connect(self.database) as db:
                for statement in statements:
                    sql, *params = [statement] if isinstance(statement, str) else statement
                    cursor = db.execute(sql, params)
                    results.append({"rows_affected": cursor.rowcount, "last_insert_id": cursor.lastrowid})
        except (ValueError, TypeError, sqlite3.Error) as exc:
            return self._answer(400, {"error": str(exc)})
        self._answer(200, {"results": results})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/db/query":
            return self._answer(404, {"error": "no such endpoint"})
        query = parse_qs(url.query).get("q", [""])[0]
        try:
            with sqlite3.connect(self.database) as db:
                cursor = db.execute(query)
                columns = [c[0] for c in cursor.description or ()]
                values = [list(row) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            return self._answer(400, {"error": str(exc)})
        self._answer(200, {"results": [{"columns": columns, "values": values}]})

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on (default: all of the instance's)")
    parser.add_argument("--port", type=int, default=4001)
    parser.add_argument("--database", default="/golem/work/db.sqlite")
    args = parser.parse_args()
    Handler.database = args.database
    ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
