#!/usr/bin/env python3
"""A minimal OAuth 2.0 token introspection endpoint (RFC 7662) for bench/run.sh.

POST /introspect answers every request whose HTTP Basic credentials are --client-id and the
secret in the environment variable BENCH_INTROSPECTION_SECRET with an active token for
consumer `alice`, expiring in one hour. GET /calls returns the number of introspection calls
so far, which shows whether the gateway's cache was warm during a run. Listens on 127.0.0.1
only.
"""

import argparse
import base64
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CALLS = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    expected = ""

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/calls":
            self.send_json(200, {"calls": CALLS})
        else:
            self.send_json(404, {"error": "not_found"})

    def do_POST(self):
        global CALLS
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        if self.path != "/introspect":
            self.send_json(404, {"error": "not_found"})
            return
        CALLS += 1
        if self.headers.get("authorization", "") != self.expected:
            self.send_json(401, {"error": "invalid_client"})
            return
        self.send_json(200, {"active": True, "sub": "alice", "exp": int(time.time()) + 3600})

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    arguments = parser.parse_args()
    secret = os.environ["BENCH_INTROSPECTION_SECRET"]
    credentials = f"{arguments.client_id}:{secret}".encode()
    Handler.expected = "Basic " + base64.b64encode(credentials).decode()
    server = ThreadingHTTPServer(("127.0.0.1", arguments.port), Handler)
    print(f"listening on http://127.0.0.1:{arguments.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
