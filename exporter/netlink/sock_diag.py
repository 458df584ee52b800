"""TCP sockets and their ``struct tcp_info`` over sock_diag (inet_diag), standard library only.

One ``SOCK_DIAG_BY_FAMILY`` dump per address family (AF_INET, AF_INET6) over a NETLINK_SOCK_DIAG
socket, every TCP state, requesting ``INET_DIAG_INFO``. Layouts follow the kernel UAPI headers:
``struct inet_diag_req_v2``, ``struct inet_diag_msg`` and the ``INET_DIAG_*`` attribute numbers from
include/uapi/linux/inet_diag.h; ``struct tcp_info`` from include/uapi/linux/tcp.h; the TCP state
numbers from include/net/tcp_states.h.

The parser is on the scrape's hot path (tens of thousands of sockets), so it decodes only what every
socket needs (state, local port, cookie, RTT) with one precompiled ``struct.Struct`` per attribute
layout, hands the cumulative counters over as one ``bytes`` snapshot that ``decode_counters`` turns
into numbers only when a socket's snapshot changed, and calls back per socket instead of building an
object and a list of every socket.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from typing import NamedTuple

from .core import NETLINK_SOCK_DIAG, NLM_F_DUMP_INTR, DumpInterrupted, NetlinkSocket

SOCK_DIAG_BY_FAMILY = 20

# include/net/tcp_states.h
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12  # request sockets; inet_diag reports them as TCP_SYN_RECV
# 13 is TCP_BOUND_INACTIVE (bound, never listened or connected): not a connection, not requested.
ALL_CONNECTION_STATES = sum(1 << state for state in range(TCP_ESTABLISHED, TCP_NEW_SYN_RECV + 1))

# State names as the metric contract spells them (ss's names, lower case).
STATE_NAMES = {
    TCP_ESTABLISHED: "established", TCP_SYN_SENT: "syn_sent", TCP_SYN_RECV: "syn_recv",
    TCP_FIN_WAIT1: "fin_wait1", TCP_FIN_WAIT2: "fin_wait2", TCP_TIME_WAIT: "time_wait",
    TCP_CLOSE: "close", TCP_CLOSE_WAIT: "close_wait", TCP_LAST_ACK: "last_ack",
    TCP_LISTEN: "listen", TCP_CLOSING: "closing", TCP_NEW_SYN_RECV: "syn_recv",
}

# include/uapi/linux/inet_diag.h: the response attribute with struct tcp_info; bit (type - 1) of
# the request's idiag_ext asks for it.
INET_DIAG_INFO = 2

# struct inet_diag_req_v2 { u8 sdiag_family; u8 sdiag_protocol; u8 idiag_ext; u8 pad;
#                           u32 idiag_states; struct inet_diag_sockid id; }  (id: 48 bytes, zero = any)
_REQUEST = struct.Struct("=BBBxI48x")

# struct inet_diag_msg { u8 idiag_family, idiag_state, idiag_timer, idiag_retrans;
#   struct inet_diag_sockid id { be16 sport; be16 dport; be32 src[4]; be32 dst[4]; u32 if; u32 cookie[2]; };
#   u32 idiag_expires, idiag_rqueue, idiag_wqueue, idiag_uid, idiag_inode; }       72 bytes
_MSG_SIZE = 72
_STATE_OFFSET = 1
_SPORT_OFFSET = 4  # network byte order
_COOKIE_OFFSET = 44  # cookie[0], cookie[1]: read as one opaque 64-bit value, unique per socket
_MSG_HEAD = struct.Struct("=xB2xH38xQ")  # idiag_state, idiag_sport, idiag_cookie
_SWAP_PORT = sys.byteorder == "little"  # idiag_sport is big-endian; the Structs read native order
_ATTR = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF
# The low byte of nlmsghdr.nlmsg_flags, relative to the payload: the header (len u32, type u16,
# flags u16, seq u32, pid u32) is the 16 bytes before it.
_FLAGS_LOW_BYTE = -10 if sys.byteorder == "little" else -9

# struct tcp_info (include/uapi/linux/tcp.h; offsets checked with offsetof against the 6.1 UAPI
# header): (name, offset, struct format).
TCP_INFO_RTT = ("rtt", 68, "I")  # tcpi_rtt: smoothed RTT in microseconds, a gauge
# The cumulative counters the metrics use, by offset. A kernel sends a prefix of struct tcp_info (older
# kernels a shorter one); a counter beyond what it sends is absent, never zero.
TCP_INFO_COUNTERS = (
    ("total_retrans", 100, "I"),   # tcpi_total_retrans: segments retransmitted (32-bit)
    ("bytes_acked", 120, "Q"),     # tcpi_bytes_acked (Linux 4.1)
    ("bytes_received", 128, "Q"),  # tcpi_bytes_received (4.1)
    ("segs_out", 136, "I"),        # tcpi_segs_out (4.2, 32-bit)
    ("segs_in", 140, "I"),         # tcpi_segs_in (4.2, 32-bit)
    ("busy_time", 168, "Q"),       # tcpi_busy_time: microseconds busy sending data (4.10)
    ("rwnd_limited", 176, "Q"),    # tcpi_rwnd_limited: microseconds limited by the receive window (4.10)
    ("sndbuf_limited", 184, "Q"),  # tcpi_sndbuf_limited: microseconds limited by the send buffer (4.10)
    ("bytes_sent", 200, "Q"),      # tcpi_bytes_sent (4.19)
    ("bytes_retrans", 208, "Q"),   # tcpi_bytes_retrans (4.19)
)
TCP_INFO_COUNTER_NAMES = tuple(name for name, _, _ in TCP_INFO_COUNTERS)
_SNAPSHOT_START = TCP_INFO_COUNTERS[0][1]
# A tcp_info too short to hold the RTT and the first counter (no kernel since 2.6 sends one) is treated
# as no tcp_info at all.
_MIN_INFO = _SNAPSHOT_START + 4


def _counter_ends(info_length: int) -> list[int]:
    return [offset + struct.calcsize(fmt) for _, offset, fmt in TCP_INFO_COUNTERS
            if offset + struct.calcsize(fmt) <= info_length]


def _snapshot_length(info_length: int) -> int:
    """Bytes of the counter snapshot a tcp_info of ``info_length`` bytes gives: through its last counter."""
    ends = _counter_ends(info_length)
    return ends[-1] - _SNAPSHOT_START if ends else 0


def _snapshot_struct(length: int) -> struct.Struct:
    """The Struct of a snapshot of ``length`` bytes: it yields the counters the snapshot holds, in table order."""
    layout, position = "=", _SNAPSHOT_START
    for _, offset, fmt in TCP_INFO_COUNTERS:
        if offset + struct.calcsize(fmt) - _SNAPSHOT_START > length:
            break
        layout += f"{offset - position}x{fmt}" if offset > position else fmt
        position = offset + struct.calcsize(fmt)
    return struct.Struct(layout)


def _kernel_tcp_info_length() -> int:
    """The size of this kernel's struct tcp_info, from getsockopt(TCP_INFO) on an unconnected socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return len(probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024))


class TcpSocket(NamedTuple):
    """One socket of a dump, decoded (for tests and tools; a scrape uses visit_tcp_sockets)."""

    cookie: int
    state: int
    local_port: int
    rtt: int | None  # microseconds; None without tcp_info
    counters: tuple[int, ...] | None  # values of TCP_INFO_COUNTER_NAMES[:len(counters)]; None without tcp_info


class SockDiagReader:
    """Dumps every TCP socket of the current network namespace. Safe to share between threads."""

    COLUMN_BATCH = 512  # counter_columns decodes this many snapshots fastest (one precompiled Struct)

    def __init__(self):
        self._netlink = NetlinkSocket(NETLINK_SOCK_DIAG)
        self._requests = tuple(
            _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), ALL_CONNECTION_STATES)
            for family in (socket.AF_INET, socket.AF_INET6))
        self._shapes: dict[tuple, _Shape] = {}
        self._last_shape = [_Shape.never()]
        self.snapshot_decoders = {length: _snapshot_struct(length).unpack
                                  for length in {0, *(end - _SNAPSHOT_START for end in _counter_ends(1 << 16))}}
        """Snapshot length -> the function that decodes a snapshot of that length (see decode_counters)."""
        info_length = _kernel_tcp_info_length()
        self.counter_names = TCP_INFO_COUNTER_NAMES[:len(_counter_ends(info_length))]
        """The counters of TCP_INFO_COUNTER_NAMES this kernel's tcp_info carries."""
        self._snapshot_length = _snapshot_length(info_length)
        self._snapshot_struct = _snapshot_struct(self._snapshot_length) if self._snapshot_length else None
        self._batch_struct = struct.Struct("=" + self._snapshot_struct.format[1:] * self.COLUMN_BATCH) \
            if self._snapshot_struct else None

    def close(self) -> None:
        self._netlink.close()

    def decode_counters(self, snapshot: bytes) -> tuple[int, ...]:
        """The counters in a snapshot: values of TCP_INFO_COUNTER_NAMES[:len(result)]."""
        return self.snapshot_decoders[len(snapshot)](snapshot)

    def counter_columns(self, snapshots: list[bytes]) -> list[tuple[int, ...]] | None:
        """The counters of many snapshots column by column: one tuple per counter of ``counter_names``.

        None if some snapshot is not of this kernel's length (decode those one by one instead).
        """
        blob = b"".join(snapshots)
        if self._snapshot_struct is None or len(blob) != self._snapshot_length * len(snapshots):
            return None
        width = len(self.counter_names)
        if len(snapshots) == self.COLUMN_BATCH:  # one flat tuple, sliced into columns
            values = self._batch_struct.unpack(blob)
            return [values[index::width] for index in range(width)]
        return list(zip(*self._snapshot_struct.iter_unpack(blob))) or [()] * width

    def visit_tcp_sockets(self, visit) -> None:
        """Call ``visit(cookie, state, local_port, rtt, snapshot)`` for every TCP socket, IPv4 then IPv6.

        ``snapshot`` is the socket's cumulative tcp_info counters as bytes, for ``decode_counters``: equal
        snapshots hold equal counters (the snapshot spans a few other fields too, so different snapshots
        may also hold equal counters). ``rtt`` is the smoothed RTT in microseconds. Both are None for a
        socket without tcp_info (TIME_WAIT, request sockets). Nothing is kept per socket.

        Raises DumpInterrupted if the kernel flags the dump as inconsistent; ``visit`` has then seen
        part of it, each socket at most once, and the caller may ask again.
        """
        dump = self._netlink.dump
        parse = self._parser(visit)
        for request in self._requests:
            dump(SOCK_DIAG_BY_FAMILY, request, parse)

    def dump_tcp_sockets(self) -> list[TcpSocket]:
        """Every TCP socket, decoded."""
        sockets: list[TcpSocket] = []
        decode = self.decode_counters

        def collect(cookie, state, port, rtt, snapshot):
            sockets.append(TcpSocket(cookie, state, port, rtt, None if snapshot is None else decode(snapshot)))

        self.visit_tcp_sockets(collect)
        return sockets

    def _parser(self, visit):
        """The per-message parser: a fast path for the attribute layout of the previous message.

        The attributes before INET_DIAG_INFO (shutdown, mark, cgroup id, sockopt, ...) are the same for
        most sockets of a dump. Once a layout is known, one precompiled Struct reads the message header,
        every attribute header up to INET_DIAG_INFO, the RTT and the counter snapshot in one call; the
        message takes the fast path only if all those attribute headers are exactly as expected, which
        proves the attribute walk would arrive at the same place. Anything else is walked.
        """
        shapes = self._shapes
        last = self._last_shape  # dumps on one NetlinkSocket are serialised, so this is never shared
        unpack_attr = _ATTR.unpack_from
        swap_port = _SWAP_PORT

        def parse(kind, buf, offset, end):
            if buf[offset + _FLAGS_LOW_BYTE] & NLM_F_DUMP_INTR:
                # The visitor has seen part of an inconsistent dump: stop rather than let the
                # NetlinkSocket's retry show it the same sockets twice.
                raise DumpInterrupted(errno.EAGAIN, "sock_diag dump interrupted by a table change")
            shape = last[0]
            if offset + shape.end <= end:
                values = shape.unpack_from(buf, offset)
                if values[3:-2] == shape.headers:
                    port = values[1]
                    if swap_port:
                        port = port >> 8 | (port & 0xFF) << 8
                    visit(values[2], values[0], port, values[-2], values[-1])
                    return None
            if end - offset < _MSG_SIZE:
                return None
            state, port, cookie = _MSG_HEAD.unpack_from(buf, offset)
            if swap_port:
                port = port >> 8 | (port & 0xFF) << 8
            chain = []
            position = offset + _MSG_SIZE
            while position + 4 <= end:
                length, attr = unpack_attr(buf, position)
                if length < 4 or position + length > end:
                    break  # truncated: what follows cannot be trusted
                chain.append((position - offset, length | attr << 16))
                if attr & _NLA_TYPE_MASK == INET_DIAG_INFO:
                    if length - 4 < _MIN_INFO:
                        break
                    key = tuple(chain)
                    shape = shapes.get(key)
                    if shape is None:
                        shape = shapes[key] = _Shape(key)
                    last[0] = shape
                    values = shape.unpack_from(buf, offset)
                    visit(cookie, state, port, values[-2], values[-1])
                    return None
                position += (length + 3) & ~3
            visit(cookie, state, port, None, None)
            return None

        return parse


class _Shape:
    """One attribute layout of a message up to and including INET_DIAG_INFO, as a single Struct.

    The Struct yields (state, sport, cookie, *attribute headers, rtt, counter snapshot); an attribute
    header is read as one native u32, ``length | type << 16``.
    """

    __slots__ = ("unpack_from", "headers", "end")

    def __init__(self, chain: tuple[tuple[int, int], ...]):
        info_offset, info_header = chain[-1]
        info = info_offset + 4
        info_length = (info_header & 0xFFFF) - 4
        snapshot = _snapshot_length(info_length)
        fields = [(_STATE_OFFSET, "B"), (_SPORT_OFFSET, "H"), (_COOKIE_OFFSET, "Q")]
        fields += [(attr_offset, "I") for attr_offset, _ in chain]
        fields += [(info + TCP_INFO_RTT[1], TCP_INFO_RTT[2]), (info + _SNAPSHOT_START, f"{snapshot}s")]
        layout, position = "=", 0
        for field_offset, fmt in fields:
            layout += f"{field_offset - position}x{fmt}" if field_offset > position else fmt
            position = field_offset + struct.calcsize(fmt)
        self.unpack_from = struct.Struct(layout).unpack_from
        self.headers = tuple(header for _, header in chain)
        self.end = info + info_length  # the message must hold the whole tcp_info

    @classmethod
    def never(cls) -> "_Shape":
        """A placeholder no message matches."""
        shape = cls.__new__(cls)
        shape.end = 1 << 62
        shape.headers = ()
        shape.unpack_from = None
        return shape
