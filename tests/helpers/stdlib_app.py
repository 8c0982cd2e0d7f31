"""
An app as many small real services are: Python's own ``http.server.ThreadingHTTPServer`` with its
default listen backlog of 5. Answers every path with ``<name> <method> <path>`` (and ``/healthcheck``
with OK) and logs each request's ``x-request-id``:

    python -m tests.helpers.stdlib_app --port 8080 --name bar [--backlog 5] [--log FILE]
"""

import argparse
import http.server
import signal
import sys


def make_handler(name, log):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's naming
            body = b"OK\n" if self.path == "/healthcheck" else f"{name} {self.command} {self.path}\n".encode()
            if log and self.path != "/healthcheck":
                log.write(f"{self.headers.get('x-request-id', '-')} {self.command} {self.path}\n")
                log.flush()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backlog", type=int, default=5, help="listen backlog (the stdlib default: 5)")
    parser.add_argument("--log", help="append '<x-request-id> <method> <path>' per request")
    args = parser.parse_args(argv)
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115 - lives as long as the app
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": args.backlog,
                                                                        "daemon_threads": True})
    server = server_class((args.host, args.port), make_handler(args.name, log))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
