"""Per-CPU packet processing statistics: /proc/net/softnet_stat.

One row per online CPU, columns in hex (%08x). What a column holds depends on the kernel, so rows are
read by their column count (net/core/net-procfs.c, softnet_seq_show; 0-based columns):

  0 processed          packets taken off the CPU's backlog/NAPI by net_rx_action
  1 dropped            packets dropped because the backlog queue was full (netdev_max_backlog)
  2 time_squeeze       times net_rx_action stopped with work left (budget or time used up)
  3-8                  zeros (was throttled, fastroute, cpu_collision)
  9 received_rps       RPS inter-processor interrupts this CPU received      (10+ columns, Linux 2.6.35)
  10 flow_limit_count  packets dropped by the flow limit                      (11+ columns, Linux 3.11)
  11 backlog_len       input_pkt_queue + process_queue length, a level        (13+ columns, Linux 5.10)
  12 cpu               the CPU's id                                           (13+ columns, Linux 5.10)
  13-14                input_pkt_queue and process_queue lengths apart       (15 columns, Linux 6.x)

The kernel's counters are 32-bit (``unsigned int``): they wrap at 2^32.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from . import read_bytes

# The columns exported, by name, at their 0-based position.
COLUMNS = (("processed", 0), ("dropped", 1), ("time_squeeze", 2), ("received_rps", 9),
           ("flow_limit_count", 10), ("backlog_len", 11))
_CPU_COLUMN = 12
_MIN_COLUMNS = 9


class Softnet(NamedTuple):
    """One entry per row: ``cpus[i]`` is row i's CPU, ``columns[name][i]`` its value. ``columns`` has
    only the columns every row has (COLUMNS order). The CPU is the row's cpu column where the kernel
    writes one; before Linux 5.10 it is the row index, which is the CPU id only while every CPU is
    online (the kernel skips offline CPUs)."""
    cpus: tuple[int, ...]
    columns: dict[str, tuple[int, ...]]


def parse_softnet(data: bytes) -> Softnet:
    rows = [line.split() for line in data.splitlines()]
    width = min(map(len, rows), default=_MIN_COLUMNS)
    if width < _MIN_COLUMNS:
        raise ValueError(f"softnet_stat: a row of {width} columns, expected at least {_MIN_COLUMNS}")

    def column(index: int) -> tuple[int, ...]:
        return tuple([int(row[index], 16) for row in rows])

    cpus = column(_CPU_COLUMN) if width > _CPU_COLUMN else tuple(range(len(rows)))
    return Softnet(cpus, {name: column(index) for name, index in COLUMNS if index < width})


def read_softnet(net_dir: str = "/proc/net") -> Softnet:
    return parse_softnet(read_bytes(os.path.join(net_dir, "softnet_stat")))
