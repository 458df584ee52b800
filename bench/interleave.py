"""Interleaved on/off measurement of what a hook costs a continuous stream of traffic.

Whole runs started one after another carry a shared VM's drift into every comparison (2-3 s iperf3 runs
here vary by 8-30% from run to run). Instead one long iperf3 stream keeps flowing while the hook is
switched off and on in short windows, in ABBA order (off/on, on/off, ...) so a steady drift cancels
over each two pairs, and each window's rate comes from the receiving interface's own counters. The ratio
on/off of each pair, over many pairs, gives the loss with a confidence interval.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple

from exporter.netlink.rtnl import STATS64_FIELDS, LinkReader
from tests.support.netns import in_netns

_RX_PACKETS, _RX_BYTES = STATS64_FIELDS.index("rx_packets"), STATS64_FIELDS.index("rx_bytes")


class ReceiveCounter:
    """Received bytes and packets of one interface in namespace ``ns`` (netlink, no subprocess)."""

    def __init__(self, ns: str, device: str):
        with in_netns(ns):  # the netlink socket belongs to the namespace it was made in
            self._reader = LinkReader()
        self.device = device

    def read(self) -> tuple[float, int, int]:
        """(time.monotonic(), received bytes, received packets)."""
        for reading in self._reader.read():
            if reading.link.name == self.device:
                return time.monotonic(), reading.counters[_RX_BYTES], reading.counters[_RX_PACKETS]
        raise RuntimeError(f"no interface {self.device}")

    def close(self) -> None:
        self._reader.close()


class Pair(NamedTuple):
    off_bps: float
    on_bps: float
    off_pps: float
    on_pps: float


def interleave(counter: ReceiveCounter, turn_on: Callable[[], None], turn_off: Callable[[], None],
               pairs: int, window: float, settle: float = 0.1,
               after_on_window: Callable[[], None] | None = None) -> list[Pair]:
    """``pairs`` pairs of windows without and with the hook; the hook is off when this returns.

    ``settle`` seconds pass after each switch before the window opens (the stream's queues and the
    CPU's caches adjust); ``after_on_window`` runs after each window with the hook on, outside the
    timing (a scrape, say, so the hook's maps stay as a live exporter keeps them).
    """
    results = []
    for index in range(pairs):
        rates = {}
        for on in ((False, True) if index % 2 == 0 else (True, False)):
            (turn_on if on else turn_off)()
            time.sleep(settle)
            start, start_bytes, start_packets = counter.read()
            time.sleep(window)
            end, end_bytes, end_packets = counter.read()
            elapsed = end - start
            rates[on] = ((end_bytes - start_bytes) * 8 / elapsed, (end_packets - start_packets) / elapsed)
            if on and after_on_window:
                after_on_window()
        results.append(Pair(rates[False][0], rates[True][0], rates[False][1], rates[True][1]))
    turn_off()
    return results


class Ratio(NamedTuple):
    median: float
    low: float   # distribution-free 95% confidence interval of the median
    high: float


def paired_ratio(pairs: list[Pair], packets: bool = False) -> Ratio:
    """Median of on/off over the pairs, with a 95% confidence interval from order statistics.

    The median, not the mean: on a shared VM a window now and then loses a third of its rate to a
    neighbour, and such outliers would drag a mean (and widen a t-interval) either way.
    """
    ratios = sorted((pair.on_pps / pair.off_pps) if packets else (pair.on_bps / pair.off_bps)
                    for pair in pairs if (pair.off_pps if packets else pair.off_bps) > 0)
    count = len(ratios)
    # the interval between the k-th smallest and k-th largest ratio holds the median with ~95%
    # probability (normal approximation to Binomial(count, 1/2))
    k = max(0, int((count - 1.96 * count ** 0.5) / 2))
    return Ratio(statistics.median(ratios), ratios[k], ratios[count - 1 - k])


def ratio_cells(ratio: Ratio) -> str:
    """Markdown cells: the median ratio, its 95% interval, and the loss it means."""
    return (f"{ratio.median:.3f} | {ratio.low:.3f}-{ratio.high:.3f} | "
            f"{(1 - ratio.median) * 100:+.1f}% ({(1 - ratio.high) * 100:+.1f}% to {(1 - ratio.low) * 100:+.1f}%)")
