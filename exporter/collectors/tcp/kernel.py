"""The kernel method: tcp_accounting.bpf.c's aggregates for this exporter's network namespace.

Every socket counts at its close (close hooks) and, while it lives, at every scrape (the socket
iterator), each byte once; the aggregates live in the kernel, so user-space memory does not grow with
sockets. The sockets open at start count from zero (the first iterator pass is their baseline).
"""

from __future__ import annotations

import logging
import threading

from ...bpf.tcp_accounting import COUNTERS, TcpAccounting
from .reading import Reading

log = logging.getLogger("netio_exporter")


class KernelAccounting:
    """Label groups as SockDiagPolling's: ``group_of_port`` maps listed ports to groups, every other
    port is in the last group. Safe to share between threads."""

    method = "kernel"
    width = COUNTERS

    def __init__(self, groups: int, group_of_port: dict[int, int]):
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
