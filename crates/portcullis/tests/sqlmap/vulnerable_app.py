#!/usr/bin/env python3
"""A deliberately vulnerable HTTP app for the sqlmap test: SQL injection in one parameter.

GET /items?id=N runs `SELECT id, name, price FROM items WHERE id = N` on an in-memory SQLite
database, with N pasted into the statement unescaped, and returns the rows as JSON. A statement
that fails returns 500 with the SQLite error message, as careless apps do. The app binds
127.0.0.1 on a free port, prints `listening on PORT` and serves until it is killed. It must
never listen on another address.
"""

import http.server
import json
import sqlite3
import sys
import urllib.parse


def open_database():
    database = sqlite3.connect(":memory:", check_same_thread=False)
    database.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    database.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, password TEXT)")
    database.executemany(
        "INSERT INTO items (id, name, price) VALUES (?, ?, ?)",
        [(1, "lamp", 19.5), (2, "chair", 45.0), (3, "desk", 120.0)],
    )
    database.execute("INSERT INTO users (name, password) VALUES ('admin', 's3cret')")
    database.commit()
    return database


DATABASE = open_database()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.rstrip("/").split("/")[-1] != "items":
            self.respond(404, {"error": "not found"})
            return
        item_id = urllib.parse.parse_qs(url.query).get("id", ["1"])[0]
        # The injection: the parameter is pasted into the statement.
        statement = f"SELECT id, name, price FROM items WHERE id = {item_id}"
        try:
            rows = DATABASE.execute(statement).fetchall()
        except sqlite3.Error as error:
            self.respond(500, {"error": f"SQLite error: {error}"})
            return
        self.respond(200, {"items": [list(row) for row in rows]})

    def respond(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
