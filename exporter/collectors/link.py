"""link: every interface's counters and attributes, read over rtnetlink at scrape time."""

from __future__ import annotations

import re

from ..exposition import Family
from ..netlink.rtnl import STATS64_FIELDS, LinkReader
from . import Collector

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


def _families() -> tuple[list[Family], dict[str, Family]]:
    counters = [Family(_PREFIX + COUNTERS[field][0], "counter", COUNTERS[field][1]) for field in STATS64_FIELDS]
    attributes = {
        "up": Family(_PREFIX + "up", "gauge", "Whether the interface's operational state is up (1) or not (0)."),
        "mtu": Family(_PREFIX + "mtu_bytes", "gauge", "The interface's MTU."),
        "carrier": Family(_PREFIX + "carrier_changes", "counter", "Times the interface's carrier changed."),
        "info": Family(_PREFIX + "info", "gauge",
                       "Interface attributes as labels: MAC address, operstate, alias, kind; the value is 1."),
    }
    return counters, attributes


class LinkCollector(Collector):
    name = "link"

    def __init__(self, device_filter: DeviceFilter | None = None):
        self._select = device_filter or DeviceFilter()
        self._reader = LinkReader()

    def close(self) -> None:
        self._reader.close()

    def describe_families(self) -> list[Family]:
        counters, attributes = _families()
        return counters + list(attributes.values())

    def read(self) -> list[Family]:
        counters, attributes = _families()
        up, mtu, carrier, info = (attributes[key].samples for key in ("up", "mtu", "carrier", "info"))
        columns = [family.samples for family in counters]
        select = self._select
        for link, values in self._reader.read():
            if not select(link.name):
                continue
            labels = (("device", link.name),)
            for column, value in zip(columns, values):
                column.append(("_total", labels, value))
            up.append(("", labels, 1 if link.operstate == "up" else 0))
            mtu.append(("", labels, link.mtu))
            if link.carrier_changes is not None:
                carrier.append(("_total", labels, link.carrier_changes))
            info.append(("", (("device", link.name), ("address", link.address), ("operstate", link.operstate),
                              ("ifalias", link.ifalias), ("kind", link.kind)), 1))
        return counters + list(attributes.values())
