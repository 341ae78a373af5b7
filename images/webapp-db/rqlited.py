#!/usr/bin/env python3
"""A stand-in of rqlite's server (`rqlited`) for the webapp example: rqlite is a Go binary that
cannot be fetched here, so this serves the part of its HTTP API that clients such as pyrqlite (and
SQLAlchemy through sqlalchemy_rqlite) use, over one SQLite file. A single node: no Raft, no peers.

    rqlited [-http-addr HOST:PORT] [other rqlited flags, ignored] DATA_DIR

    POST /db/execute[?transaction]  body: JSON list of statements, each "SQL" or ["SQL", param, ...]
        -> {"results": [{"last_insert_id": n, "rows_affected": n} | {"error": "..."}, ...]}
        With ?transaction the statements run in one transaction, up to the first error.
    GET  /db/query?q=SQL   or   POST /db/query with a JSON list as above
        -> {"results": [{"columns": [...], "types": [...], "values": [[...], ...]} | {"error": "..."}]}
    GET  /status, /readyz

Statement errors are answered 200 with the error in their result, as rqlite does.
"""

import json
import os
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DATABASE_FILE = "db.sqlite"


class Store:
    """The node's database: one connection, one statement list at a time (as rqlite's Raft log)."""

    def __init__(self, path):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    def execute(self, statements, transaction):
        results = []
        with self._lock:
            if transaction:
                self._db.execute("BEGIN")
            for statement in statements:
                try:
                    sql, params = split(statement)
                    cursor = self._db.execute(sql, params)
                    results.append({"last_insert_id": cursor.lastrowid or 0, "rows_affected": max(cursor.rowcount, 0)})
                except (sqlite3.Error, ValueError) as exc:
                    results.append({"error": str(exc)})
                    if transaction:
                        break
            if transaction:
                self._db.execute("ROLLBACK" if results and "error" in results[-1] else "COMMIT")
        return results

    def query(self, statements):
        results = []
        with self._lock:
            for statement in statements:
                try:
                    sql, params = split(statement)
                    cursor = self._db.execute(sql, params)
                    rows = cursor.fetchall()
                except (sqlite3.Error, ValueError) as exc:
                    results.append({"error": str(exc)})
                    continue
                columns = [column[0] for column in cursor.description or ()]
                result = {"columns": columns, "types": [type_name(rows, i) for i in range(len(columns))]}
                if rows:
                    result["values"] = [list(row) for row in rows]
                results.append(result)
        return results


def split(statement):
    if isinstance(statement, str):
        return statement, []
    if isinstance(statement, list) and statement and isinstance(statement[0], str):
        return statement[0], statement[1:]
    raise ValueError(f"a statement is a string or a list [sql, params...], not {statement!r}")


def type_name(rows, index):
    """The column's type as rqlite names it, judged by its first value that is not NULL."""
    for row in rows:
        value = row[index]
        if value is not None:
            return {int: "integer", float: "real", str: "text", bytes: "blob"}.get(type(value), "")
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _statements(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        statements = json.loads(body or b"[]")
        if not isinstance(statements, list):
            raise ValueError("the body is a JSON list of statements")
        return statements

    def do_POST(self):
        url = urlparse(self.path)
        options = parse_qs(url.query, keep_blank_values=True)
        try:
            statements = self._statements()
        except ValueError as exc:
            return self._answer(400, {"error": str(exc)})
        if url.path == "/db/execute":
            return self._answer(200, {"results": self.store.execute(statements, "transaction" in options)})
        if url.path == "/db/query":
            return self._answer(200, {"results": self.store.query(statements)})
        self._answer(404, {"error": f"no endpoint {url.path}"})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/db/query":
            queries = parse_qs(url.query).get("q", [])
            return self._answer(200, {"results": self.store.query(queries)})
        if url.path == "/status":
            return self._answer(200, {"store": {"db_conf": {"on_disk": True}}, "build": {"version": "stand-in"}})
        if url.path == "/readyz":
            body = b"[+]node ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        self._answer(404, {"error": f"no endpoint {url.path}"})

    def log_message(self, format, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


def parse(argv):
    """rqlited's command line: flags as `-name value`, then the data directory."""
    address, positional, index = "localhost:4001", [], 0
    while index < len(argv):
        argument = argv[index]
        if argument.startswith("-"):
            name, _, value = argument.lstrip("-").partition("=")
            if not value and index + 1 < len(argv):
                index += 1
                value = argv[index]
            if name == "http-addr":
                address = value
        else:
            positional.append(argument)
        index += 1
    if len(positional) != 1:
        sys.exit("usage: rqlited [-http-addr HOST:PORT] DATA_DIR")
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port), positional[0]


def main():
    host, port, data_dir = parse(sys.argv[1:])
    os.makedirs(data_dir, exist_ok=True)
    Handler.store = Store(os.path.join(data_dir, DATABASE_FILE))
    print(f"rqlited stand-in listening on {host}:{port}, data in {data_dir}", flush=True)
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
