"""Interface counters and attributes over rtnetlink.

Counters come from an RTM_GETSTATS dump (IFLA_STATS_LINK_64, ``struct rtnl_link_stats64``);
names and attributes from RTM_GETLINK, kept current by link notifications (RTMGRP_LINK) so a
scrape costs one non-blocking read instead of a second dump.
Layouts follow include/uapi/linux/rtnetlink.h, if_link.h and if.h.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from typing import NamedTuple

from .core import NETLINK_ROUTE, NetlinkSocket, attr_string, attr_u32, iter_attrs

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_GETSTATS = 94
RTMGRP_LINK = 1

# struct ifinfomsg { u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change; }
_IFINFOMSG = struct.Struct("=BxHiII")
# struct if_stats_msg { u8 family; u8 pad1; u16 pad2; u32 ifindex; u32 filter_mask; }
_IF_STATS_MSG = struct.Struct("=BxHII")

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_EXT_MASK = 29
IFLA_CARRIER_CHANGES = 35
IFLA_INFO_KIND = 1
IFLA_STATS_LINK_64 = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3

# struct rtnl_link_stats64, in header order. A kernel sends a prefix of this list (older ones
# fewer fields); fields it does not send are absent from a reading, never zero.
STATS64_FIELDS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes",
    "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
    "multicast", "collisions",
    "rx_length_errors", "rx_over_errors", "rx_crc_errors", "rx_frame_errors",
    "rx_fifo_errors", "rx_missed_errors",
    "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors",
    "tx_heartbeat_errors", "tx_window_errors",
    "rx_compressed", "tx_compressed", "rx_nohandler", "rx_otherhost_dropped",
)
_STATS64_STRUCTS = [struct.Struct(f"={n}Q") for n in range(len(STATS64_FIELDS) + 1)]

# IF_OPER_* (RFC 2863), as /sys/class/net/<if>/operstate spells them.
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


IFF_LOOPBACK = 0x8


class Link(NamedTuple):
    index: int
    flags: int  # IFF_* of include/uapi/linux/if.h
    name: str
    address: str
    operstate: str
    mtu: int
    kind: str
    ifalias: str
    carrier_changes: int | None


class LinkReading(NamedTuple):
    link: Link
    counters: tuple[int, ...]  # values of STATS64_FIELDS[:len(counters)]


def parse_link_stats(kind: int, buf, offset: int, end: int) -> tuple[int, tuple[int, ...]] | None:
    """One RTM_NEWSTATS message -> ``(ifindex, counters)``."""
    if end - offset < _IF_STATS_MSG.size:
        return None
    ifindex = _IF_STATS_MSG.unpack_from(buf, offset)[2]
    for attr, start, length in iter_attrs(buf, offset + _IF_STATS_MSG.size, end):
        if attr == IFLA_STATS_LINK_64:
            count = min(length // 8, len(STATS64_FIELDS))
            return ifindex, _STATS64_STRUCTS[count].unpack_from(buf, start)
    return None


def format_address(raw: bytes) -> str:
    """A hardware address as /sys shows it: lowercase hex bytes joined by colons."""
    return ":".join(f"{byte:02x}" for byte in raw)


def parse_link(kind: int, buf, offset: int, end: int) -> Link | None:
    """One RTM_NEWLINK message -> Link (None for anything else)."""
    if kind != RTM_NEWLINK or end - offset < _IFINFOMSG.size:
        return None
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, offset)
    name = address = kind_name = ifalias = ""
    operstate = "unknown"
    mtu = 0
    carrier_changes = None
    for attr, start, length in iter_attrs(buf, offset + _IFINFOMSG.size, end):
        if attr == IFLA_IFNAME:
            name = attr_string(buf, start, length)
        elif attr == IFLA_ADDRESS:
            address = format_address(bytes(buf[start:start + length]))
        elif attr == IFLA_MTU:
            mtu = attr_u32(buf, start, length) or 0
        elif attr == IFLA_OPERSTATE and length >= 1:
            state = buf[start]
            operstate = OPERSTATES[state] if state < len(OPERSTATES) else "unknown"
        elif attr == IFLA_LINKINFO:
            for info, info_start, info_length in iter_attrs(buf, start, start + length):
                if info == IFLA_INFO_KIND:
                    kind_name = attr_string(buf, info_start, info_length)
        elif attr == IFLA_IFALIAS:
            ifalias = attr_string(buf, start, length)
        elif attr == IFLA_CARRIER_CHANGES:
            carrier_changes = attr_u32(buf, start, length)
    return Link(index, flags, name, address, operstate, mtu, kind_name, ifalias, carrier_changes)


def _link_event(kind: int, buf, offset: int, end: int):
    if kind == RTM_DELLINK and end - offset >= _IFINFOMSG.size:
        return kind, _IFINFOMSG.unpack_from(buf, offset)[2]
    if kind == RTM_NEWLINK:
        link = parse_link(kind, buf, offset, end)
        return (kind, link) if link is not None else None
    return None


_GETSTATS_REQUEST = _IF_STATS_MSG.pack(socket.AF_UNSPEC, 0, 0, 1 << (IFLA_STATS_LINK_64 - 1))
_GETLINK_REQUEST = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + struct.pack(
    "=HHI", 8, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def dump_links(sock: NetlinkSocket | None = None) -> list[Link]:
    """Every interface's attributes, from one RTM_GETLINK dump (on ``sock``, else a socket of its own)."""
    if sock is not None:
        return sock.dump(RTM_GETLINK, _GETLINK_REQUEST, parse_link)
    sock = NetlinkSocket(NETLINK_ROUTE)
    try:
        return dump_links(sock)
    finally:
        sock.close()


class LinkReader:
    """Reads every interface of the current network namespace: attributes and counters.

    ``read()`` is safe to call from several threads at once.
    """

    def __init__(self):
        self._dumps = NetlinkSocket(NETLINK_ROUTE)
        self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._events.bind((0, RTMGRP_LINK))  # subscribe before the first dump: no change is missed
        self._events.setblocking(False)
        self._pending = select.poll()  # POLLIN: notifications queued; POLLERR: the queue overflowed (ENOBUFS)
        self._pending.register(self._events, select.POLLIN)
        self._event_buffer = bytearray(1 << 16)
        self._links: dict[int, Link] = {}
        self._links_lock = threading.Lock()
        self._links_stale = True

    def close(self) -> None:
        self._dumps.close()
        self._events.close()

    def read(self) -> list[LinkReading]:
        """Every interface with its counters, in ifindex order."""
        stats = self._dumps.dump(RTM_GETSTATS, _GETSTATS_REQUEST, parse_link_stats)
        links = self._current_links()
        if any(ifindex not in links for ifindex, _ in stats):  # created since the last event we read
            links = self._current_links(force_dump=True)
        return [LinkReading(links[ifindex], counters) for ifindex, counters in stats if ifindex in links]

    def _current_links(self, force_dump: bool = False) -> dict[int, Link]:
        with self._links_lock:
            if self._drain_events() or force_dump or self._links_stale:
                self._links_stale = False
                self._drain_events()  # what queued before the dump is older than the dump
                self._links = {link.index: link for link in dump_links(self._dumps)}
            return self._links

    def _drain_events(self) -> bool:
        """Apply queued link notifications; True if some were lost and a full dump is needed."""
        if not self._pending.poll(0):  # most scrapes: nothing queued, and no BlockingIOError raised to say so
            return False
        view = memoryview(self._event_buffer)
        while True:
            try:
                received = self._events.recv_into(view)
            except BlockingIOError:
                return False
            except OSError as error:
                if error.errno == errno.ENOBUFS:  # the queue overflowed: events were dropped
                    self._drain_silently()
                    return True
                raise
            self._apply_events(received)

    def _drain_silently(self) -> None:
        view = memoryview(self._event_buffer)
        while True:
            try:
                self._events.recv_into(view)
            except (BlockingIOError, OSError):
                return

    def _apply_events(self, received: int) -> None:
        buf = self._event_buffer
        offset = 0
        while offset + 16 <= received:
            length, kind = struct.unpack_from("=IH", buf, offset)
            if length < 16 or offset + length > received:
                return
            event = _link_event(kind, buf, offset + 16, offset + length)
            if event is not None:
                if event[0] == RTM_NEWLINK:
                    self._links[event[1].index] = event[1]
                else:
                    self._links.pop(event[1], None)
            offset += (length + 3) & ~3
