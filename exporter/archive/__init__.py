"""The per-connection archive (tcp-info's job): a JSONL record whenever a connection changes, one file per
connection, zstd-compressed, with a final record for every connection, including those no poll saw.

One thread does everything on its own clock, never touching the scrape path:
- every ``interval`` it finds the connections that changed and writes a ``change`` record for each whose
  state, tcp_info (the ``last_*`` timers aside), congestion control or memory changed since its last
  record; a connection seen for the first time gets a ``header`` record first. With eBPF, an iterator
  pass (``kernel.py``, tcp_archive_changes.h) names the connections whose fingerprint changed and
  sock_diag answers exact lookups of just those; without, the namespace's TCP connections are dumped
  over sock_diag and compared in Python (``netlink/connections.py``). Either way the record holds the
  kernel's own tcp_info, and the comparison of its bytes with the last record's decides;
- between polls it waits on the kernel's ring buffer of ``final`` records (``kernel.py``: one per
  connection at TCP_CLOSE, with the counters struct tcp_sock holds then), so a connection shorter than a
  poll still gets a header and a final record. Without eBPF, a connection's final record is its last
  polled record, written when it leaves the dump (``"source": "poll"``), and connections that open and
  close between two polls are not archived at all;
- each connection's pending lines go out as one zstd frame (``files.py``) about every ``FLUSH_SECONDS``
  (sooner beyond ``_PENDING_BYTES``), a new connection's header and first record and a connection's final
  record at once (after the poll, or within ``_FINAL_LATENCY_MS`` of the close). A kill -9 loses at most
  the change records of the last ``FLUSH_SECONDS``.

Records (one JSON object a line; times RFC 3339 UTC with microseconds; tcp_info fields by the kernel's
names and units, see ``netlink/tcp_info.py``) are documented with examples in the README.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from ..netlink import tcp_info
from ..netlink.connections import MEMINFO_NAMES, Connection, ConnectionReader
from .files import ArchiveFiles, FileStats, compressor

log = logging.getLogger("netio_exporter")

RECORD_KINDS = ("header", "change", "final")
STATE_NAMES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2",
               6: "time_wait", 7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing",
               12: "syn_recv"}
FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
# Poll durations (seconds) for netio_tcp_archive_poll_duration_seconds.
POLL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_FINISHED_MEMORY = 65536  # cookies of connections already given their final record
_RING_BYTES = 1 << 22  # 4 MiB: about 26,000 final records between two reads
_FINAL_LATENCY_MS = 100  # at most this long between reads of the ring buffer
# Change records wait in memory at most this long, to go out as one frame a connection: a frame (zstd's
# per-frame work and an append) costs more than a record, and a connection that changes every few seconds
# put one record in each at 1 s (2k sockets, 100 ms: 5.3-5.7% of a core at 1 s, 4.0-4.3% at 5 s, with
# less than half the bytes). What a kill -9 can lose.
FLUSH_SECONDS = 5.0
_PENDING_BYTES = 16 << 20  # or until they take this much


@dataclass
class ArchiveStats:
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    dropped_records: int = 0  # the kernel's ring buffer was full
    poll_buckets: list[int] = field(default_factory=lambda: [0] * (len(POLL_BUCKETS) + 1))
    poll_count: int = 0
    poll_seconds: float = 0.0
    method: str = "polling"


def _timestamp(unix_seconds: float) -> str:
    seconds = int(unix_seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((unix_seconds - seconds) * 1e6):06d}Z"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip().replace("-", "")[:16]
    except OSError:  # no procfs boot id: the boot time is unique enough across reboots
        return f"{int(time.time() - time.monotonic()):x}"


class _Connection:
    """What the archive remembers of a live connection: its header, last change record, pending lines."""

    __slots__ = ("uuid", "quoted", "header", "last", "pending")

    def __init__(self, uuid: str, header: bytes):
        self.uuid = uuid
        self.quoted = f'"{uuid}",'.encode()  # as records write it
        self.header = header
        self.last = b""  # the last change record, kept without eBPF only (its final record is made of it)
        self.pending: list[bytes] = []


class Archive:
    """Runs the archive thread; ``stats()`` and ``file_stats()`` are safe from any thread."""

    def __init__(self, directory: str, interval: float, rotate_seconds: float, max_bytes: int):
        self.interval = interval
        self.files = ArchiveFiles(directory, rotate_seconds, max_bytes, compressor())
        self._reader = ConnectionReader()
        self._boot = _boot_id()
        self._wall_offset = time.time() - time.monotonic()  # CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall
        self._live: dict[int, _Connection] = {}
        self._fingerprints: dict[int, bytes] = {}  # cookie -> what the last record saw (ConnectionReader)
        self._finished: dict[int, None] = {}  # insertion-ordered set, bounded
        self._closing: list[int] = []  # finished since the last flush
        self._prompt: dict[int, _Connection] = {}  # to flush at once: new or finished connections
        self._waiting: list[_Connection] = []  # those whose pending lines were empty, in the order they filled
        self._pending_bytes = 0
        self._starts: dict[int, int] = {}  # cookie -> the kernel's start (CLOCK_MONOTONIC ns), until first seen
        self._stats = ArchiveStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hook = None
        try:
            from .kernel import CloseHook
            self._hook = CloseHook(_RING_BYTES, self._on_kernel_record)
            self._stats.method = "kernel"
        except Exception as error:  # the archive still runs, from polls alone
            log.warning("tcp archive: no final records from the kernel (%s); final records come from the last "
                        "poll, and connections shorter than a poll are not archived", str(error).splitlines()[0])
        self._changes = None  # the kernel's change detection, which needs the close hook's final records
        if self._hook is not None:
            try:
                from .kernel import ChangeIterator
                self._changes = ChangeIterator()
            except Exception as error:
                log.warning("tcp archive: no change detection in the kernel (%s); every poll dumps every "
                            "connection", str(error).splitlines()[0])
        self._thread = threading.Thread(target=self._run, name="netio-tcp-archive", daemon=True)
        self._thread.start()

    # --- reading from other threads ------------------------------------------------------------------
    @property
    def thread_id(self) -> int:
        """The archive thread's kernel thread id (its CPU time is in /proc/self/task/ID/stat)."""
        return self._thread.native_id

    @property
    def change_detection(self) -> str:
        """"kernel" (an iterator pass names the connections that changed) or "dump" (each poll dumps all)."""
        return "dump" if self._changes is None else "kernel"

    def stats(self) -> ArchiveStats:
        with self._lock:
            copy = ArchiveStats(dict(self._stats.records), self._stats.dropped_records,
                                list(self._stats.poll_buckets), self._stats.poll_count, self._stats.poll_seconds,
                                self._stats.method)
        hook = self._hook
        if hook is not None:
            copy.dropped_records += hook.lost()
        return copy

    def file_stats(self) -> FileStats:
        return self.files.snapshot()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        hook, self._hook = self._hook, None
        if hook is not None:
            with self._lock:
                self._stats.dropped_records += hook.lost()
            hook.close()
        if self._changes is not None:
            self._changes.close()
        self._reader.close()
        self.files.close()

    # --- the archive thread --------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = next_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                wait = next_poll - time.monotonic()
                if wait > 0:
                    if self._hook is None:
                        self._stop.wait(wait)
                    # Rounded up: a wait that ends just before the poll would cost a second wake (~20 µs).
                    elif self._hook.poll(min(math.ceil(wait * 1000), _FINAL_LATENCY_MS)):
                        self._flush(everything=False)  # finals go out within about _FINAL_LATENCY_MS
                    continue
                next_poll += self.interval
                if next_poll < time.monotonic():  # fell behind (a slow disk): skip, do not burst
                    next_poll = time.monotonic() + self.interval
                if self._hook is not None:
                    self._hook.poll(0)  # finals first: a connection that just closed is not "changed"
                self._poll()
                everything = next_flush <= time.monotonic() or self._pending_bytes > _PENDING_BYTES
                if everything:
                    next_flush = time.monotonic() + FLUSH_SECONDS
                self._flush(everything)
            except Exception:  # the archive must not die; the next poll tries again
                log.exception("tcp archive: poll failed")
                self._stop.wait(self.interval)
        try:
            if self._hook is not None:
                self._hook.poll(0)
            self._flush(everything=True)
        except Exception:
            log.exception("tcp archive: last flush failed")

    def _poll(self) -> None:
        begin = time.perf_counter()
        if self._changes is not None:
            changed, present = self._reader.answers(self._changes.requests(), self._fingerprints), None
        else:
            changed, present = self._reader.changed(self._fingerprints)
        now = time.time()
        stamp = _timestamp(now)
        head = f'{{"kind":"change","timestamp":"{stamp}","uuid":'.encode()
        records = queued = 0
        finished, live, waiting = self._finished, self._live, self._waiting
        keep_last = self._hook is None  # only then is the last change record a final record's source
        for connection in changed:
            cookie = connection.cookie
            if cookie in finished:
                continue  # closed already (still in the dump as CLOSE until its owner closes it)
            known = live.get(cookie)
            if known is None:
                known = live[cookie] = self._open(connection, now)
                self._prompt[cookie] = known
            line = change_record(head, known.quoted, connection)
            if keep_last:
                known.last = line
            if not known.pending:
                waiting.append(known)
            known.pending.append(line)  # _queue, inline: this runs for every record
            queued += len(line)
            records += 1
        self._pending_bytes += queued
        if present is not None:  # the dump: a connection that left it has left its last state with tcp_info
            for cookie in [cookie for cookie in self._fingerprints if cookie not in present]:
                del self._fingerprints[cookie]  # left the dump (or lost its tcp_info: TIME_WAIT)
                if self._hook is None and cookie in self._live:  # without the close hook, that is the end
                    connection = self._live[cookie]
                    self._queue(connection, f'{{"kind":"final","timestamp":"{stamp}"'.encode()
                                + connection.last[_CHANGE_STAMPED:-2] + b',"source":"poll"}\n')
                    self._finish(cookie)
                    with self._lock:
                        self._stats.records["final"] += 1
        elapsed = time.perf_counter() - begin
        with self._lock:
            self._stats.records["change"] += records
            self._stats.poll_count += 1
            self._stats.poll_seconds += elapsed
            self._stats.poll_buckets[bisect_left(POLL_BUCKETS, elapsed)] += 1

    def _open(self, connection: Connection, now: float) -> _Connection:
        uuid = f"{self._boot}_{connection.cookie:016x}"
        start_ns = self._starts.pop(connection.cookie, 0)
        start = start_ns / 1e9 + self._wall_offset if start_ns else now
        header = {"kind": "header", "timestamp": _timestamp(now), "uuid": uuid, "cookie": connection.cookie,
                  "family": FAMILIES.get(connection.family, str(connection.family)),
                  "local_address": connection.local_address, "local_port": connection.local_port,
                  "remote_address": connection.remote_address, "remote_port": connection.remote_port,
                  "start": _timestamp(start), "start_source": "kernel" if start_ns else "first_seen"}
        with self._lock:
            self._stats.records["header"] += 1
        return _Connection(uuid, _line(header))

    def _on_kernel_record(self, record) -> None:
        """A connection began or reached TCP_CLOSE (from the ring buffer poll, on the archive thread)."""
        from .kernel import Start
        if isinstance(record, Start):
            if len(self._starts) >= _FINISHED_MEMORY:  # never polled nor closed (the ring lost its final)
                del self._starts[next(iter(self._starts))]
            self._starts[record.cookie] = record.start_ns
        else:
            self._on_final(record)

    def _on_final(self, final) -> None:
        from .kernel import FINAL_COUNTERS
        self._starts.pop(final.cookie, None)
        self._fingerprints.pop(final.cookie, None)
        if final.cookie in self._finished:
            return
        connection = self._live.get(final.cookie)
        if connection is None:  # never polled: the kernel's record is all there is
            uuid = f"{self._boot}_{final.cookie:016x}"
            start = final.start_ns / 1e9 + self._wall_offset if final.start_ns else time.time()
            header = {"kind": "header", "timestamp": _timestamp(start), "uuid": uuid, "cookie": final.cookie,
                      "family": FAMILIES.get(final.family, str(final.family)),
                      "local_address": final.local_address, "local_port": final.local_port,
                      "remote_address": final.remote_address, "remote_port": final.remote_port,
                      "start": _timestamp(start), "start_source": "kernel" if final.start_ns else "first_seen"}
            connection = self._live[final.cookie] = _Connection(uuid, _line(header))
            with self._lock:
                self._stats.records["header"] += 1
        record = {"kind": "final", "timestamp": _timestamp(final.end_ns / 1e9 + self._wall_offset),
                  "uuid": connection.uuid, "state": "close",
                  "old_state": STATE_NAMES.get(final.old_state, str(final.old_state)),
                  "start": _timestamp(final.start_ns / 1e9 + self._wall_offset) if final.start_ns else None,
                  "source": "kernel", "tcp_info": dict(zip(FINAL_COUNTERS, final.counters))}
        self._queue(connection, _line(record))
        self._finish(final.cookie)
        with self._lock:
            self._stats.records["final"] += 1

    def _queue(self, connection: _Connection, line: bytes) -> None:
        if not connection.pending:
            self._waiting.append(connection)
        connection.pending.append(line)
        self._pending_bytes += len(line)

    def _finish(self, cookie: int) -> None:
        self._finished[cookie] = None
        if len(self._finished) > _FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]
        self._closing.append(cookie)
        self._prompt[cookie] = self._live[cookie]

    def _flush(self, everything: bool) -> None:
        """Every connection's pending lines, or only those of new and finished connections."""
        now, append, flushed = time.monotonic(), self.files.append, 0
        for connection in self._waiting if everything else self._prompt.values():
            pending = connection.pending
            if pending:
                lines, count = b"".join(pending), len(pending)
                pending.clear()
                flushed += len(lines)
                append(connection.uuid, connection.header, lines, count, now)
        self._pending_bytes -= flushed
        self.files.settle()
        if everything:
            self._waiting.clear()
        self._prompt.clear()
        for cookie in self._closing:
            connection = self._live.pop(cookie, None)
            if connection is not None:
                self.files.forget(connection.uuid)
        self._closing.clear()


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)  # one encoder: json.dumps makes one a call
# What surrounds tcp_info in a change record, by (state, congestion control, number of meminfo fields):
# the JSON before it, and the format of what follows (the meminfo object). A few dozen at most.
_AROUND_TCP_INFO: dict[tuple[int, str, int], tuple[bytes, bytes]] = {}
# A change record's opening up to its timestamp's closing quote ('{"kind":"change","timestamp":"...Z"').
_CHANGE_STAMPED = len('{"kind":"change","timestamp":"') + len(_timestamp(0.0)) + 1


def _line(record: dict) -> bytes:
    return _ENCODER.encode(record).encode() + b"\n"


def change_record(head: bytes, uuid: bytes, connection: Connection) -> bytes:
    """A change record's line: ``head`` and ``uuid`` (its JSON up to the uuid's comma), then the state,
    congestion control, tcp_info and meminfo as ``_line`` would write them (same keys, same order), from
    precompiled formats joined once: no dict, no intermediate bytes, one ``%`` per struct."""
    meminfo = connection.meminfo
    key = (connection.state, connection.congestion, len(meminfo))
    around = _AROUND_TCP_INFO.get(key)
    if around is None:
        state = STATE_NAMES.get(connection.state, connection.state)
        around = _AROUND_TCP_INFO[key] = (
            f'"state":"{state}","congestion":{_ENCODER.encode(connection.congestion)},"tcp_info":'.encode(),
            (',"meminfo":{' + ",".join(f'"{name}":%d' for name in MEMINFO_NAMES[:len(meminfo)]) + "}}\n").encode())
    lead, meminfo_format = around
    return b"".join((head, uuid, lead, *tcp_info.prefix(len(connection.tcp_info)).json_parts(connection.tcp_info),
                     meminfo_format % meminfo))
