"""HTTP: ``/metrics``, a landing page at ``/``, 404 elsewhere.

One thread per connection, HTTP/1.1 keep-alive as Prometheus uses it. Every response goes out in a
single write with TCP_NODELAY set: a header write followed by a body write would wait for the
peer's delayed ACK (Nagle) on a reused connection, about 40 ms per scrape.
"""

from __future__ import annotations

import gzip
import html
import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from . import __version__
from .collectors import Scrape
from .exposition import render_text

log = logging.getLogger("netio_exporter")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_IDLE_CONNECTION_SECONDS = 300


def _landing_page(collectors: list[str]) -> bytes:
    names = ", ".join(html.escape(name) for name in collectors) or "none"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>netio-exporter</title></head>\n"
        f"<body><h1>netio-exporter {html.escape(__version__)}</h1>\n"
        f"<p>Network I/O of this host for Prometheus. Collectors enabled: {names}.</p>\n"
        "<p><a href=\"/metrics\">Metrics</a></p>\n</body></html>\n"
    ).encode()


class MetricsApp:
    """What the HTTP server serves: the scrape's families plus prometheus_client's process metrics."""

    def __init__(self, scrape: Scrape):
        self.scrape = scrape
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        self.registry = CollectorRegistry()  # the same metrics through prometheus_client, for embedding and tests
        self.registry.register(scrape)
        ProcessCollector(registry=self.registry)
        self.landing_page = _landing_page([collector.name for collector in scrape.collectors])

    def metrics(self) -> bytes:
        return render_text(self.scrape.families()) + generate_latest(self._process)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"netio-exporter/{__version__}"
    timeout = _IDLE_CONNECTION_SECONDS
    app: MetricsApp  # set on the subclass the server creates

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        headers = []
        if path == "/metrics":
            try:
                status, content_type, body = 200, CONTENT_TYPE, self.app.metrics()
            except Exception:
                log.exception("scrape failed")
                status, content_type, body = 500, "text/plain; charset=utf-8", b"scrape failed; see the exporter's log\n"
            if status == 200 and _accepts_gzip(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body, compresslevel=1)
                headers.append("Content-Encoding: gzip")
        elif path == "/":
            status, content_type, body = 200, "text/html; charset=utf-8", self.app.landing_page
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"Not Found: try /metrics\n"
        head = [f"HTTP/1.1 {status} {self.responses[status][0]}",
                f"Server: {self.server_version}",
                f"Date: {self.date_time_string()}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}",
                *headers]
        if self.close_connection:
            head.append("Connection: close")
        response = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(response + body if send_body else response)
        self.log_request(status, len(body))

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, handler):
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        super().__init__((address, port), handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" also serves IPv4
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise


def create_server(app: MetricsApp, address: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"app": app})
    return _Server(address, port, handler)


def serve(app: MetricsApp, address: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, close and return."""
    server = create_server(app, address, port)
    host, bound_port = server.server_address[:2]
    log.info("listening on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound_port)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log.info("stopped")
