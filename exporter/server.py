"""HTTP: ``/metrics``, a landing page at ``/``, a ``/-/healthy`` probe, 404 elsewhere; TLS and basic auth
from ``--web.config.file`` (exporter/webconfig.py).

One asyncio event loop serves every connection through one small protocol object each (no task, reader
or writer until a request has come, so silent connections cost little); h11 parses HTTP/1.1, strictly:
what it lets through that RFC 9112 forbids (obs-fold, repeated Content-Length) is refused here. A request
head h11 accepted is remembered (a few, short ones): the same bytes again, as a scraper sends them every
time, are the same request without parsing them again. Responses are framed here (Content-Length, or
chunked for a stream), from headers made once. Scrapes run on a few threads of their own, so neither a
slow collector nor a slow client holds up the others. What a client can hold is bounded: a request head
must arrive whole within ``HEAD_SECONDS`` (from the connection's start or the request's first byte), a
kept-alive connection may wait ``IDLE_SECONDS`` for its next request (both checked by one timer every
``_SWEEP_SECONDS``), a TLS handshake ``HANDSHAKE_SECONDS``, a response must be taken within
``WRITE_SECONDS``; beyond ``MAX_CONNECTIONS`` the connection that has waited longest for a request is
closed first. A response whose body is an async iterator (the live page's event stream, later) is sent
chunked and is exempt from those deadlines and from the cap.
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

import ctypes
import dataclasses
import errno
import functools
import gzip
import logging
import math
import os
import queue
import re
import resource
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import h11

from . import __version__
from .collectors import Scrape
from .exposition import render_text

log = logging.getLogger("netio_exporter")
_sched_getcpu = ctypes.CDLL(None).sched_getcpu  # glibc's, through the vDSO: 0.2 µs a call here
_ANY_CPU, _UNKNOWN_CPU = -1, -2  # _Workers' bindings that are no one CPU

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEAD_SECONDS = 10.0
IDLE_SECONDS = 60.0
HANDSHAKE_SECONDS = 10.0
WRITE_SECONDS = 30.0
AUTH_FAILURE_SECONDS = 1.0  # how late a wrong or refused login is answered
SHUTDOWN_SECONDS = 10.0  # answers in progress at SIGTERM get this long to finish
MAX_CONNECTIONS = 1024
_SWEEP_SECONDS = 0.5  # how often deadlines are checked: each may be passed by this much
SCRAPE_WORKERS = 4
_MAX_HEAD_BYTES = 16384  # request line and headers
_MAX_TARGET_BYTES = 8192
_PARSED_HEADS = 64  # request heads remembered with their parse, each at most _PARSED_HEAD_BYTES
_PARSED_HEAD_BYTES = 2048
_BACKLOG = 1024  # asyncio.start_server would make it 100
_ACCEPT_RETRY_SECONDS = 1.0  # out of file descriptors (or memory): accept again after this long
_READ_BYTES = 262144  # as asyncio's: a refused head of up to this much is read whole, so closing sends no RST
_HIGH_WATER, _LOW_WATER = 65536, 16384  # write buffer bytes: pause_writing above, resume_writing at
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:([^\r\n]*)")
_QVALUE = re.compile(r"0(?:\.\d{0,3})?|1(?:\.0{0,3})?")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 414: "URI Too Long",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_TEXT = "text/plain; charset=utf-8"
_PLAIN_HEADERS = (("Vary", "Accept-Encoding"),)
_GZIP_HEADERS = (("Vary", "Accept-Encoding"), ("Content-Encoding", "gzip"))


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
    """What the HTTP server serves: the scrape's families (the process metrics are among them), and the
    live page with its event stream when ``live`` (a live.LiveFeed) is given (the default mode; not -P)."""

    def __init__(self, scrape: Scrape, live=None):
        self.scrape = scrape
        self.live = live
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


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    keep_alive: bool = True  # HTTP/1.1, no "Connection: close" and no body (which is never read)
    chunked: bool = True  # the client takes a chunked stream (HTTP/1.1); else a stream ends with the connection


@dataclasses.dataclass
class Response:
    """``body`` bytes, or an async iterator of chunks for a stream (sent chunked, no deadlines)."""
    status: int
    body: bytes | AsyncIterator[bytes]
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=64)  # a scraper sends the same value every time
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


_STATUS_LINES = {status: f"HTTP/1.1 {status} {reason}\r\n".encode() for status, reason in _REASONS.items()}
_SERVER = f"netio-exporter/{__version__}"
_ERROR_FIELDS = f"Server: {_SERVER}\r\nContent-Type: {_TEXT}\r\n".encode()


def _head(status: int, fields: bytes, framing: bytes, keep_alive: bool) -> bytes:
    """A response head: the status line, Date, ``fields`` (whole header lines), ``framing`` (the
    Content-Length or Transfer-Encoding line) and Connection: close unless ``keep_alive``."""
    return b"".join((_STATUS_LINES[status], b"Date: ", _http_date(int(time.time())), b"\r\n", fields, framing,
                     b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"))


def _error_bytes(status: int, message: str) -> bytes:
    """A whole response for a request h11 could not parse (or we refuse), closing the connection."""
    body = f"{message}\n".encode()
    return _head(status, _ERROR_FIELDS, b"Content-Length: %d\r\n" % len(body), keep_alive=False) + body


def _parser() -> h11.Connection:
    """h11's parser for one request (a connection's next request gets a new one)."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)


def _keep_alive(request: h11.Request) -> bool:
    """Whether the client keeps the connection after this request (h11's rule: HTTP/1.1 and no
    ``Connection: close``; h11 has no keep-alive for HTTP/1.0)."""
    if request.http_version != b"1.1":
        return False
    return not any(b"close" in (token.strip().lower() for token in value.split(b","))
                   for name, value in request.headers if name == b"connection")


class _Workers:
    """Up to ``count`` threads, started as needed, that run blocking calls for the event loop: a queue in,
    one ``call_soon_threadsafe`` out to a callback, where ``run_in_executor`` takes two futures and a task
    to resume (two more turns of the loop).

    While one job at a time is given, the threads are bound to the CPU the loop gives it from. Under the
    GIL the loop and that worker run Python in turn, not at once, so another CPU gains nothing, while
    waking a thread there (and the loop back) costs an inter-processor interrupt each way: on a virtual
    machine, a trip through the hypervisor; kept-alive requests were answered 14% sooner side by side.
    With more at once they may run anywhere the loop may (what releases the GIL, gzip, runs in
    parallel). The binding follows the loop, which the scheduler moves as it likes, so this pins nothing."""

    def __init__(self, count: int, name: str):
        self._count, self._name = count, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # jobs given and not yet done (on the loop's thread only)
        self._bound: int | None = _ANY_CPU  # the threads' CPU, or _ANY_CPU, _UNKNOWN_CPU; None: refused

    def call(self, then: Callable, function: Callable, *args) -> None:
        """``function(*args)`` on a worker; then ``then(result, exception or None)`` on the running loop."""
        self._busy += 1
        if self._busy > len(self._threads) < self._count:
            thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
            if self._bound is not None:
                self._bound = _UNKNOWN_CPU  # the new one has the loop's affinity, the others maybe not
        if self._bound is not None:
            self._bind(_sched_getcpu() if self._busy == 1 else _ANY_CPU)
        self._jobs.put((asyncio.get_running_loop(), then, function, args))

    def _bind(self, cpu: int) -> None:
        """Every thread to ``cpu`` or, for _ANY_CPU (also sched_getcpu's error), to the loop's CPUs."""
        if cpu == self._bound:
            return
        cpus = (cpu,) if cpu >= 0 else os.sched_getaffinity(0)
        try:
            for thread in self._threads:
                os.sched_setaffinity(thread.native_id, cpus)
            self._bound = cpu
        except OSError as error:
            if error.errno == errno.EINVAL:  # the CPU left our cpuset since: all of them again next time
                self._bound = _UNKNOWN_CPU
            else:
                log.debug("scrape threads not bound to the loop's CPU: %s", error)
                self._bound = None

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._do(*job)
            del job  # nothing of the last job is held while waiting for the next

    def _do(self, loop: asyncio.AbstractEventLoop, then: Callable, function: Callable, args: tuple) -> None:
        try:
            result, error = function(*args), None
        except Exception as raised:
            result, error = None, raised
        loop.call_soon_threadsafe(self._done, then, result, error)

    def _done(self, then: Callable, result, error: Exception | None) -> None:
        self._busy -= 1
        then(result, error)

    def close(self) -> None:
        """After the jobs given so far are done (call off the loop: it waits)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


class _Refused(Exception):
    """A request answered with an error and a closed connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _PlainTransport:
    """The part of asyncio.Transport that _Connection uses, for a plain TCP connection, on the loop's own
    selector. asyncio's (``create_server``) costs a task, two futures, enum conversions, a setsockopt and
    two more turns of the loop per connection: a fresh scrape answers 7% sooner on this one (measured
    side by side, bench/bench_link.py's link-only exporter). TLS connections get asyncio's transport,
    which ``start_tls`` needs. Write flow control: ``pause_writing`` beyond
    ``_HIGH_WATER`` buffered bytes, ``resume_writing`` at ``_LOW_WATER``, as asyncio's defaults."""

    __slots__ = ("_loop", "_sock", "_fd", "_protocol", "_buffer", "_closing", "_paused", "_eof", "_writing_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: _Connection):
        self._loop, self._sock, self._fd, self._protocol = loop, sock, sock.fileno(), protocol
        self._buffer = bytearray()  # what the socket did not take yet
        self._closing = self._paused = self._eof = self._writing_paused = False
        protocol.connection_made(self)
        if not self._closing and not self._paused:
            self._read_ready()  # the request has most often come with the connection: no turn of the loop
            if protocol.task is not None:  # and is being answered: the reader waits until the answer is out
                self._paused = True
            elif not self._closing and not self._paused and not self._eof:
                loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = self._sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # reset by the peer
            self._lose(error)
            return
        if data:
            self._protocol.data_received(data)
            return
        self._eof = True
        self._loop.remove_reader(self._fd)
        if not self._protocol.eof_received():
            self.close()

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        sent = 0
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as error:
                self._lose(error)
                return
            if sent == len(data):
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer += memoryview(data)[sent:]
        if len(self._buffer) > _HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lose(error)
            return
        del self._buffer[:sent]
        if self._writing_paused and len(self._buffer) <= _LOW_WATER:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._loop.call_soon(self._lost, None)

    def pause_reading(self) -> None:
        if not self._closing and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._closing and self._paused:
            self._paused = False
            if not self._eof:
                self._loop.add_reader(self._fd, self._read_ready)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """After what is buffered has gone."""
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._fd)
            if not self._buffer:
                self._loop.call_soon(self._lost, None)

    def abort(self) -> None:
        self._lose(None)

    def _lose(self, error: Exception | None) -> None:
        if self._closing and not self._buffer:  # connection_lost is on its way already
            return
        self._closing = True
        self._buffer.clear()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._lost, error)

    def _lost(self, error: Exception | None) -> None:
        """connection_lost, once, on a turn of its own (as asyncio's: callers may be in the protocol)."""
        if self._sock is None:
            return
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._sock = None
        self._protocol.connection_lost(error)

    def get_extra_info(self, name: str, default=None):
        if name == "peername" and self._sock is not None:
            try:
                return self._sock.getpeername()
            except OSError:
                pass
        return default


class _Connection(asyncio.Protocol):
    """One client connection: h11's parser fed as data arrives, a task only while a request is answered.

    A connection waiting for a request (new, idle, or sending its head) has a deadline and may be closed for
    a newer one at the cap; nothing else of it runs, so a thousand silent ones cost little."""

    __slots__ = ("server", "context", "transport", "http", "received", "deadline", "task", "idle", "streaming",
                 "drained")

    def __init__(self, server: Server, context=None):
        self.server = server
        self.context = context  # an ssl.SSLContext: TLS, from the web config as it was at accept
        self.transport: asyncio.Transport | _PlainTransport | None = None
        self.http: h11.Connection | None = None  # one per request, made at its first byte h11 must see
        self.received = bytearray()  # what self.http was given: the request head so far, for our checks
        self.deadline = math.inf  # time.monotonic() by which the request awaited must have come whole
        self.task: asyncio.Task | None = None
        self.idle = self.streaming = False
        self.drained: asyncio.Future | None = None  # set while the transport's write buffer is full

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if not self.server.admit(self):
            transport.abort()
            return
        self.wait_for_request(HEAD_SECONDS)  # a new connection sends its request (or handshake) at once
        if self.context is not None:
            transport.pause_reading()  # the ClientHello is for the TLS layer, not for data_received
            self.task = asyncio.get_running_loop().create_task(self._handshake(self.context))

    def data_received(self, data: bytes) -> None:
        if self.idle:  # the next request's first byte: its head has HEAD_SECONDS from now
            self.idle = False
            self.deadline = time.monotonic() + HEAD_SECONDS
        if self.http is None:
            if self.task is None:
                request = self.server.parsed.get(data)  # a whole head h11 accepted before
                if request is not None:
                    self._answer(request)
                    return
            self.http = _parser()
        self.received += data
        self.http.receive_data(data)
        if self.task is None:
            self._next_request()
        elif len(self.received) > _MAX_HEAD_BYTES:  # pipelining far ahead of the answers: wait
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.task is None and not self.received:
            return False  # closes
        if self.http is None:  # during an answer, before any next request: h11 closes after it
            self.http = _parser()
        self.http.receive_data(b"")
        if self.task is None:
            self._next_request()
        return True  # an answer in progress still goes out; closed after

    def connection_lost(self, error: Exception | None) -> None:
        self.server.forget(self)
        if self.streaming and self.task is not None:  # a stream writes until cancelled: its client went
            self.task.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # -- deadlines and the cap
    def wait_for_request(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.server.waiting(self, True)

    def _answering(self) -> None:
        self.deadline = math.inf
        self.server.waiting(self, False)

    # -- requests
    async def _handshake(self, context) -> None:
        try:
            self.transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except (OSError, asyncio.CancelledError):  # refused, timed out, not TLS at all, or shutdown
            self.transport.abort()
            return
        finally:
            self.task = None
        if self.received:  # the request came with the handshake's last flight
            self._next_request()

    def _next_request(self) -> None:
        try:
            request = self._parse()
        except _Refused as refused:
            self._answering()
            self.task = asyncio.get_running_loop().create_task(self._refuse(refused))
            return
        if request is not None:
            self._answer(request)

    def _answer(self, request: Request) -> None:
        self._answering()
        if self.server.scrape_at_once(request):  # no task: a worker scrapes, _scraped writes the answer
            self.task = asyncio.get_running_loop().create_future()  # done when answered (shutdown waits)
            self.server.scrape(request, functools.partial(self._scraped, request))
            return
        self.task = asyncio.get_running_loop().create_task(
            self._finish(self.server.respond(self, request), request.keep_alive))

    def _scraped(self, request: Request, response: Response) -> None:
        answered = self.task
        try:
            keep_alive = self.server.send(self, request, response)
        except Exception:
            self._failed()
            return
        finally:
            self.task = None
            answered.set_result(None)
        if self.drained is not None:  # the client has not taken it all yet
            self.task = asyncio.get_running_loop().create_task(self._finish(self.drain(), keep_alive))
        else:
            self._next(keep_alive)

    def _parse(self) -> Request | None:
        """The next whole request; None if it has not all come yet (or the client closed: then so do we).
        Then what came after it goes to a new h11 connection, for the request after."""
        http, received = self.http, self.received
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as error:
            too_large = "buffer too long" in str(error)
            raise _Refused((431 if b"\n" in received else 414) if too_large else error.error_status_hint,
                           f"Bad request: {error}")
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.ConnectionClosed):
            self.transport.close()
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
        try:
            whole = isinstance(http.next_event(), h11.EndOfMessage)  # else a body: never read, so we close after
        except h11.RemoteProtocolError:
            whole = False
        request = Request(event.method.decode(), event.target.decode("latin-1").partition("?")[0], headers,
                          keep_alive=whole and _keep_alive(event), chunked=event.http_version == b"1.1")
        after = http.trailing_data[0]
        if whole and not after:
            self.server.parsed.add(bytes(received), request)
        self.http, self.received = None, bytearray()
        if after:  # pipelined
            self.http = _parser()
            self.received += after
            self.http.receive_data(after)
        return request

    async def _refuse(self, refused: _Refused) -> None:
        self.transport.write(_error_bytes(refused.status, str(refused)))
        await self._finish(self.drain(), keep_alive=False)

    async def _finish(self, answering, keep_alive: bool) -> None:
        """Run ``answering``; then _next."""
        try:
            keep_alive = await answering and keep_alive
        except (OSError, TimeoutError, asyncio.CancelledError):  # the client went, or did not read in time
            self.transport.abort()
            return
        except Exception:
            self._failed()
            return
        finally:
            self.task = None
        self._next(keep_alive)

    def _failed(self) -> None:
        """A bug must not go unnoticed, nor take the server down."""
        log.exception("serving %s failed", (self.transport.get_extra_info("peername") or ("?",))[0])
        self.transport.abort()

    def _next(self, keep_alive: bool) -> None:
        """After an answer: close, or wait for the next request (maybe already here: pipelining)."""
        if not keep_alive or self.transport.is_closing():
            self.transport.close()
            return
        self.idle = self.http is None
        self.wait_for_request(IDLE_SECONDS if self.idle else HEAD_SECONDS)
        self.transport.resume_reading()
        if self.http is not None:  # the next request's first bytes came meanwhile (or the client's EOF)
            self._next_request()

    async def drain(self) -> bool:
        """Until the client has taken what was written (WRITE_SECONDS at most); True, for _finish."""
        if self.drained is not None:
            async with asyncio.timeout(WRITE_SECONDS):
                await self.drained
        return True


class _Heads:
    """Request heads h11 accepted (with nothing pipelined after them) and their ``Request``: a scraper
    sends the same bytes every time, in one read, and is answered without parsing them again. Bounded;
    cleared when full. Heads with credentials are not kept: the process keeps no password it does not
    need (verified ones only as a hash of the header, webconfig.py), so those are parsed each time."""

    def __init__(self):
        self._requests: dict[bytes, Request] = {}

    def get(self, data: bytes) -> Request | None:
        return self._requests.get(data) if len(data) <= _PARSED_HEAD_BYTES else None

    def add(self, head: bytes, request: Request) -> None:
        if len(head) <= _PARSED_HEAD_BYTES and "authorization" not in request.headers:
            if len(self._requests) >= _PARSED_HEADS:
                self._requests.clear()
            self._requests[head] = request


class Server:
    """Listens on ``address``:``port`` (binding in the constructor, so a busy port raises OSError there);
    ``run()`` serves until ``stop()``, then drains; TLS, headers and users from ``web_config``, a
    webconfig.Watcher (or None)."""

    def __init__(self, app: MetricsApp, address: str, port: int, web_config=None):
        self.app = app
        self.web_config = web_config
        self.parsed = _Heads()
        self._fields: dict[tuple, bytes] = {}  # header lines by what they are made of (_header_fields)
        family = self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Linux: accepted sockets inherit it
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" also serves IPv4
            self.socket.bind((address, port))
            self.socket.listen(_BACKLOG)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._scrapes = _Workers(SCRAPE_WORKERS, "netio-scrape")
        self._auth = None
        if web_config is not None:
            from .webconfig import BasicAuth
            self._auth = BasicAuth()
        self._connections: set[_Connection] = set()
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()  # the longest waiting first
        self._sweeper: asyncio.TimerHandle | None = None  # while some wait: closes those past their deadline
        self._accept_retry: asyncio.TimerHandle | None = None  # while out of file descriptors
        self._accept_errors: set[int] = set()  # errnos logged
        self._streams = 0  # connections sending a stream: not counted against MAX_CONNECTIONS
        self._stopping: asyncio.Event | None = None
        self._serving = threading.Event()  # run() is accepting
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None  # start()'s

    async def run(self) -> None:
        self._stopping = asyncio.Event()
        loop = self._loop = asyncio.get_running_loop()
        self.socket.setblocking(False)
        loop.add_reader(self.socket.fileno(), self._accept)
        self._serving.set()
        try:
            await self._stopping.wait()
        finally:
            loop.remove_reader(self.socket.fileno())  # no new connections; then the ones waiting for a request go
            if self._accept_retry is not None:
                self._accept_retry.cancel()
            for connection in list(self._waiting):
                connection.transport.abort()
            if self._sweeper is not None:
                self._sweeper.cancel()
            for connection in self._connections:
                if connection.streaming and connection.task is not None:
                    connection.task.cancel()
            deadline = loop.time() + SHUTDOWN_SECONDS  # an answer may go on in a task of its own: wait again
            while (tasks := [c.task for c in self._connections if c.task is not None]) and loop.time() < deadline:
                await asyncio.wait(tasks, timeout=deadline - loop.time())
            await loop.run_in_executor(None, self._close_workers)

    def _accept(self) -> None:
        """New connections: plain ones on a _PlainTransport, TLS ones on asyncio's transport."""
        loop = self._loop
        try:  # one per turn of the loop (the listening socket stays readable while more wait)
            fd, _ = self.socket._accept()  # socket.accept() would also convert family and type to enums
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: the backlog waits meanwhile
            if error.errno not in self._accept_errors:
                self._accept_errors.add(error.errno)
                log.warning("cannot accept connections (%s); trying again every %g s", error.strerror,
                            _ACCEPT_RETRY_SECONDS)
            loop.remove_reader(self.socket.fileno())
            self._accept_retry = loop.call_later(_ACCEPT_RETRY_SECONDS, self._resume_accepting)
            return
        sock = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)  # TCP_NODELAY: inherited (Linux)
        sock.setblocking(False)
        context = self.web_config.current().ssl_context if self.web_config is not None else None
        if context is None:
            _PlainTransport(loop, sock, _Connection(self))
        else:
            loop.create_task(self._accept_tls(sock, _Connection(self, context)))

    async def _accept_tls(self, sock: socket.socket, connection: _Connection) -> None:
        """asyncio's transport for ``sock``; connection_made then starts the handshake."""
        try:
            await self._loop.connect_accepted_socket(lambda: connection, sock)
        except OSError:  # gone already
            sock.close()

    def _resume_accepting(self) -> None:
        self._accept_retry = None
        if not self._stopping.is_set():
            self._loop.add_reader(self.socket.fileno(), self._accept)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def start(self) -> None:
        """Serve on a thread and event loop of its own (embedding, tests); ``close()`` stops it."""
        self._thread = threading.Thread(target=asyncio.run, args=(self.run(),), name="netio-http", daemon=True)
        self._thread.start()
        self._serving.wait()

    def close(self) -> None:
        """Stop what ``start()`` started: stop accepting, finish the answers in progress, close the socket."""
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self.stop)
            self._thread.join(SHUTDOWN_SECONDS + 5)
            self._thread = None
        self.socket.close()

    def _close_workers(self) -> None:
        """After the last answer: scrapes in progress finish before the collectors close."""
        self._scrapes.close()
        if self._auth is not None:
            self._auth.close()

    def admit(self, connection: _Connection) -> bool:
        """Count a new connection in; at the cap the one waiting longest for a request goes for it."""
        if self._stopping.is_set():
            return False
        if len(self._connections) - self._streams >= MAX_CONNECTIONS:
            if not self._waiting:  # every connection is being answered: this one has to come back
                return False
            oldest, _ = self._waiting.popitem(last=False)
            oldest.transport.abort()
        self._connections.add(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._waiting.pop(connection, None)

    def waiting(self, connection: _Connection, waiting: bool) -> None:
        if waiting:
            self._waiting[connection] = None
            self._waiting.move_to_end(connection)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(_SWEEP_SECONDS, self._sweep)
        else:
            self._waiting.pop(connection, None)

    def _sweep(self) -> None:
        """Close the connections past their deadline (one timer for all: none set and cancelled per request)."""
        now = time.monotonic()
        for connection in [connection for connection in self._waiting if connection.deadline <= now]:
            connection.transport.abort()
        self._sweeper = self._loop.call_later(_SWEEP_SECONDS, self._sweep) if self._waiting else None

    async def respond(self, connection: _Connection, request: Request) -> bool:
        """Send one response; whether the connection may stay open."""
        response = await self._route(request)
        if response.status in (401, 429):  # a failed or refused login is answered late: floods slow down
            self.waiting(connection, True)  # (and may be closed for a new connection meanwhile)
            await asyncio.sleep(AUTH_FAILURE_SECONDS)
            self.waiting(connection, False)
        if isinstance(response.body, bytes):
            keep_alive = self.send(connection, request, response)
            await connection.drain()
            return keep_alive
        return await self._stream(connection, request, response)

    def send(self, connection: _Connection, request: Request, response: Response) -> bool:
        """Write a response whose body is bytes (not waiting for the client to take it); whether the
        connection may stay open."""
        keep_alive = request.keep_alive and not self._stopping.is_set()
        body = response.body
        head = _head(response.status, self._header_fields(response), b"Content-Length: %d\r\n" % len(body), keep_alive)
        if not connection.transport.is_closing():
            connection.transport.write(head + body if request.method == "GET" else head)
        self._log(connection, request, response)
        return keep_alive

    def _log(self, connection: _Connection, request: Request, response: Response) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s "%s %s" %d', (connection.transport.get_extra_info("peername") or ("?",))[0],
                      request.method, request.path, response.status)

    async def _stream(self, connection: _Connection, request: Request, response: Response) -> bool:
        """Send a stream: chunked (RFC 9112 7.1), or to an HTTP/1.0 client as it comes, ended by closing."""
        transport, chunked = connection.transport, request.chunked
        connection.streaming = True
        self._streams += 1
        try:
            keep_alive = request.keep_alive and chunked and not self._stopping.is_set()
            framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
            transport.write(_head(response.status, self._header_fields(response), framing, keep_alive))
            if request.method == "GET":
                async for chunk in response.body:
                    if chunk:  # an empty chunk would end the body
                        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await connection.drain()
                if chunked:
                    transport.write(b"0\r\n\r\n")
            await connection.drain()
        finally:
            connection.streaming = False
            self._streams -= 1
            await response.body.aclose()  # now, not when collected: its cleanup may free a live viewer
        self._log(connection, request, response)
        return keep_alive

    def _header_fields(self, response: Response) -> bytes:
        """Server, Content-Type, the web config's headers and the response's own, as header lines; made
        once for each combination."""
        config = self.web_config.config if self.web_config is not None else None
        key = (response.content_type, response.headers, config.headers if config is not None else ())
        fields = self._fields.get(key)
        if fields is None:
            if len(self._fields) >= 32:  # a reloaded config's headers replace the old ones
                self._fields.clear()
            lines = (("Server", _SERVER), ("Content-Type", response.content_type), *key[2], *response.headers)
            fields = self._fields[key] = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("latin-1")
        return fields

    async def route(self, request: Request) -> Response:
        """The response to ``request`` before auth and the web config's headers; override to add paths
        (``/metrics`` is answered by ``scrape``, most often without coming here)."""
        if request.path == "/metrics":
            answered = asyncio.get_running_loop().create_future()
            self.scrape(request, answered.set_result)
            return await answered
        live = self.app.live
        if request.path == "/":
            if live is not None:
                from .live import PAGE_CONTENT_TYPE
                return Response(200, live.page(), PAGE_CONTENT_TYPE)
            return Response(200, self.app.landing_page, "text/html; charset=utf-8")
        if request.path == "/events" and live is not None:
            return self._events(live)
        return Response(404, b"Not Found: try /metrics\n")

    def _events(self, live) -> Response:
        """The live page's Server-Sent Events: the sampler's events as they come, no thread per viewer. A
        viewer the sampler dropped (too far behind) or that stops reading ends its stream."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        answering = asyncio.current_task()  # the connection's task, which will send the stream

        def wake():  # on the loop, after the sampler queued an event or dropped this viewer
            ready.set()
            if subscription.dropped:  # it stopped reading: its task may be stuck in a write; end it
                answering.cancel()

        subscription = live.subscribe(wake=lambda: loop.call_soon_threadsafe(wake))
        if subscription is None:
            return Response(503, b"Too many live pages open; close one\n")

        async def events():
            try:
                while not subscription.dropped:
                    await ready.wait()
                    ready.clear()
                    for event in subscription.take():
                        yield event
            finally:  # the client went, the stream was cancelled (shutdown), or it fell behind
                subscription.close()

        from .live import EVENT_CONTENT_TYPE
        return Response(200, events(), EVENT_CONTENT_TYPE, (("Cache-Control", "no-store"),))

    def scrape(self, request: Request, then: Callable[[Response], None]) -> None:
        """``/metrics``: the collectors run on a worker, then ``then(response)`` on the loop."""
        self._scrapes.call(lambda response, error: then(response), self._scrape_response, request)

    def _scrape_response(self, request: Request) -> Response:
        """On a worker: the response (never raises, so ``scrape``'s callback has no error to handle)."""
        try:
            gzipped = wants_gzip(request.headers.get("accept-encoding", ""))
            body = self.app.metrics()
            if gzipped:
                return Response(200, gzip.compress(body, compresslevel=1), CONTENT_TYPE, _GZIP_HEADERS)
            return Response(200, body, CONTENT_TYPE, _PLAIN_HEADERS)
        except Exception:
            log.exception("scrape failed")
            return Response(500, b"scrape failed; see the exporter's log\n")

    def scrape_at_once(self, request: Request) -> bool:
        """Whether ``request`` is a scrape that waits for nothing but the collectors: no credentials to
        check (none asked for, or verified before). Then _Connection hands it to ``scrape`` itself."""
        return request.path == "/metrics" and self._unverified(request) is None

    def _unverified(self, request: Request):
        """The web config (webconfig.WebConfig) when it asks for users and ``request``'s credentials have
        not been verified before; else None."""
        config = self.web_config.current() if self.web_config is not None else None
        if config is None or not config.users or self._auth.cached(config, request.headers.get("authorization")) is not None:
            return None
        return config

    async def _route(self, request: Request) -> Response:
        if request.path == "/-/healthy":  # for load balancers and probes: no auth
            return Response(200, b"Healthy\n")
        config = self._unverified(request)
        if config is not None:
            future = self._auth.check(config, request.headers.get("authorization"))
            if future is None:
                return Response(429, b"Too many authentication attempts; try again later\n",
                                headers=(("Retry-After", "1"),))
            if not await asyncio.wrap_future(future):
                return Response(401, b"Unauthorized\n", headers=(("WWW-Authenticate", 'Basic realm="netio-exporter"'),))
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
