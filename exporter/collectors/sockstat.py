"""sockstat: sockets in use per protocol and their memory, from /proc/net/sockstat and sockstat6.

Gauges labelled ``protocol`` as the kernel spells it (TCP, UDP, UDPLITE, RAW, FRAG, TCP6, ...);
a protocol has only the fields its line holds.
"""

from __future__ import annotations

import resource

from ..exposition import Family
from ..procfs.sockstat import FIELDS, read_sockstat
from . import Collector, Registration

_PREFIX = "netio_sockstat_"
_HELP = {
    "inuse": "Sockets in use (FRAG, FRAG6: reassembly queues) in this network namespace, from /proc/net/sockstat{,6}.",
    "orphan": "TCP sockets no longer attached to a file descriptor, kernel-wide, from /proc/net/sockstat.",
    "tw": "TCP sockets in TIME_WAIT in this network namespace, from /proc/net/sockstat.",
    "alloc": "TCP sockets allocated, in any state, kernel-wide, from /proc/net/sockstat.",
    "memory_bytes": "Memory the protocol's buffers use, kernel-wide (TCP, UDP: pages times the page size; "
                    "FRAG, FRAG6: this namespace's reassembly queues), from /proc/net/sockstat{,6}.",
}
assert tuple(_HELP) == FIELDS


def _families() -> tuple[Family, dict[str, Family]]:
    return (Family.gauge(_PREFIX + "sockets_used",
                         "Sockets of every family in this network namespace, from /proc/net/sockstat."),
            {field: Family.gauge(_PREFIX + field, help_) for field, help_ in _HELP.items()})


class SockstatCollector(Collector):
    name = "sockstat"

    def __init__(self, net_dir: str = "/proc/net"):
        self._net_dir = net_dir
        self._page_size = resource.getpagesize()

    def describe_families(self) -> list[Family]:
        used, fields = _families()
        return [used, *fields.values()]

    def read(self) -> list[Family]:
        stat = read_sockstat(self._net_dir, self._page_size)
        used, fields = _families()
        families = []
        if stat.sockets_used is not None:
            used.add((), stat.sockets_used)
            families.append(used)
        for field, family in fields.items():
            for protocol, values in stat.protocols.items():
                if field in values:
                    family.add((("protocol", protocol),), values[field])
            if family.samples:
                families.append(family)
        return families


REGISTRATION = Registration(
    name="sockstat", help="sockets in use and their memory from /proc/net/sockstat and sockstat6",
    build=lambda args: SockstatCollector())
