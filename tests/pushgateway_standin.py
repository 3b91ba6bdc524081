"""A Pushgateway stand-in on loopback: it answers every push with 200 and records what it received
(method, path, body), as a real gateway would take it."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def pushgateway():
    """Yields (address 'host:port', list of received (method, path, body text))."""
    received: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _take(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = _take

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def pushed_values(body: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a pushed body (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
