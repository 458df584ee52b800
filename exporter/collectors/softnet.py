"""softnet: each CPU's packet processing, drops and squeezes from /proc/net/softnet_stat (label ``cpu``)."""

from __future__ import annotations

from ..exposition import Family, Rows
from ..procfs.softnet import COLUMNS, read_softnet
from . import Collector, Registration

_HELP = " (/proc/net/softnet_stat; the kernel's 32-bit counter wraps at 2^32)."
_FAMILIES = {
    "processed": ("counter", "Packets the CPU's NET_RX softirq processed" + _HELP),
    "dropped": ("counter", "Packets dropped because the CPU's backlog queue was full (netdev_max_backlog)" + _HELP),
    "time_squeeze": ("counter", "Times NET_RX processing stopped with work left, its budget or time used up" + _HELP),
    "received_rps": ("counter", "Inter-processor interrupts the CPU received to process packets (RPS)" + _HELP),
    "flow_limit_count": ("counter", "Packets dropped by the flow limit (net.core.flow_limit_cpu_bitmap)" + _HELP),
    "backlog_len": ("gauge", "Packets in the CPU's backlog queues (input and process queue), "
                             "from /proc/net/softnet_stat."),
}
assert [name for name, _ in COLUMNS] == list(_FAMILIES)


def _families() -> dict[str, Family]:
    return {column: Family("netio_softnet_" + column, type_, help_) for column, (type_, help_) in _FAMILIES.items()}


class SoftnetCollector(Collector):
    """The ``cpu`` label rows are kept while the kernel lists the same CPUs."""

    name = "softnet"

    def __init__(self, net_dir: str = "/proc/net"):
        self._net_dir = net_dir
        self._labels: tuple[tuple[int, ...], Rows] = ((), ())  # one attribute: scrapes may run in parallel

    def describe_families(self) -> list[Family]:
        return list(_families().values())

    def read(self) -> list[Family]:
        stat = read_softnet(self._net_dir)
        cpus, rows = self._labels
        if stat.cpus != cpus:
            rows = tuple((("cpu", str(cpu)),) for cpu in stat.cpus)
            self._labels = (stat.cpus, rows)
        families = _families()
        for column, values in stat.columns.items():
            families[column].add_column(rows, values)
        return [families[column] for column in stat.columns]  # columns this kernel lacks are absent


REGISTRATION = Registration(
    name="softnet", help="per-CPU packet processing, backlog drops and squeezes from /proc/net/softnet_stat",
    build=lambda args: SoftnetCollector())
