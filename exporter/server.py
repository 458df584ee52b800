"""HTTP: ``/metrics``, a landing page at ``/``, a ``/-/healthy`` probe, 404 elsewhere; TLS and basic auth
from ``--web.config.file`` (exporter/webconfig.py).

One asyncio event loop serves every connection; h11 parses HTTP/1.1 (strictly: what it lets through that
RFC 9112 forbids, obs-fold and repeated Content-Length, is refused here). Scrapes run on a small thread
pool, so neither a slow collector nor a slow client holds up the others. What a client can hold is
bounded: a request head must arrive whole within ``HEAD_SECONDS`` (from the connection's start or the
request's first byte), a kept-alive connection may wait ``IDLE_SECONDS`` for its next request, a TLS
handshake ``HANDSHAKE_SECONDS``, a response must be taken within ``WRITE_SECONDS``; beyond
``MAX_CONNECTIONS`` the connection that has waited longest for a request is closed first. A response
whose body is an async iterator (the live page's event stream, later) is sent chunked and is exempt
from those deadlines and from the cap.
Every response goes out in one write with TCP_NODELAY set: a header write followed by a body write would
wait for the peer's delayed ACK (Nagle) on a reused connection, about 40 ms per scrape.

Neither http.server nor prometheus_client is imported here (together about 10 MB of resident memory):
``MetricsApp.registry`` imports prometheus_client when first used.
"""

from __future__ import annotations

import sys

if "ssl" not in sys.modules:  # asyncio imports ssl (4.4 MB resident here) for TLS only: not without TLS
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio
    finally:
        del sys.modules["ssl"]
else:
    import asyncio

import dataclasses
import functools
import gzip
import logging
import re
import resource
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import h11

from . import __version__
from .collectors import Scrape
from .exposition import render_text

log = logging.getLogger("netio_exporter")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEAD_SECONDS = 10.0
IDLE_SECONDS = 60.0
HANDSHAKE_SECONDS = 10.0
WRITE_SECONDS = 30.0
AUTH_FAILURE_SECONDS = 1.0  # how late a wrong or refused login is answered
SHUTDOWN_SECONDS = 10.0  # answers in progress at SIGTERM get this long to finish
MAX_CONNECTIONS = 512
SCRAPE_WORKERS = 4
_MAX_HEAD_BYTES = 16384  # request line and headers
_MAX_TARGET_BYTES = 8192
_BACKLOG = 1024
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:([^\r\n]*)")
_QVALUE = re.compile(r"0(?:\.\d{0,3})?|1(?:\.0{0,3})?")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 414: "URI Too Long",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}
_TEXT = "text/plain; charset=utf-8"


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

    def __init__(self, scrape: Scrape):
        self.scrape = scrape
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


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "


@dataclasses.dataclass
class Response:
    """``body`` bytes, or an async iterator of chunks for a stream (sent chunked, no deadlines)."""
    status: int
    body: bytes | AsyncIterator[bytes]
    content_type: str = _TEXT
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def wants_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value (RFC 9110 12.5.3) takes gzip rather than identity."""
    weights = {}
    for item in accept_encoding.split(","):
        coding, *parameters = item.split(";")
        coding = coding.strip().lower()
        weight = 1.0
        for parameter in parameters:
            name, _, text = parameter.partition("=")
            if name.strip().lower() == "q":
                text = text.strip()
                weight = float(text) if _QVALUE.fullmatch(text) else -1.0  # a bad qvalue: the item is void
        if coding and weight >= 0:
            weights.setdefault(coding, weight)
    gzip_weight = weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    return gzip_weight > 0 and gzip_weight >= weights.get("identity", 0.0)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    t = time.gmtime(second)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode()


def _error_bytes(status: int, message: str) -> bytes:
    """A whole response for a request h11 could not parse (or we refuse), closing the connection."""
    body = f"{message}\n".encode()
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: netio-exporter/{__version__}\r\n"
            f"Date: {_http_date(int(time.time())).decode()}\r\nContent-Type: {_TEXT}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _Refused(Exception):
    """A request answered with an error and a closed connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Connection:
    """One client connection: its h11 state and whether it waits for a request (and so may be closed)."""

    __slots__ = ("reader", "writer", "http", "waiting", "streaming")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self.waiting = self.streaming = False


class Server:
    """Listens on ``address``:``port`` (binding in the constructor, so a busy port raises OSError there);
    ``run()`` serves until ``stop()``, then drains; TLS, headers and users from ``web_config``, a
    webconfig.Watcher (or None)."""

    def __init__(self, app: MetricsApp, address: str, port: int, web_config=None):
        self.app = app
        self.web_config = web_config
        self._server_header = f"netio-exporter/{__version__}".encode()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" also serves IPv4
            self.socket.bind((address, port))
            self.socket.listen(_BACKLOG)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._scrapes = ThreadPoolExecutor(SCRAPE_WORKERS, thread_name_prefix="netio-scrape")
        self._auth = None
        if web_config is not None:
            from .webconfig import BasicAuth
            self._auth = BasicAuth()
        self._connections: dict[_Connection, asyncio.Task] = {}
        self._streams = 0  # connections sending a stream: not counted against MAX_CONNECTIONS
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()  # the longest waiting first
        self._stopping: asyncio.Event | None = None

    async def run(self) -> None:
        self._stopping = asyncio.Event()
        listener = await asyncio.start_server(self._serve, sock=self.socket, limit=65536, backlog=_BACKLOG)
        try:
            await self._stopping.wait()
        finally:
            listener.close()  # no new connections; then the ones waiting for a request go
            for connection in list(self._waiting):
                connection.writer.transport.abort()
            for connection, task in self._connections.items():
                if connection.streaming:
                    task.cancel()
            tasks = list(self._connections.values())
            if tasks:
                await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
            await asyncio.get_running_loop().run_in_executor(None, self._close_workers)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _close_workers(self) -> None:
        """After the last answer: scrapes in progress finish before the collectors close."""
        self._scrapes.shutdown(wait=True, cancel_futures=True)
        if self._auth is not None:
            self._auth.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(reader, writer)
        if len(self._connections) - self._streams >= MAX_CONNECTIONS:
            if not self._waiting:  # every connection is being answered: this one has to come back
                writer.transport.abort()
                return
            next(iter(self._waiting)).writer.transport.abort()
        self._connections[connection] = asyncio.current_task()
        graceful = False  # a closed connection's unsent data waits for the client; a failed one's does not
        try:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            config = self.web_config.current() if self.web_config is not None else None
            if config is not None and config.ssl_context is not None:
                self._wait(connection, True)
                await writer.start_tls(config.ssl_context, ssl_handshake_timeout=HANDSHAKE_SECONDS)
            await self._answer_requests(connection)
            graceful = True
        except (OSError, TimeoutError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass  # resets, timeouts, failed handshakes: the connection is gone either way
        except asyncio.CancelledError:
            pass  # a stream at shutdown
        except Exception:  # a bug must not go unnoticed, nor take the server down
            log.exception("serving %s failed", (writer.get_extra_info("peername") or ("?",))[0])
        finally:
            self._wait(connection, False)
            del self._connections[connection]
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    def _wait(self, connection: _Connection, waiting: bool) -> None:
        connection.waiting = waiting
        if waiting:
            self._waiting[connection] = None
        else:
            self._waiting.pop(connection, None)

    async def _answer_requests(self, connection: _Connection) -> None:
        """Answer requests until the client closes, asks to close, errs or idles out."""
        http, writer = connection.http, connection.writer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEAD_SECONDS  # a new connection sends its request at once
        while not self._stopping.is_set():
            self._wait(connection, True)
            try:
                request = await self._read_request(connection, deadline)
            except _Refused as refused:
                writer.write(_error_bytes(refused.status, str(refused)))
                await self._drain(writer)
                return
            finally:
                self._wait(connection, False)
            if request is None:
                return
            keep_alive = await self._respond(connection, request)
            if not keep_alive or http.our_state is h11.MUST_CLOSE:
                return
            http.start_next_cycle()
            deadline = None

    async def _read_request(self, connection: _Connection, deadline: float | None) -> Request | None:
        """The next request (None when the client closed); deadline None: the idle wait comes first."""
        http, reader = connection.http, connection.reader
        loop = asyncio.get_running_loop()
        received = bytearray(http.trailing_data[0])
        if received and deadline is None:
            deadline = loop.time() + HEAD_SECONDS
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as error:
                raise _Refused(self._too_large_status(received) if "buffer too long" in str(error)
                               else error.error_status_hint, f"Bad request: {error}")
            if event is not h11.NEED_DATA:
                break
            if deadline is None:
                async with asyncio.timeout(IDLE_SECONDS):
                    data = await reader.read(65536)
                deadline = loop.time() + HEAD_SECONDS
            else:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(65536)
            received += data
            http.receive_data(data)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Refused(400, "Bad request")
        head = received[:_END_OF_HEAD.search(received).start()]
        if len(event.target) > _MAX_TARGET_BYTES:
            raise _Refused(414, "Request target too long")
        if len(head) > _MAX_HEAD_BYTES:  # arrived whole in one read: h11 only bounds incomplete heads
            raise _Refused(431, "Request header too large")
        if event.http_version not in (b"1.0", b"1.1"):
            raise _Refused(505, "HTTP/1.1 only")
        if _OBS_FOLD.search(head):
            raise _Refused(400, "Bad request: obsolete line folding (RFC 9112 5.2)")
        lengths = _CONTENT_LENGTH.findall(head)
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            raise _Refused(400, "Bad request: more than one Content-Length (RFC 9112 6.3)")
        if event.method not in (b"GET", b"HEAD"):
            raise _Refused(501, "Only GET and HEAD")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            name, value = name.decode("latin-1"), value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        target = event.target.decode("latin-1")
        return Request(event.method.decode(), target.partition("?")[0], headers)

    @staticmethod
    def _too_large_status(received: bytearray) -> int:
        return 431 if b"\n" in received else 414  # still no end of the request line: the URI is too long

    async def _respond(self, connection: _Connection, request: Request) -> bool:
        """Send one response; whether the connection stays open."""
        http, writer = connection.http, connection.writer
        try:
            event = http.next_event()
        except h11.RemoteProtocolError:
            event = None
        keep_alive = isinstance(event, h11.EndOfMessage)  # a body is never read: answer, then close
        response = await self._route(request)
        if response.status in (401, 429):  # a failed or refused login is answered late: floods slow down
            self._wait(connection, True)  # (and may be closed for a new connection meanwhile)
            await asyncio.sleep(AUTH_FAILURE_SECONDS)
            self._wait(connection, False)
        headers = [(b"Server", self._server_header), (b"Date", _http_date(int(time.time()))),
                   (b"Content-Type", response.content_type.encode())]
        config = self.web_config.config if self.web_config is not None else None
        if config is not None:
            headers += [(name.encode(), value.encode("latin-1")) for name, value in config.headers]
        headers += [(name.encode(), value.encode("latin-1")) for name, value in response.headers]
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        if isinstance(response.body, bytes):
            headers.append((b"Content-Length", str(len(response.body)).encode()))
            data = http.send(h11.Response(status_code=response.status, headers=headers,
                                            reason=_REASONS[response.status]))
            if request.method == "GET":
                data += http.send(h11.Data(data=response.body))
            data += http.send(h11.EndOfMessage())
            writer.write(data)
            await self._drain(writer)
        else:
            await self._stream(connection, response, headers)
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s "%s %s" %d', (writer.get_extra_info("peername") or ("?",))[0], request.method,
                      request.path, response.status)
        return keep_alive and not self._stopping.is_set()

    async def _stream(self, connection: _Connection, response: Response, headers: list) -> None:
        http, writer = connection.http, connection.writer
        connection.streaming = True
        self._streams += 1
        try:
            writer.write(http.send(h11.Response(status_code=response.status, headers=headers,
                                            reason=_REASONS[response.status])))
            async for chunk in response.body:
                writer.write(http.send(h11.Data(data=chunk)))
                await self._drain(writer)
            writer.write(http.send(h11.EndOfMessage()))
            await self._drain(writer)
        finally:
            connection.streaming = False
            self._streams -= 1

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        if writer.transport.get_write_buffer_size():  # the client has not taken it all yet
            async with asyncio.timeout(WRITE_SECONDS):
                await writer.drain()

    async def route(self, request: Request) -> Response:
        """The response to ``request`` before auth and the web config's headers; override to add paths."""
        if request.path == "/metrics":
            gzipped = wants_gzip(request.headers.get("accept-encoding", ""))
            try:
                body = await asyncio.get_running_loop().run_in_executor(self._scrapes, self._metrics, gzipped)
            except Exception:
                log.exception("scrape failed")
                return Response(500, b"scrape failed; see the exporter's log\n")
            headers = [("Vary", "Accept-Encoding")] + ([("Content-Encoding", "gzip")] if gzipped else [])
            return Response(200, body, CONTENT_TYPE, headers)
        if request.path == "/":
            return Response(200, self.app.landing_page, "text/html; charset=utf-8")
        return Response(404, b"Not Found: try /metrics\n")

    def _metrics(self, gzipped: bool) -> bytes:
        body = self.app.metrics()
        return gzip.compress(body, compresslevel=1) if gzipped else body

    async def _route(self, request: Request) -> Response:
        if request.path == "/-/healthy":  # for load balancers and probes: no auth
            return Response(200, b"Healthy\n")
        config = self.web_config.current() if self.web_config is not None else None
        if config is not None and config.users:
            header = request.headers.get("authorization")
            if self._auth.cached(config, header) is None:
                future = self._auth.check(config, header)
                if future is None:
                    return Response(429, b"Too many authentication attempts; try again later\n",
                                    headers=[("Retry-After", "1")])
                if not await asyncio.wrap_future(future):
                    return Response(401, b"Unauthorized\n", headers=[("WWW-Authenticate", 'Basic realm="netio-exporter"')])
        return await self.route(request)


def _raise_open_files_limit() -> None:
    """Room for MAX_CONNECTIONS and the collectors' own descriptors (systemd's soft default is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def serve(app: MetricsApp, address: str, port: int, web_config=None) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, finish the answers in progress and return
    (the caller closes the collectors after). Call from the main thread."""
    _raise_open_files_limit()
    server = Server(app, address, port, web_config)
    host, bound_port = server.server_address[:2]
    scheme = "https" if web_config is not None and web_config.tls else "http"
    log.info("listening on %s://%s:%d/metrics", scheme, f"[{host}]" if ":" in host else host, bound_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, server.stop)
        await server.run()

    try:
        asyncio.run(main())
    finally:
        server.socket.close()
    log.info("stopped")
