#!/usr/bin/env python3
"""Example verdict server for inpaint-worker's HTTP stage (protocol inpaint-stage.v1).

    python3 ops/plugins/verdict_http.py --port 8085 --block-word forbidden --negative watermark

POST /verdict takes one request and answers one verdict (see example_policy.py for what it
decides); GET /healthz answers "ok". The first line on stdout is "listening on URL", with the
bound port when --port 0 asks for any free one. Requests are served on threads. Python 3
standard library only. The access log on stderr shows paths and status codes, never prompts.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import example_policy

MAX_REQUEST_BYTES = 256 * 1024 * 1024


def make_handler(policy: example_policy.Policy):
    class Handler(BaseHTTPRequestHandler):
        server_version = "inpaint-verdict-example/1"

        def do_GET(self):
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self):
            if self.path != "/verdict":
                self._send(404, b"not found\n", "text/plain")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST_BYTES:
                self._send(413, b"request body missing or too large\n", "text/plain")
                return
            try:
                request = json.loads(self.rfile.read(length))
                response = policy.decide(request)
            except (ValueError, KeyError, TypeError) as e:
                # 400: the worker treats it as a permanent stage error (no retry).
                self._send(400, f"bad request: {type(e).__name__}\n".encode(), "text/plain")
                return
            if "id" in request:
                response["id"] = request["id"]
            self._send(200, json.dumps(response).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8085, help="port; 0 picks a free one")
    example_policy.add_arguments(parser)
    args = parser.parse_args()
    policy = example_policy.Policy(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(policy))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/verdict", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
