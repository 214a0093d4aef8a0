#!/usr/bin/env python3
"""The demo upstream of the local stack (scripts/stack.sh): an HTTP server that answers every
request with 200 and a JSON echo of what it received, so that a call through the gateway
shows what the gateway forwarded and which credential it injected.

    scripts/echo-upstream.py [--host 127.0.0.1] [--port 8089]

The echo is {"method", "path", "query", "headers": {name: value, ...}, "body"}: `path` is
the request target without its query, header names are lower-cased (a repeated header keeps
its values joined with ", "), and `body` is the request body as text (at most 64 KiB are
read; undecodable bytes are replaced). Only the Python 3 standard library is used. It logs
one line per request to stderr (method, path, status) and never the headers, which carry
the injected credential. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024


class EchoHandler(BaseHTTPRequestHandler):
    """Answers any method with the echo document."""

    server_version = "caracal-echo-upstream/1"
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        target = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = b""
        length = self.headers.get("content-length")
        if length is not None and length.isdigit():
            body = self.rfile.read(min(int(length), MAX_BODY))
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        document = {
            "method": self.command,
            "path": target.path,
            "query": target.query,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
        }
        payload = json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_chunked(self) -> bytes:
        """Reads a chunked body, keeping at most MAX_BODY bytes of it."""
        kept = bytearray()
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                break
            try:
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                break
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunk = self.rfile.read(size)
            self.rfile.readline(1024)
            kept.extend(chunk[: max(0, MAX_BODY - len(kept))])
        return bytes(kept)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        # The base class logs the request line; keep only method, path and status.
        return

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path
        sys.stderr.write(f"echo-upstream: {self.command} {path} -> {code}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    args = parser.parse_args()
    try:
        server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    except OSError as error:
        sys.stderr.write(f"echo-upstream: cannot listen on {args.host}:{args.port}: {error.strerror}\n")
        return 2
    server.daemon_threads = True

    def stop(_signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it runs on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(f"echo-upstream: listening on http://{args.host}:{args.port}\n")
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
