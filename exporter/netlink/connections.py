"""Every TCP connection of this network namespace in full, over sock_diag: addresses, ports, state, the
socket cookie, the whole ``struct tcp_info``, the congestion control name and the socket's memory.

For the per-connection archive (its own clock, not the scrape path): a dump of every connection, or exact
lookups (SOCK_DIAG_BY_FAMILY without NLM_F_DUMP, by 4-tuple and cookie) of the ones named, many to a
sendmsg; a connection that changed is decoded in full, its addresses only when asked for. Layouts: ``struct inet_diag_req_v2``, ``struct inet_diag_msg`` and the ``INET_DIAG_*`` attributes of
include/uapi/linux/inet_diag.h; ``SK_MEMINFO_*`` of include/uapi/linux/sock_diag.h.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import NamedTuple

from .core import NETLINK_SOCK_DIAG, NetlinkSocket, attr_string
from .tcp_info import TIMER_BYTES

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
INET_DIAG_CONG = 4
INET_DIAG_SKMEMINFO = 7
# Every state a connection passes through (1 ESTABLISHED .. 12 NEW_SYN_RECV) but LISTEN (10).
CONNECTION_STATES = sum(1 << state for state in range(1, 13) if state != 10)
# SK_MEMINFO_* (include/uapi/linux/sock_diag.h), u32 each, in this order.
MEMINFO_NAMES = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc", "wmem_queued", "optmem",
                 "backlog", "drops")

_REQUEST = struct.Struct("=BBBxI48x")
# The attributes asked for: tcp_info, the congestion control and the socket memory (idiag_ext bits).
EXTENSIONS = 1 << (INET_DIAG_INFO - 1) | 1 << (INET_DIAG_CONG - 1) | 1 << (INET_DIAG_SKMEMINFO - 1)
# An exact request: struct nlmsghdr and struct inet_diag_req_v2 with the socket's id.
REQUEST_SIZE = 16 + _REQUEST.size
_HEADER = struct.Struct("=IH")  # nlmsghdr's len and type
_BATCH = 128  # requests per sendmsg: their answers (~1.5 KiB of buffer each) fit the socket's buffer at once
_ANSWERS_SOCKET_BUFFER = 1 << 20
_ANSWERS_BUFFER = 1 << 16
# inet_diag_msg: family, state, timer, retrans; sockid {be16 sport, be16 dport, be32 src[4], be32 dst[4],
# u32 if, u32 cookie[2]}; expires, rqueue, wqueue, uid, inode: 72 bytes.
_MESSAGE_SIZE = 72
_COOKIE_OFFSET = 44
_ATTR = struct.Struct("=HH")
TIMERS_START, TIMERS_END = TIMER_BYTES  # tcp_info's last_* times


class Connection(NamedTuple):
    cookie: int
    family: int  # socket.AF_INET or AF_INET6
    state: int  # include/net/tcp_states.h
    tcp_info: bytes
    congestion: str
    meminfo: tuple[int, ...]
    identity: bytes  # inet_diag_sockid's ports and addresses as sent: decoded only when asked for

    @property
    def local_port(self) -> int:
        return int.from_bytes(self.identity[0:2], "big")

    @property
    def remote_port(self) -> int:
        return int.from_bytes(self.identity[2:4], "big")

    @property
    def local_address(self) -> str:
        return _address(self.family, self.identity[4:20])

    @property
    def remote_address(self) -> str:
        return _address(self.family, self.identity[20:36])


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    address = ipaddress.IPv6Address(raw)
    if address.ipv4_mapped is not None:  # RFC 5952 section 5
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


class _Shape:
    """Where a message of one attribute layout keeps what change detection compares and what a
    Connection holds: read with one Struct (state, cookie, every attribute header) and slices; used only
    while every header matches."""

    __slots__ = ("unpack_from", "headers", "cut", "resume", "info", "congestion", "meminfo")

    def __init__(self, chain: list[tuple[int, int]], info: int):
        layout, position = "=", 0
        for field_offset, fmt in [(1, "B"), (_COOKIE_OFFSET, "Q"), *((at, "I") for at, _ in chain)]:
            layout += f"{field_offset - position}x{fmt}" if field_offset > position else fmt
            position = field_offset + struct.calcsize(fmt)
        self.unpack_from = struct.Struct(layout).unpack_from
        self.headers = tuple(header for _, header in chain)
        # Compared: the queues, uid and inode, the attributes up to tcp_info's timers (tcp_info begins with
        # the state), and all after them (the socket memory before tcp_info, the congestion control after
        # it). Not compared: idiag_timer, idiag_retrans and idiag_expires (timer state) and tcp_info's
        # last_* times, which move every ms.
        self.cut = info + TIMERS_START
        self.resume = info + TIMERS_END
        self.info = self.congestion = None  # (start, end) in the message
        self.meminfo = None  # (start, Struct)
        for at, header in chain:
            length, attr = header & 0xFFFF, header >> 16 & 0x3FFF
            if attr == INET_DIAG_INFO:
                self.info = (at + 4, at + length)
            elif attr == INET_DIAG_CONG:
                self.congestion = (at + 4, at + length)
            elif attr == INET_DIAG_SKMEMINFO:
                self.meminfo = (at + 4, struct.Struct(f"={min((length - 4) // 4, len(MEMINFO_NAMES))}I"))

    def connection(self, view: memoryview, offset: int, cookie: int, state: int) -> Connection:
        start, end = self.info
        info = bytes(view[offset + start:offset + end])
        congestion = ""
        if self.congestion is not None:
            start, end = self.congestion
            raw = bytes(view[offset + start:offset + end])
            congestion = _CONGESTION_NAMES.get(raw)
            if congestion is None:
                if len(_CONGESTION_NAMES) >= 64:  # the kernel's few algorithms; never more than this
                    _CONGESTION_NAMES.clear()
                congestion = _CONGESTION_NAMES[raw] = attr_string(raw, 0, len(raw))
        meminfo = ()
        if self.meminfo is not None:
            start, layout = self.meminfo
            meminfo = layout.unpack_from(view, offset + start)
        return _new_connection(Connection, (cookie, view[offset], state, info, congestion, meminfo,
                                            bytes(view[offset + 4:offset + 40])))


_CONGESTION_NAMES: dict[bytes, str] = {}  # INET_DIAG_CONG's bytes -> the name
_new_connection = tuple.__new__  # a Connection of its fields in order, without NamedTuple's Python __new__


def _chain(buf, offset: int, end: int) -> tuple[list[tuple[int, int]], int | None]:
    """The attribute headers (offset in the message, ``length | type << 16``) and tcp_info's offset."""
    chain, info, position = [], None, offset + _MESSAGE_SIZE
    while position + 4 <= end:
        length, attr = _ATTR.unpack_from(buf, position)
        if length < 4 or position + length > end:
            break
        chain.append((position - offset, length | attr << 16))
        if attr & 0x3FFF == INET_DIAG_INFO and length - 4 >= TIMERS_END:
            info = position + 4 - offset
        position += (length + 3) & ~3
    return chain, info


class ConnectionReader:
    """Reads the TCP connections (not listeners) of the network namespace it was created in: all of them
    (``changed``: a dump) or the ones the kernel's change detection named (``answers``: exact lookups)."""

    def __init__(self):
        self._netlink = NetlinkSocket(NETLINK_SOCK_DIAG)
        self._requests = tuple(_REQUEST.pack(family, socket.IPPROTO_TCP, EXTENSIONS, CONNECTION_STATES)
                               for family in (socket.AF_INET, socket.AF_INET6))
        self._shapes: dict[int, _Shape] = {}  # by message length
        self._exact = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            self._exact.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _ANSWERS_SOCKET_BUFFER)
            self._exact.bind((0, 0))
        except BaseException:
            self.close()
            raise
        self._buffer = bytearray(_ANSWERS_BUFFER)

    def changed(self, fingerprints: dict[int, bytes]) -> tuple[list[Connection], set[int]]:
        """The connections with tcp_info whose fingerprint (everything but timers) differs from
        ``fingerprints[cookie]``, decoded in full, and the cookies of every connection with tcp_info seen.
        ``fingerprints`` is updated in place. Unchanged connections cost a Struct read and a comparison."""
        changed: list[Connection] = []
        present: set[int] = set()
        parse = self._comparer(fingerprints, changed, present)
        for request in self._requests:
            self._netlink.dump(SOCK_DIAG_BY_FAMILY, request,
                               lambda kind, buf, offset, end: parse(buf, memoryview(buf), offset, end))
        return changed, present

    def answers(self, requests: bytes, fingerprints: dict[int, bytes]) -> list[Connection]:
        """What ``changed`` returns, for the connections ``requests`` ask for: ready-made exact sock_diag
        requests (``REQUEST_SIZE`` bytes each, from tcp_archive_changes.h), sent ``_BATCH`` to one
        sendmsg. The kernel answers every message of a buffer within the sendmsg, so the answers are
        queued when it returns. A connection that closed meanwhile has no answer (an NLMSG_ERROR)."""
        changed: list[Connection] = []
        parse = self._comparer(fingerprints, changed, None)
        exact, buf = self._exact, self._buffer
        view, unpack = memoryview(buf), _HEADER.unpack_from
        requests = memoryview(requests)
        for start in range(0, len(requests), _BATCH * REQUEST_SIZE):
            exact.send(requests[start:start + _BATCH * REQUEST_SIZE])
            while True:
                try:
                    received = exact.recv_into(view, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError as error:  # ENOBUFS: answers lost, which _BATCH keeps from happening
                    if error.errno != errno.ENOBUFS:
                        raise
                    continue
                offset = 0
                while offset + 16 <= received:
                    length, kind = unpack(buf, offset)
                    if length < 16 or offset + length > received:
                        break
                    if kind == SOCK_DIAG_BY_FAMILY:
                        parse(buf, view, offset + 16, offset + length)
                    offset += (length + 3) & ~3
        return changed

    def _comparer(self, fingerprints: dict[int, bytes], changed: list[Connection], present: set[int] | None):
        """``parse(buf, view, offset, end)`` of one inet_diag_msg (``view``: a memoryview of ``buf``): appends
        it to ``changed`` (decoded) if its fingerprint differs from ``fingerprints[cookie]`` (then updated),
        its cookie to ``present``."""
        shapes = self._shapes
        recall = fingerprints.get
        seen = present.add if present is not None else None

        def parse(buf, view, offset, end):
            shape = shapes.get(end - offset)
            if shape is not None:
                values = shape.unpack_from(buf, offset)
                if values[2:] != shape.headers:
                    shape = None
            if shape is None:
                if end - offset < _MESSAGE_SIZE:
                    return
                chain, info = _chain(buf, offset, end)
                if info is None:  # no tcp_info (TIME_WAIT, request sockets): nothing to archive
                    return
                shape = shapes[end - offset] = _Shape(chain, info)
                values = shape.unpack_from(buf, offset)
            cookie = values[1]
            if seen is not None:
                seen(cookie)
            fingerprint = b"".join((view[offset + 60:offset + shape.cut], view[offset + shape.resume:end]))
            if recall(cookie) != fingerprint:
                fingerprints[cookie] = fingerprint
                changed.append(shape.connection(view, offset, cookie, values[0]))

        return parse

    def close(self) -> None:
        self._netlink.close()
        self._exact.close()
