"""link: every interface's counters and attributes, read over rtnetlink at scrape time."""

from __future__ import annotations

import re
from itertools import compress
from typing import NamedTuple

from ..exposition import Family, Labels, Rows, Template
from ..netlink.rtnl import STATS64_FIELDS, Link, LinkReader
from .. import flags
from . import Collector, Flags, Registration, namespaces

# rtnl_link_stats64 field -> (metric name without netio_network_ and _total, help)
COUNTERS = {
    "rx_bytes": ("receive_bytes", "Bytes received (rx_bytes)."),
    "rx_packets": ("receive_packets", "Packets received (rx_packets)."),
    "rx_errors": ("receive_errors", "Receive errors (rx_errors)."),
    "rx_dropped": ("receive_dropped", "Received packets dropped (rx_dropped)."),
    "tx_bytes": ("transmit_bytes", "Bytes transmitted (tx_bytes)."),
    "tx_packets": ("transmit_packets", "Packets transmitted (tx_packets)."),
    "tx_errors": ("transmit_errors", "Transmit errors (tx_errors)."),
    "tx_dropped": ("transmit_dropped", "Packets dropped on transmit (tx_dropped)."),
    "multicast": ("receive_multicast", "Multicast packets received (multicast)."),
    "collisions": ("transmit_collisions", "Collisions on transmit (collisions)."),
    "rx_length_errors": ("receive_length_errors", "Receive length errors (rx_length_errors)."),
    "rx_over_errors": ("receive_over_errors", "Receive ring overruns (rx_over_errors)."),
    "rx_crc_errors": ("receive_crc_errors", "Received frames with CRC errors (rx_crc_errors)."),
    "rx_frame_errors": ("receive_frame_errors", "Received frame alignment errors (rx_frame_errors)."),
    "rx_fifo_errors": ("receive_fifo_errors", "Receive FIFO errors (rx_fifo_errors)."),
    "rx_missed_errors": ("receive_missed_errors", "Packets missed by the host (rx_missed_errors)."),
    "tx_aborted_errors": ("transmit_aborted_errors", "Aborted transmissions (tx_aborted_errors)."),
    "tx_carrier_errors": ("transmit_carrier_errors", "Transmit carrier errors (tx_carrier_errors)."),
    "tx_fifo_errors": ("transmit_fifo_errors", "Transmit FIFO errors (tx_fifo_errors)."),
    "tx_heartbeat_errors": ("transmit_heartbeat_errors", "Transmit heartbeat errors (tx_heartbeat_errors)."),
    "tx_window_errors": ("transmit_window_errors", "Late collisions (tx_window_errors)."),
    "rx_compressed": ("receive_compressed", "Compressed packets received (rx_compressed)."),
    "tx_compressed": ("transmit_compressed", "Compressed packets transmitted (tx_compressed)."),
    "rx_nohandler": ("receive_nohandler", "Packets received with no protocol handler (rx_nohandler)."),
    "rx_otherhost_dropped": ("receive_otherhost_dropped",
                             "Packets dropped for another host's address (rx_otherhost_dropped)."),
}
assert set(COUNTERS) == set(STATS64_FIELDS)

_PREFIX = "netio_network_"


class DeviceFilter:
    """Full-match include or exclude regex over interface names; no regex selects everything."""

    def __init__(self, include: str | None = None, exclude: str | None = None):
        if include is not None and exclude is not None:
            raise ValueError("device include and exclude are mutually exclusive")
        self._include = re.compile(include) if include is not None else None
        self._exclude = re.compile(exclude) if exclude is not None else None

    def __call__(self, name: str) -> bool:
        if self._include is not None:
            return self._include.fullmatch(name) is not None
        if self._exclude is not None:
            return self._exclude.fullmatch(name) is None
        return True


def _built_families() -> list[Family]:
    """The counters in STATS64_FIELDS order, then up, mtu, carrier changes and info."""
    return [*(Family.counter(_PREFIX + COUNTERS[field][0], COUNTERS[field][1]) for field in STATS64_FIELDS),
            Family.gauge(_PREFIX + "up", "Whether the interface's operational state is up (1) or not (0)."),
            Family.gauge(_PREFIX + "mtu_bytes", "The interface's MTU."),
            Family.counter(_PREFIX + "carrier_changes", "Times the interface's carrier changed."),
            Family.info(_PREFIX + "info",
                        "Interface attributes as labels: MAC address, operstate, alias, kind; the value is 1.")]


_FAMILIES = Template(_built_families())
_COUNTERS = len(STATS64_FIELDS)


class _Layout(NamedTuple):
    """What a scrape derives from the interfaces' attributes alone; kept while they are unchanged."""
    links: tuple[Link, ...]  # every interface, selected or not
    selected: tuple[bool, ...]
    rows: Rows  # ((("device", name),), ...) of the selected interfaces
    up: tuple[int, ...]
    mtu: tuple[int, ...]
    carrier_rows: Rows
    carrier: tuple[int, ...]
    info_rows: Rows


def _layout(links: tuple[Link, ...], select: DeviceFilter, netns: Labels = ()) -> _Layout:
    selected = tuple(select(link.name) for link in links)
    chosen = list(compress(links, selected))
    rows = tuple(netns + (("device", link.name),) for link in chosen)
    with_carrier = [link.carrier_changes is not None for link in chosen]
    return _Layout(
        links, selected, rows,
        up=tuple(1 if link.operstate == "up" else 0 for link in chosen),
        mtu=tuple(link.mtu for link in chosen),
        carrier_rows=tuple(compress(rows, with_carrier)),
        carrier=tuple(link.carrier_changes for link in compress(chosen, with_carrier)),
        info_rows=tuple(netns + (("device", link.name), ("address", link.address), ("operstate", link.operstate),
                                 ("ifalias", link.ifalias), ("kind", link.kind)) for link in chosen))


class LinkCollector(Collector):
    """Families in columns: one label-rows tuple per layout, shared by every column and by every
    scrape until an interface's attributes change.

    With ``namespaces`` (``--collector.netns``) the same families also cover every other network
    namespace, each with a reader made inside it and a ``netns`` label before ``device``; a namespace
    that vanished, or cannot be read, has no series.
    """

    name = "link"

    def __init__(self, device_filter: DeviceFilter | None = None, namespaces=None):
        self._select = device_filter or DeviceFilter()
        self._reader = LinkReader()
        self._namespaces = namespaces
        self._layouts: dict[int | None, _Layout] = {}  # by namespace inode; None: our own

    def close(self) -> None:
        self._reader.close()

    def describe_families(self) -> list[Family]:
        return _built_families()

    def read(self) -> list[Family]:
        families = _FAMILIES.new()
        self._add(self._reader.read(), None, (), families)
        if self._namespaces is not None:
            alive = {None}
            for namespace, readings in self._namespaces.read_each("link", LinkReader, LinkReader.read):
                alive.add(namespace.inode)
                self._add(readings, namespace.inode, (("netns", namespace.label),), families)
            for inode in [inode for inode in self._layouts if inode not in alive]:
                del self._layouts[inode]
        return families

    def _add(self, readings: list, key: int | None, netns: Labels, families: list[Family]) -> None:
        links = tuple(reading.link for reading in readings)
        layout = self._layouts.get(key)
        if layout is None or links != layout.links:  # Link objects are kept while unchanged: compared by identity
            layout = self._layouts[key] = _layout(links, self._select, netns)
        counters = [reading.counters for reading in compress(readings, layout.selected)]
        rows = layout.rows
        up, mtu, carrier, info = families[_COUNTERS:]
        if len(set(map(len, counters))) == 1:  # every interface sent the same fields: one column each
            for family, values in zip(families, zip(*counters)):  # zip stops at the last counter
                family.add_column(rows, values)
        else:  # fields a kernel did not send for an interface are absent, not zero
            for index, family in enumerate(families[:_COUNTERS]):
                has = [len(values) > index for values in counters]
                family.add_column(tuple(compress(rows, has)), [values[index] for values in compress(counters, has)])
        up.add_column(rows, layout.up)
        mtu.add_column(rows, layout.mtu)
        carrier.add_column(layout.carrier_rows, layout.carrier)
        info.add_column(layout.info_rows, (1,) * len(rows))


def _add_arguments(options: Flags) -> None:
    devices = options.exclusive()
    devices.add("--collector.link.device-include", dest="device_include", type=flags.regex, metavar="RE",
                help="only interfaces whose name fully matches RE (for /metrics and the jsonl log)")
    devices.add("--collector.link.device-exclude", dest="device_exclude", type=flags.regex, metavar="RE",
                help="all interfaces but those whose name fully matches RE")


REGISTRATION = Registration(
    name="link", help="interface counters and attributes over rtnetlink", log_mode=True,
    add_arguments=_add_arguments,
    build=lambda args: LinkCollector(DeviceFilter(args.device_include, args.device_exclude), namespaces(args)))
