"""HTTP: ``/metrics``, a landing page at ``/``, 404 elsewhere.

A small HTTP/1.1 server of its own, with keep-alive as Prometheus uses it. Worker threads wait in
``accept()`` themselves, so a fresh connection costs no thread start and no hand-off; the worker
keeps the connection until it closes or idles out. The pool grows when the last waiting worker
takes a connection (up to ``_MAX_WORKERS``, then new connections wait in the listen backlog until
one ends) and shrinks back to ``_SPARE_WORKERS`` waiting workers.
Every response goes out in one ``sendmsg`` of header and body with TCP_NODELAY set: a header write
followed by a body write would wait for the peer's delayed ACK (Nagle) on a reused connection,
about 40 ms per scrape.

Neither http.server nor prometheus_client is imported here (together about 10 MB of resident memory):
``MetricsApp.registry`` imports prometheus_client when first used.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import re
import signal
import socket
import threading
import time

from . import __version__
from .collectors import Scrape
from .exposition import render_text

log = logging.getLogger("netio_exporter")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_IDLE_CONNECTION_SECONDS = 300
_SPARE_WORKERS = 2  # workers waiting in accept() when the server is quiet
_MAX_WORKERS = 64
_MAX_HEAD_BYTES = 65536  # request line and headers
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _landing_page(collectors: list[str]) -> bytes:
    names = ", ".join(_escape_html(name) for name in collectors) or "none"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>netio-exporter</title></head>\n"
        f"<body><h1>netio-exporter {_escape_html(__version__)}</h1>\n"
        f"<p>Network I/O of this host for Prometheus. Collectors enabled: {names}.</p>\n"
        "<p><a href=\"/metrics\">Metrics</a></p>\n</body></html>\n"
    ).encode()


class MetricsApp:
    """What the HTTP server serves: the scrape's families (the process metrics are among them)."""

    def __init__(self, scrape: Scrape, live=None):
        self.scrape = scrape
        self.live = live  # exporter.live.LiveFeed in the default mode: the live page at / and /events
        self.landing_page = _landing_page([collector.name for collector in scrape.collectors])

    def metrics(self) -> bytes:
        return render_text(self.scrape.families())

    @functools.cached_property
    def registry(self):
        """The same metrics through prometheus_client (for embedding and tests)."""
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        registry.register(self.scrape)
        return registry


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    t = time.gmtime(second)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class Server:
    """Listens on ``address``:``port`` (binding in the constructor, so a busy port raises OSError there);
    ``start()`` starts the workers, ``close()`` stops accepting and closes the listening socket."""

    def __init__(self, app: MetricsApp, address: str, port: int):
        self.app = app
        self._server_header = f"Server: netio-exporter/{__version__}\r\n"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" also serves IPv4
            self.socket.bind((address, port))
            self.socket.listen(128)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._lock = threading.Lock()
        self._workers = self._waiting = 0
        self._closing = False
        self._accept_error = ""

    def start(self) -> None:
        with self._lock:
            self._workers = self._waiting = _SPARE_WORKERS
        for _ in range(_SPARE_WORKERS):
            self._start_worker()

    def close(self) -> None:
        """Stop accepting (waiting workers end); connections being served finish or die with the process."""
        self._closing = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the workers blocked in accept()
        except OSError:
            pass
        self.socket.close()

    def _start_worker(self) -> None:
        threading.Thread(target=self._work, name="netio-http", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                connection, peer = self.socket.accept()
            except OSError as error:
                if self._closing:
                    return
                if str(error) != self._accept_error:  # e.g. out of file descriptors: said once, retried
                    self._accept_error = str(error)
                    log.warning("accept failed: %s", error)
                time.sleep(0.1)
                continue
            with self._lock:
                self._waiting -= 1
                grow = self._waiting == 0 and self._workers < _MAX_WORKERS
                if grow:
                    self._workers += 1
                    self._waiting += 1
            if grow:
                self._start_worker()
            try:
                self._serve(connection, peer)
            except Exception:  # a bug must not cost the pool a worker
                log.exception("serving %s failed", peer[0])
            with self._lock:
                if self._waiting >= _SPARE_WORKERS or self._closing:
                    self._workers -= 1
                    return
                self._waiting += 1

    def _serve(self, connection: socket.socket, peer) -> None:
        """Answer requests on one connection until the client closes it, asks to, or idles out."""
        with connection:
            try:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.settimeout(_IDLE_CONNECTION_SECONDS)
                buffer = b""
                while True:
                    end = _END_OF_HEAD.search(buffer)
                    while end is None:
                        if len(buffer) > _MAX_HEAD_BYTES:
                            self._send(connection, 431, b"Request header too large\n", keep_alive=False)
                            return
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                        end = _END_OF_HEAD.search(buffer)
                    head, buffer = buffer[:end.start()], buffer[end.end():]
                    if not self._answer(connection, head, peer):
                        return
            except OSError:  # timeouts, resets: the connection is gone either way
                pass

    def _answer(self, connection: socket.socket, head: bytes, peer) -> bool:
        """Answer one request; True if the connection stays open."""
        lines = head.lstrip(b"\r\n").split(b"\n")
        request = lines[0].split()
        if len(request) != 3 or not request[2].startswith(b"HTTP/"):
            self._send(connection, 400, b"Bad request\n", keep_alive=False)
            return False
        method, target, version = request
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._send(connection, 505, b"HTTP/1.1 only\n", keep_alive=False)
            return False
        options, accept_encoding, has_body = b"", "", False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"connection":
                options = value.lower()
            elif name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
            elif name in (b"content-length", b"transfer-encoding") and value.strip() != b"0":
                has_body = True  # never read: close after answering
        tokens = {token.strip() for token in options.split(b",")}
        keep_alive = not has_body and (b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens)
        if method not in (b"GET", b"HEAD"):
            self._send(connection, 501, b"Only GET and HEAD\n", keep_alive=False)
            return False
        path = target.split(b"?", 1)[0]
        extra = ""
        if path == b"/metrics":
            try:
                status, content_type, body = 200, CONTENT_TYPE, self.app.metrics()
            except Exception:
                log.exception("scrape failed")
                status, content_type = 500, "text/plain; charset=utf-8"
                body = b"scrape failed; see the exporter's log\n"
            if status == 200 and _accepts_gzip(accept_encoding):
                body = gzip.compress(body, compresslevel=1)
                extra = "Content-Encoding: gzip\r\n"
        elif path == b"/events" and self.app.live is not None and method == b"GET":
            head = (f"HTTP/1.1 200 OK\r\n{self._server_header}Date: {_http_date(int(time.time()))}\r\n"
                    "Content-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
            if self.app.live.attach(connection.dup(), head.encode("latin-1")):
                return False  # the live feed's sampler writes the events from now on
            status, content_type, body = 503, "text/plain; charset=utf-8", b"Too many live pages open\n"
        elif path == b"/" and self.app.live is not None:
            status, content_type, body = 200, "text/html; charset=utf-8", self.app.live.page()
        elif path == b"/":
            status, content_type, body = 200, "text/html; charset=utf-8", self.app.landing_page
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"Not Found: try /metrics\n"
        self._send(connection, status, body, keep_alive, content_type, extra, send_body=method == b"GET")
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s "%s" %d %d', peer[0], lines[0].decode("latin-1").strip(), status, len(body))
        return keep_alive

    def _send(self, connection: socket.socket, status: int, body: bytes, keep_alive: bool,
              content_type: str = "text/plain; charset=utf-8", extra: str = "", send_body: bool = True) -> None:
        if not keep_alive:
            extra += "Connection: close\r\n"
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n{self._server_header}"
                f"Date: {_http_date(int(time.time()))}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode("latin-1")
        if not send_body:
            connection.sendall(head)
            return
        sent = connection.sendmsg([head, body])  # one segment train, no concatenated copy
        if sent < len(head):
            connection.sendall(head[sent:])
            sent = len(head)
        if sent - len(head) < len(body):
            connection.sendall(memoryview(body)[sent - len(head):])


def serve(app: MetricsApp, address: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, close and return. Call from the main thread."""
    server = Server(app, address, port)
    host, bound_port = server.server_address[:2]
    log.info("listening on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound_port)
    wake_read, wake_write = os.pipe()  # the handler only writes a byte: it takes no lock

    def stop(signum, frame):
        os.write(wake_write, b"x")

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        os.read(wake_read, 1)
    finally:
        server.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.close(wake_read)
        os.close(wake_write)
    log.info("stopped")
