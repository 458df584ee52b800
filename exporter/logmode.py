"""Log mode (-l): per-interval deltas, as CSV (netio-logger compatible: one interface's link bytes, read
by the link reader alone) or JSON lines (every enabled collector: ``exporter.live.Recorder``'s records).

Standard output (or the file) carries only data lines; everything said to the operator goes to
stderr. Lines are written whole or not at all: a short write is continued, and a write that fails
part-way (a full disk) cuts the file back to where the line began before the exporter exits, so the
next run appends to whole lines. SIGTERM is only acted on between lines. SIGHUP reopens the file for
log rotation.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .netlink.rtnl import IFF_LOOPBACK, STATS64_FIELDS, LinkReader

CSV_HEADER = "elapsedRx,elapsedTx\n"
_RX_BYTES = STATS64_FIELDS.index("rx_bytes")
_TX_BYTES = STATS64_FIELDS.index("tx_bytes")
_NETWORK_STATS = re.compile(r"networkStats/\((?P<name>[^()/]*)\)")
FIRST_NON_LOOPBACK = "*"

if TYPE_CHECKING:  # the csv log imports the link reader and nothing else
    from .live import Recorder


class ConfigError(ValueError):
    """A malformed setting; the message names it and says what it accepts."""


def interface_from_metrics_request(value: str | None) -> str:
    """The interface netio-logger's METRICS_REQUEST names: the last ``networkStats/(NAME)`` wins.

    Items of other kinds are netio-logger metrics this tool does not log; they are ignored.
    """
    interface = "lo"
    for item in (value or "").split(","):
        item = item.strip()
        if not item.startswith("networkStats"):
            continue
        match = _NETWORK_STATS.fullmatch(item)
        if match is None or not match["name"] or len(match["name"]) > 15:
            raise ConfigError(f"METRICS_REQUEST: expected items like networkStats/(eth0) or networkStats/(*), "
                              f"got {item!r}")
        interface = match["name"]
    return interface


def parse_seconds(text: str, name: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < 10**7):
        raise ConfigError(f"{name}: expected a number of seconds greater than 0, got {text!r}")
    return seconds


class SinkError(Exception):
    """The log destination cannot be opened or written; the message says which and why."""


class _Sink:
    """An append-only destination: standard output for '-', else a file that SIGHUP reopens."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.is_new = False
        self.open()

    @property
    def _where(self) -> str:
        return "standard output" if self.path == "-" else self.path

    def open(self) -> None:
        try:
            self._open()
        except OSError as error:
            raise SinkError(f"cannot open {self._where}: {error.strerror or error}") from None

    def _open(self) -> None:
        if self.path == "-":
            if sys.stdout is None:  # closed when we started: fd 1 may be any file opened since
                raise OSError(0, "it is closed")
            self.fd, self.is_new = sys.stdout.fileno(), self.fd == -1
            os.fstat(self.fd)  # EBADF if it was closed under Python
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self.fd != -1:
            os.close(self.fd)
        self.fd, self.is_new = fd, os.fstat(fd).st_size == 0

    def write(self, line: str) -> None:
        data = line.encode()
        start = self._end()
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError as error:
            if written and start is not None:
                self._cut(start, start + written)
            raise SinkError(f"cannot write to {self._where}: {error.strerror or error}") from None

    def _end(self) -> int | None:
        """Where the next line begins, for a regular file (a pipe or a terminal cannot be cut back)."""
        try:
            if stat.S_ISREG(os.fstat(self.fd).st_mode):
                return os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            pass
        return None

    def _cut(self, start: int, end: int) -> None:
        """Remove the part of a line written from ``start`` to ``end``, unless someone wrote after it."""
        try:
            if os.fstat(self.fd).st_size == end:
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
        except OSError:
            pass

    def close(self) -> None:
        if self.path != "-" and self.fd != -1:
            os.close(self.fd)


@dataclass
class _Interface:
    """What the logger knows of one interface between intervals."""
    baseline: tuple[int, ...] | None = None
    missing_said: bool = False


class DeltaTracker:
    """Per-interface counter deltas that never go negative.

    An interface seen for the first time, or again after it vanished, only sets its baseline.
    A counter that went backwards (reset) counts from its new value: its delta is 0 for that
    interval and the new value is the baseline.
    """

    def __init__(self, say: Callable[[str], None]):
        self._say = say
        self._interfaces: dict[str, _Interface] = {}

    def update(self, wanted: list[str], readings: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        deltas = {}
        for name in wanted:
            state = self._interfaces.setdefault(name, _Interface())
            counters = readings.get(name)
            if counters is None:
                if not state.missing_said:
                    self._say(f"interface {name} {'vanished' if state.baseline else 'not found'}; "
                              "nothing is logged for it until it returns")
                    state.missing_said = True
                state.baseline = None
                continue
            if state.missing_said:
                self._say(f"interface {name} is back; counting from now")
                state.missing_said = False
            previous, state.baseline = state.baseline, counters
            if previous is None:
                continue
            delta = tuple(new - old if new >= old else 0 for new, old in zip(counters, previous))
            reset = [STATS64_FIELDS[i] for i, (new, old) in enumerate(zip(counters, previous)) if new < old]
            if reset:
                self._say(f"interface {name}: {', '.join(reset)} went backwards (counter reset); "
                          "counting from the new value")
            deltas[name] = delta
        return deltas


def _say(message: str) -> None:
    print(f"netio-exporter: {message}", file=sys.stderr, flush=True)


class LogMode:
    """The interval loop. ``csv_interface`` selects CSV for one interface; otherwise ``recorder``'s
    records as JSON lines."""

    def __init__(self, path: str, interval: float, csv_interface: str | None = None,
                 recorder: Recorder | None = None):
        self.interval = interval
        self.csv_interface = csv_interface
        self.recorder = recorder
        self.reader = LinkReader() if recorder is None else None
        self.sink = _Sink(path)
        self.tracker = DeltaTracker(_say)
        self.stop = threading.Event()
        self.reopen = threading.Event()

    def _wanted(self, links) -> list[str]:
        if self.csv_interface == FIRST_NON_LOOPBACK:
            first = next((link.name for link in links if not link.flags & IFF_LOOPBACK), None)
            if first is None:
                return []
            self.csv_interface = first
            _say(f"METRICS_REQUEST networkStats/(*): logging {first}")
        return [self.csv_interface]

    def _read(self) -> str | None:
        """Read the counters; the line since the previous read (None on the first)."""
        if self.recorder is not None:
            return self.recorder.line()
        readings = self.reader.read()
        wanted = self._wanted([reading.link for reading in readings])
        deltas = self.tracker.update(wanted, {reading.link.name: reading.counters for reading in readings})
        delta = deltas.get(self.csv_interface)
        return None if delta is None else f"{delta[_RX_BYTES]},{delta[_TX_BYTES]}\n"

    def _write(self, line: str | None) -> None:
        """Write the CSV header if the destination is new, then the line (if any)."""
        if self.reopen.is_set():
            self.reopen.clear()
            self.sink.open()
        if self.csv_interface is not None and self.sink.is_new:
            self.sink.write(CSV_HEADER)
        self.sink.is_new = False
        if line is not None:
            self.sink.write(line)

    def run(self) -> int:
        from .privileges import drop_after_start
        # Reading links needs no capability; the jsonl log's collectors keep what they name (mac, netns);
        # a file keeps CAP_DAC_OVERRIDE (if it was there) so that SIGHUP can reopen it wherever the first
        # open could.
        drop_after_start(self.recorder.scrape.collectors if self.recorder is not None else [],
                         keep=["CAP_DAC_OVERRIDE"] if self.sink.path != "-" else [])
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reopen.set())
        start = time.monotonic()
        ticks = 0
        try:
            self._write(None)
            while True:
                line = self._read()
                if ticks:
                    self._write(line)
                # the next reading on the start + k * interval grid, skipping slots already missed
                ticks = max(ticks + 1, int((time.monotonic() - start) / self.interval) + 1)
                if self.stop.wait(max(0.0, start + ticks * self.interval - time.monotonic())):
                    return 0
        except SinkError as error:
            _say(str(error))
            return 1
        finally:
            self.sink.close()
            if self.reader is not None:
                self.reader.close()
