"""The live page and the jsonl log's records: per-interval figures of every enabled collector.

``Recorder`` reads the collectors (the same objects the scrape holds, through ``Scrape.read``) and
turns two successive reads into one record: counters as the deltas between the reads (or those deltas
per second, for the page), gauges as read. It is the one place that computes counter deltas, for the
page's rates and for the log alike. A record, one JSON object (README: "The jsonl log")::

    {"time": "2026-12-01T08:30:00.500Z", "interval_seconds": 0.5, "counters_are": "rates",
     "collectors": {"link": null, "netstack": "why it failed", ...},
     "counters": {"netio_network_receive_bytes_total": {"labels": ["device"], "samples": [["eth0", 1250.0]]}},
     "gauges": {"netio_tcp_connections": {"labels": ["state"], "samples": [["established", 4]]}}}

``LiveFeed`` serves the page: one sampler thread reads the collectors once per period while at least
one viewer is subscribed, and not at all otherwise; every viewer gets the same encoded Server-Sent
Event. A viewer holds at most ``MAX_PENDING_EVENTS`` unsent events; one that falls further behind is
dropped (its browser reconnects by itself), never buffered without bound.
"""

from __future__ import annotations

import collections
import html
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from operator import itemgetter

from . import __version__
from .collectors import Scrape
from .exposition import Family

log = logging.getLogger("netio_exporter")

EVENT_CONTENT_TYPE = "text/event-stream"
PAGE_CONTENT_TYPE = "text/html; charset=utf-8"
MAX_PENDING_EVENTS = 8  # per viewer: 4 s at the default period
MAX_VIEWERS = 64  # each holds a connection (a file descriptor) and costs a send per event

_ALIGNED_ROWS_ENTRIES = 256
Snapshot = dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]]  # sample name -> labels, series


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, as the log's lines carry it."""
    return datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_name_of, _value_of = itemgetter(0), itemgetter(1)


def _aligned(rows) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The label names of ``rows`` (their union, in order of appearance) and each row's label values in
    that order, an absent label as "" (as Prometheus reads it): rows of one family may differ, e.g. a
    ``netns`` label on other namespaces' series only."""
    names = tuple(map(_name_of, rows[0]))
    if all(len(labels) == len(names) and tuple(map(_name_of, labels)) == names for labels in rows):
        return names, [tuple(map(_value_of, labels)) for labels in rows]
    union = list(names)
    for labels in rows:
        union += [name for name, _ in labels if name not in union]
    keys = [tuple(dict(labels).get(name, "") for name in union) for labels in rows]
    return tuple(union), keys


def _merge(into: Snapshot, name: str, names: tuple[str, ...], keys, values) -> None:
    """Add series (label values in ``names`` order) to the table ``name``, widening it to the union of
    label names when they differ."""
    table = into.get(name)
    if table is None:
        into[name] = (names, dict(zip(keys, values)))
        return
    have, series = table
    if names != have:
        union = have + tuple(label for label in names if label not in have)
        if union != have:
            series = {key + ("",) * (len(union) - len(have)): value for key, value in series.items()}
            into[name] = (union, series)
        order = [names.index(label) if label in names else None for label in union]
        keys = [tuple("" if i is None else key[i] for i in order) for key in keys]
    series.update(zip(keys, values))


def _snapshot(families: list[Family], counters: Snapshot, gauges: Snapshot,
              aligned_rows: dict[int, tuple[tuple, tuple[str, ...], list[tuple[str, ...]]]]) -> None:
    """Add the families' samples to ``counters`` or ``gauges`` by exposed sample name.

    ``aligned_rows``: id(rows) -> (rows, ``_aligned(rows)``), kept across reads: collectors pass the same
    rows object while their label sets are unchanged (see ``Family``); the entry holds rows, so no other
    object can take its id while the entry lives.
    """
    for family in families:
        into = counters if family.type == "counter" else gauges
        for suffix, labels, value in family.samples:
            table = into.get(family.name + suffix)
            names = tuple(map(_name_of, labels))
            if table is not None and table[0] == names:
                table[1][tuple(map(_value_of, labels))] = value
            else:
                _merge(into, family.name + suffix, names, [tuple(map(_value_of, labels))], [value])
        for suffix, rows, values in family.columns:
            if not rows:
                continue
            entry = aligned_rows.get(id(rows))
            if entry is None:
                entry = aligned_rows[id(rows)] = (rows, *_aligned(rows))
            _merge(into, family.name + suffix, entry[1], entry[2], values)


def _delta(new, old):
    """A counter's increase; 0 after a reset (the new value is the next baseline), never negative."""
    if new < old:
        return 0
    delta = new - old
    return round(delta, 9) if type(delta) is float else delta  # nanoseconds: no 0.30000000000000004


def _rate(delta, seconds: float) -> float:
    return float(f"{delta / seconds:.6g}")


def _samples(names: tuple[str, ...], series: dict) -> dict:
    return {"labels": list(names), "samples": [[*key, value] for key, value in series.items()]}


class Recorder:
    """Successive reads of a scrape's collectors (its self collectors included) as interval records."""

    def __init__(self, scrape: Scrape):
        self.scrape = scrape
        self._previous: dict[str, Snapshot] | None = None  # each collector's counters at its last good read
        self._previous_time = 0.0
        self._aligned_rows: dict[int, tuple[tuple, tuple[str, ...], list[tuple[str, ...]]]] = {}

    def reset(self) -> None:
        """Forget the last read: the next ``record()`` only sets the baseline."""
        self._previous = None

    def record(self, rates: bool = False) -> dict | None:
        """Read every collector; the record since the previous read, or None on the first (baseline).

        Counters are deltas, or with ``rates`` those deltas per second. A series seen for the first
        time only sets its baseline. A collector that failed says why in ``collectors`` and has no
        figures in this record; its next delta counts from its last good read (sums stay exact).
        """
        now = time.monotonic()
        status: dict[str, str | None] = {}
        counters: dict[str, Snapshot] = {}
        gauges: Snapshot = {}
        previous = self._previous
        if len(self._aligned_rows) > _ALIGNED_ROWS_ENTRIES:  # label sets that change every read
            self._aligned_rows.clear()
        for collector in self.scrape.collectors + self.scrape.self_collectors:
            name = collector.name
            families, status[name] = self.scrape.read(collector)
            if status[name] is None:
                _snapshot(families, counters.setdefault(name, {}), gauges, self._aligned_rows)
            elif previous is not None and name in previous:
                counters[name] = previous[name]
        self._previous = counters
        elapsed, self._previous_time = max(now - self._previous_time, 1e-9), now
        if previous is None:
            return None
        changes = {}
        for collector, snapshot in counters.items():
            if status[collector] is not None:
                continue
            before_collector = previous.get(collector, {})
            for name, (names, series) in snapshot.items():
                before = before_collector.get(name, ((), {}))[1]
                deltas = {key: _delta(value, before[key]) for key, value in series.items() if key in before}
                if rates:  # the page's events: a rate left out is 0 (most error counters, idle interfaces)
                    deltas = {key: _rate(delta, elapsed) for key, delta in deltas.items() if delta}
                changes[name] = _samples(names, deltas)  # present even when every rate was 0
        return {"time": timestamp(time.time()), "interval_seconds": round(elapsed, 3),
                "counters_are": "rates" if rates else "deltas", "collectors": status,
                "counters": changes, "gauges": {name: _samples(*value) for name, value in gauges.items()}}

    def line(self) -> str | None:
        """``record()`` (counters as deltas) as one line of the jsonl log."""
        record = self.record()
        return None if record is None else _json(record) + "\n"


def _json(record: dict) -> str:
    """Compact JSON; a value that is not finite (which JSON cannot carry) becomes null."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        for section in ("counters", "gauges"):
            for table in record[section].values():
                table["samples"] = [row[:-1] + [row[-1] if math.isfinite(row[-1]) else None]
                                    for row in table["samples"]]
        return json.dumps(record, separators=(",", ":"))


def encode_event(record: dict) -> bytes:
    """A record as one Server-Sent Event (JSON has no raw newline, so it is one data line)."""
    return b"data: " + _json(record).encode() + b"\n\n"


class Subscription:
    """One viewer's queue of encoded events.

    ``wake()`` (if given) is called on the sampler's thread after an event was queued or the viewer
    was dropped: an asyncio server passes ``lambda: loop.call_soon_threadsafe(event.set)``. The
    consumer then calls ``take()``, writes what it got, and waits until that is written before it
    takes again; when ``dropped`` is set it ends the response. ``close()`` when the client goes.
    """

    def __init__(self, feed: LiveFeed, wake: Callable[[], None] | None):
        self._feed = feed
        self._wake = wake
        self.events: collections.deque[bytes] = collections.deque()
        self.dropped = False

    def take(self) -> list[bytes]:
        taken = []
        while self.events:
            taken.append(self.events.popleft())
        return taken

    def close(self) -> None:
        self._feed._unsubscribe(self)

    def _offer(self, event: bytes) -> bool:
        """Queue the event; False if the viewer is too far behind (then it is dropped)."""
        if len(self.events) >= MAX_PENDING_EVENTS:
            self.dropped = True
        else:
            self.events.append(event)
        if self._wake is not None:
            self._wake()
        return not self.dropped


class LiveFeed:
    """The live page's bytes and its event stream, sampled on one thread while someone watches.

    Serving it: ``/`` answers ``page()`` (``PAGE_CONTENT_TYPE``). ``/events`` answers 200 with
    ``EVENT_CONTENT_TYPE`` and ``Cache-Control: no-store`` and no length, then streams: an asyncio server
    subscribes with ``wake=lambda: loop.call_soon_threadsafe(ready.set)``, and loops on ``await
    ready.wait(); ready.clear()``, writing what ``take()`` returns and awaiting the drain (bounded by a
    timeout of ``MAX_PENDING_EVENTS * period``), until ``dropped`` or the client's EOF; then ``close()``
    (exporter/server.py's ``_events``).
    """

    def __init__(self, scrape: Scrape, period: float):
        self.period = period
        self._recorder = Recorder(scrape)
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._page = _page(period)

    def page(self) -> bytes:
        return self._page

    @property
    def sampling(self) -> bool:
        with self._lock:
            return self._thread is not None

    def subscribe(self, wake: Callable[[], None] | None = None) -> Subscription | None:
        """A new viewer, or None while ``MAX_VIEWERS`` are open (answer 503); starts the sampler if it
        is the first."""
        subscription = Subscription(self, wake)
        with self._lock:
            if len(self._subscriptions) >= MAX_VIEWERS:
                return None
            self._subscriptions.append(subscription)
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(target=self._sample, name="netio-live", daemon=True)
                self._thread.start()
        return subscription

    def close(self) -> None:
        """Stop sampling; the viewers' streams end."""
        self._closing.set()
        with self._lock:
            thread = self._thread
            subscriptions, self._subscriptions = self._subscriptions, []
        if thread is not None:
            thread.join()
        for subscription in subscriptions:
            subscription.dropped = True
            if subscription._wake is not None:
                subscription._wake()

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def _sample(self) -> None:
        """The sampler: a baseline read, then one record per period on a fixed grid while anyone watches."""
        self._recorder.reset()
        self._recorder.record(rates=True)
        start, ticks = time.monotonic(), 0
        while True:
            ticks = max(ticks + 1, int((time.monotonic() - start) / self.period) + 1)  # skip missed slots
            if self._closing.wait(max(0.0, start + ticks * self.period - time.monotonic())):
                break
            with self._lock:
                if not self._subscriptions:
                    self._thread = None
                    return
                subscriptions = list(self._subscriptions)
            try:
                event = encode_event(self._recorder.record(rates=True))
            except Exception:  # Scrape.read isolates collectors: this is a bug, and the page must not die of it
                log.exception("live page sample failed")
                continue
            for subscription in subscriptions:
                if not subscription._offer(event):
                    log.info("live page viewer fell %d events behind; dropped", MAX_PENDING_EVENTS)
                    subscription.close()
        with self._lock:
            self._thread = None


def _page(period: float) -> bytes:
    """index.html with its style sheet and script inline: one request, no asset routes, works offline."""
    web = resources.files(__package__) / "web"
    text = (web / "index.html").read_text()
    replacements = {
        "{{style}}": (web / "style.css").read_text(),
        "{{script}}": (web / "app.js").read_text(),
        "{{host}}": html.escape(os.uname().nodename),
        "{{version}}": html.escape(__version__),
        "{{period_ms}}": str(round(period * 1000)),
    }
    for marker, value in replacements.items():
        text = text.replace(marker, value)
    return text.encode()
