"""The kernel method: tcp_accounting.bpf.c's aggregates for this exporter's network namespace.

Every socket counts at its close (close hooks) and, while it lives, at every scrape (the socket
iterator), each byte once; the aggregates live in the kernel, so user-space memory does not grow with
sockets. The sockets open at start count from zero (the first iterator pass is their baseline).

Another network namespace (``--collector.netns``) has no iterator pass: its closed sockets are in the same
aggregates (keyed by its cookie, each counted in full at its close), its live sockets come from a
sock_diag dump of that namespace, and ``NamespaceTotals`` joins the two (see there).
"""

from __future__ import annotations

import logging
import threading

from ...bpf.tcp_accounting import COUNTERS, TcpAccounting, netns_cookie
from .polling import SockDiagPolling
from .reading import Reading

log = logging.getLogger("netio_exporter")


class KernelAccounting:
    """Label groups as SockDiagPolling's: ``group_of_port`` maps listed ports to groups, every other
    port is in the last group. Safe to share between threads."""

    method = "kernel"
    width = COUNTERS

    def __init__(self, groups: int, group_of_port: dict[int, int]):
        self._groups, self._group_of_port = groups, group_of_port
        # Kernel buckets: listed ports 1..n, every other port 0 (port_buckets starts zeroed).
        self._accounting = TcpAccounting({port: group + 1 for port, group in group_of_port.items()})
        self._bucket_of_group = [group + 1 for group in range(groups - 1)] + [0] if group_of_port else [0]
        if self._accounting.sockops_error:
            log.warning("tcp: no sockops program (%s): closes are counted by the inet_sock_set_state tracepoint "
                        "alone, which the kernel skips when it fires during its own run (see "
                        "netio_bpf_program_missed_runs_total{program=\"tcp_close\"})", self._accounting.sockops_error)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._accounting.close()

    def read(self) -> list[Reading]:
        with self._lock:  # one iterator pass at a time: its per-pass tallies are shared
            live = self._accounting.live_pass()
            totals = self._accounting.totals()
        return [Reading(list(live[bucket].states), list(totals[bucket].counters), totals[bucket].closed,
                        list(live[bucket].rtt_buckets), live[bucket].rtt_sum_us)
                for bucket in self._bucket_of_group]

    def namespace_reader(self) -> "NamespaceTotals":
        """The reader of the calling thread's network namespace (call it there, e.g. on the opener thread)."""
        return NamespaceTotals(self._accounting, self._bucket_of_group, self._groups, self._group_of_port)


class NamespaceTotals:
    """Another namespace's figures: closed sockets from the kernel's aggregates, live ones from sock_diag.

    The aggregates hold every closed socket of the namespace in full (its final counters); the polling
    part counts the live sockets' moves from their first dump on and keeps, per group, the sum ``left`` of
    the counters each closed socket had at its last dump (what the polling part counted of it, plus its
    baseline). A socket's final counters minus those is what it did after its last dump, so

        closed part = aggregates - aggregates at first sight - left

    counts each byte once when every close that left the dump is in the aggregates. Each scrape reads the
    aggregates first, then dumps, so a socket that closes between the two reads has left the dump but is
    not in the aggregates yet: the closed part would dip, and is held instead (never lower than at the
    scrape before) until that close arrives, at the next scrape. The other way round needs a dump in the
    instant between a socket's sockops close hook and its unhashing (tcp_set_state() runs the hook first):
    that socket would count twice, the held value running ahead by what its live part counted until the
    namespace's later traffic makes it up. Sockets open at first sight
    count from zero (their first dump is the baseline, after the aggregates' first reading), so do the
    closes before it; connections that open and close between two scrapes count in full.
    Made inside the namespace (its cookie and its sock_diag socket are bound to it). Safe to share."""

    method = "kernel"

    def __init__(self, accounting: TcpAccounting, buckets: list[int], groups: int, group_of_port: dict[int, int]):
        self._accounting = accounting
        self._buckets = buckets
        self._cookie = netns_cookie()
        self._lock = threading.Lock()
        self._first = self._aggregates()  # before the baseline dump: see the class's text
        self._live = SockDiagPolling(groups, group_of_port, track_left=True)
        self.width = self._live.width
        self._held = [[0] * self.width for _ in buckets]  # the closed part's last value, per group

    def close(self) -> None:
        self._live.close()

    def _aggregates(self) -> list:
        totals = self._accounting.totals(self._cookie)
        return [totals[bucket] for bucket in self._buckets]

    def read(self) -> list[Reading]:
        with self._lock:
            aggregates = self._aggregates()
            live = self._live.read()
            readings = []
            for group, (now, first, reading) in enumerate(zip(aggregates, self._first, live)):
                held, left = self._held[group], self._live.left[group]
                for index in range(self.width):
                    held[index] = max(held[index], now.counters[index] - first.counters[index] - left[index])
                readings.append(reading._replace(
                    counters=[counted + closed for counted, closed in zip(reading.counters, held)],
                    closed=now.closed - first.closed))
            return readings
