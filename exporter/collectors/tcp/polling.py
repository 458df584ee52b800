"""Polling: the totals from sock_diag dumps at scrape time, the method used where BPF does not load.

Totals are sums over every socket seen, live and closed, kept per socket cookie. The first dump (at start)
is the baseline: the sockets open then count from zero. A socket first seen later counts in full; at each
scrape a live socket adds what its counters moved since the last one (32-bit fields modulo 2^32); a socket
that left the dump, or entered a state without tcp_info (TIME_WAIT), keeps the values it had at its last
scrape and counts once in ``netio_tcp_connections_closed_total`` (with ``track_left``, the counters it had
then are summed in ``left``, for the kernel method's other namespaces). Only the sockets of the last dump
are remembered, so memory grows with the socket count.

Polling cannot see what happens between two scrapes: sockets that open and close in between count
as closed only if they are still in the dump (TIME_WAIT) and never with their bytes, and what a
socket moves between its last scrape and its close is not in the totals.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from operator import lt

from ...netlink.core import DumpInterrupted
from ...netlink.sock_diag import TCP_ESTABLISHED, TCP_INFO_COUNTER_NAMES, TCP_SYN_RECV, SockDiagReader
from .reading import RTT_BOUNDS_US, Reading

_WRAP_32 = tuple(TCP_INFO_COUNTER_NAMES.index(name) for name in ("total_retrans", "segs_out", "segs_in"))

# Snapshots are decoded and summed in batches: memory stays flat however many sockets moved.
_FOLD = SockDiagReader.COLUMN_BATCH
_ATTEMPTS = 3  # a dump the kernel flags as inconsistent is read again, as NetlinkSocket does
_GONE = None  # what is remembered of a socket already counted as closed that is still in the dump


def _wrapped(now: tuple, then: tuple) -> tuple:
    """What one socket's counters moved: 32-bit counters modulo 2^32; 64-bit counters never wrap, and
    a decrease (which the kernel does not do) is not counted backwards."""
    return tuple((after - before) & 0xFFFFFFFF if index in _WRAP_32 else max(after - before, 0)
                 for index, (after, before) in enumerate(zip(now, then)))


class _Tally:
    """One label group's part of a scrape, built while the dump streams by.

    Each socket the dump shows moves from ``previous`` (the memory of the last scrape) to ``known``, so
    the memory of a socket is held once, and whatever is still in ``previous`` after a complete dump
    has left it. A socket whose counter snapshot changed is only queued during the dump; the queues
    are decoded and summed in batches, column by column, which costs far less than socket by socket.
    """

    __slots__ = ("known", "states", "rtts", "moved", "closed", "left", "visit", "finish")

    def __init__(self, previous: dict, width: int, reader: SockDiagReader):
        self.known: dict[int, bytes | None] = {}  # the group's memory for the next scrape
        self.states = [0] * 256
        self.rtts: list[int] = []
        self.moved = [0] * width
        self.closed = [0]  # a cell the visitor updates: the visitor holds no reference to the tally
        self.left: list[bytes] = []  # the last counted snapshots of the sockets that lost their tcp_info
        self.visit, self.finish = self._visitor(previous, reader)

    def _visitor(self, previous: dict, reader: SockDiagReader):
        """The per-socket callback for the dump, and the function that completes the tally after it."""
        recall = previous.pop
        known = self.known
        states, rtts, moved, closed = self.states, self.rtts, self.moved, self.closed
        fresh, now, then = [], [], []  # snapshots of new sockets; of moved sockets, and their previous ones
        add_fresh, add_now, add_then, add_left = fresh.append, now.append, then.append, self.left.append

        def visit(cookie, state, port, rtt, snapshot):
            if cookie in known:
                return  # seen twice in one dump (it moved in the table while the kernel walked it)
            states[state] += 1
            before = recall(cookie, False)  # False: never seen; _GONE: counted as closed already
            if snapshot is None:  # TIME_WAIT (or FIN_WAIT2 after close), or a request socket: no tcp_info
                if state != TCP_SYN_RECV:
                    known[cookie] = _GONE
                    if before is not _GONE:
                        closed[0] += 1  # it just closed, or opened and closed since the last scrape
                        if before:
                            add_left(before)
                return
            if state == TCP_ESTABLISHED:
                rtts.append(rtt)
            if snapshot == before:
                known[cookie] = before  # keep the older, equal snapshot: the new one is freed at once
                return
            known[cookie] = snapshot
            if before:
                add_now(snapshot)
                add_then(before)
                if len(now) >= _FOLD:
                    _fold_moves(now, then, moved, reader)
            else:
                add_fresh(snapshot)  # first seen: counts in full
                if len(fresh) >= _FOLD:
                    _fold_fresh(fresh, moved, reader)

        def finish():
            _fold_fresh(fresh, moved, reader)
            _fold_moves(now, then, moved, reader)

        return visit, finish


def _fold_fresh(snapshots: list, moved: list, reader: SockDiagReader) -> None:
    """Add the counters of first-seen sockets in full; empty the queue."""
    columns = reader.counter_columns(snapshots)
    if columns is not None:
        for index, column in enumerate(columns[:len(moved)]):
            moved[index] += sum(column)
    else:  # snapshots of several lengths (not seen in practice): one by one
        decoders = reader.snapshot_decoders
        for snapshot in snapshots:
            for index, value in enumerate(decoders[len(snapshot)](snapshot)[:len(moved)]):
                moved[index] += value
    snapshots.clear()


def _fold_moves(now: list, then: list, moved: list, reader: SockDiagReader) -> None:
    """Add what the counters of known sockets moved since their last scrape; empty the queues."""
    after, before = reader.counter_columns(now), reader.counter_columns(then)
    wrap = [index for index in _WRAP_32 if index < len(moved)]
    if after is not None and before is not None and not any(any(map(lt, after[index], before[index]))
                                                            for index in wrap):
        for index in range(len(moved)):
            moved[index] += sum(after[index]) - sum(before[index])
    else:  # a 32-bit counter wrapped, or snapshots of several lengths: socket by socket
        decoders = reader.snapshot_decoders
        for snapshot, previous in zip(now, then):
            moves = _wrapped(decoders[len(snapshot)](snapshot), decoders[len(previous)](previous))
            for index, value in enumerate(moves[:len(moved)]):
                moved[index] += value
    now.clear()
    then.clear()


class SockDiagPolling:
    """The polling method for label groups by local port: ``groups`` buckets, ``group_of_port`` maps listed
    ports to theirs, every other port is in the last. Safe to share between threads."""

    method = "polling"

    def __init__(self, groups: int, group_of_port: dict[int, int], track_left: bool = False):
        self._groups = groups
        self._group_of_port = group_of_port
        self._reader = SockDiagReader()
        self._lock = threading.Lock()
        # How many counters this kernel's tcp_info carries: an older kernel's shorter struct lacks the
        # newer ones, and their metrics are absent rather than zero.
        self.width = len(self._reader.counter_names)
        # Under the lock, per label group: cookie -> the socket's counter snapshot at its last scrape,
        # or _GONE for a socket already counted as closed that is still in the dump (TIME_WAIT).
        self._known: list[dict[int, bytes | None]] = [{} for _ in range(groups)]
        self._totals = [[0] * self.width for _ in range(groups)]
        self._closed = [0] * groups
        # With ``track_left``, per label group: the sum of the counters each socket that closed had at its
        # last scrape (what these totals counted of it up to there, plus its baseline), or None.
        self.left: list[list[int]] | None = [[0] * self.width for _ in range(groups)] if track_left else None
        self.read()  # the baseline: what the sockets open now have done is not counted, nor their closes
        self._totals = [[0] * self.width for _ in range(groups)]
        self._closed = [0] * groups

    def close(self) -> None:
        self._reader.close()

    def namespace_reader(self) -> "SockDiagPolling":
        """The same counting for the calling thread's network namespace (call it there)."""
        return SockDiagPolling(self._groups, self._group_of_port)

    def read(self) -> list[Reading]:
        with self._lock:  # the dump and the bookkeeping together: concurrent scrapes never double-count
            for attempt in range(_ATTEMPTS):
                try:
                    return self._scrape()
                except DumpInterrupted:
                    if attempt == _ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")

    def _scrape(self) -> list[Reading]:
        """Read the kernel and move the totals on.

        A dump that fails part way still commits what it saw socket by socket (their moves, and their
        snapshots as the memory of the next attempt) and forgets nobody, so reading again never counts
        anything twice; only a complete dump says which sockets left.
        """
        tallies = [_Tally(known, self.width, self._reader) for known in self._known]
        complete = False
        try:
            if len(tallies) == 1:
                self._reader.visit_tcp_sockets(tallies[0].visit)
            else:
                visits = [tally.visit for tally in tallies]
                group_of_port = self._group_of_port.get
                other = len(tallies) - 1
                self._reader.visit_tcp_sockets(
                    lambda cookie, state, port, rtt, snapshot:
                        visits[group_of_port(port, other)](cookie, state, port, rtt, snapshot))
            complete = True
        finally:
            for group, tally in enumerate(tallies):
                tally.finish()
                remaining = self._known[group]  # after a complete dump: the sockets that left it
                if complete:
                    gone = [snapshot for snapshot in remaining.values() if snapshot is not _GONE]
                    self._closed[group] += len(gone)
                    tally.left.extend(gone)
                else:
                    tally.known.update(remaining)
                if self.left is not None and tally.left:
                    _fold_fresh(tally.left, self.left[group], self._reader)
                self._closed[group] += tally.closed[0]
                totals = self._totals[group]
                for index, moved in enumerate(tally.moved):
                    totals[index] += max(moved, 0)  # the kernel's counters only grow: so do ours
                self._known[group] = tally.known
        readings = []
        for group, tally in enumerate(tallies):
            values = sorted(tally.rtts)
            cumulative = [bisect_right(values, bound) for bound in RTT_BOUNDS_US] + [len(values)]
            buckets = [count - previous for count, previous in zip(cumulative, [0] + cumulative)]
            readings.append(Reading(tally.states, list(self._totals[group]), self._closed[group], buckets,
                                    sum(values)))
        return readings
