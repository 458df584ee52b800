"""What either accounting method gives the collector at a scrape: one ``Reading`` per label group."""

from __future__ import annotations

from typing import NamedTuple

# RTT bucket bounds in microseconds (tcpi_rtt's unit): 10 µs (loopback) to 10 s in 1-2.5-5 steps; the same
# bounds as rtt_bounds_us in exporter/bpf/tcp_accounting.bpf.c.
RTT_BOUNDS_US = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
                 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000)


class Reading(NamedTuple):
    """One label group (a local-port bucket) at one scrape."""
    states: list[int]  # sockets by TCP state number (include/net/tcp_states.h)
    counters: list[int]  # totals of sock_diag's TCP_INFO_COUNTER_NAMES, as tcp_info counts them (µs for times)
    closed: int
    rtt_buckets: list[int]  # established sockets per RTT bucket (not cumulative), +Inf last
    rtt_sum_us: int
