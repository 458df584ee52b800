"""Netlink sockets and attribute walking with the standard library only.

Message and attribute layout follow include/uapi/linux/netlink.h:
``struct nlmsghdr`` (len, type, flags, seq, pid) and ``struct nlattr`` (len, type),
both aligned to 4 bytes.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

_NLA_TYPE_MASK = ~(1 << 15 | 1 << 14) & 0xFFFF  # drop NLA_F_NESTED, NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")

_RECV_BUFFER = 1 << 16  # the kernel fills at most 32 KiB per dump message batch
_SOCKET_BUFFER = 1 << 20
_DUMP_RETRIES = 3


class DumpInterrupted(OSError):
    """The kernel flagged a dump as inconsistent (NLM_F_DUMP_INTR) on every retry."""


def align(length: int) -> int:
    return (length + 3) & ~3


def iter_attrs(buf, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, payload_offset, payload_length)`` for each attribute in ``buf[offset:end]``.

    A truncated attribute ends the walk: what follows it cannot be trusted.
    """
    unpack = _ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(buf, offset)
        if length < 4 or offset + length > end:
            return
        yield kind & _NLA_TYPE_MASK, offset + 4, length - 4
        offset += (length + 3) & ~3


def attr_string(buf, offset: int, length: int) -> str:
    """A NUL-terminated string attribute (NLA_STRING / NLA_NUL_STRING)."""
    raw = bytes(buf[offset:offset + length])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def attr_u32(buf, offset: int, length: int) -> int | None:
    return _U32.unpack_from(buf, offset)[0] if length >= 4 else None


class NetlinkSocket:
    """One netlink socket used for request/dump exchanges, safe to share between threads.

    Dumps on one socket are serialised by a lock; the kernel answers one dump at a time
    per socket anyway.
    """

    def __init__(self, protocol: int):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        self._sock.bind((0, 0))
        self._buffer = bytearray(_RECV_BUFFER)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def dump(self, msg_type: int, payload: bytes, parse) -> list:
        """Send a dump request and return ``[parse(type, buf, offset, end) ...]`` for its messages.

        ``parse`` sees each message payload in place (no copy); a ``None`` result is dropped.
        A dump the kernel marks as interrupted (the table changed under it) is retried.
        """
        with self._lock:
            for _ in range(_DUMP_RETRIES):
                results, interrupted = self._dump_once(msg_type, payload, parse)
                if not interrupted:
                    return results
        raise DumpInterrupted(errno.EAGAIN, "netlink dump kept changing under us")

    def _dump_once(self, msg_type: int, payload: bytes, parse) -> tuple[list, bool]:
        seq = next(self._seq) & 0xFFFFFFFF
        request = _HEADER.pack(16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload
        self._sock.send(request)
        buf = self._buffer
        view = memoryview(buf)
        unpack = _HEADER.unpack_from
        results = []
        interrupted = False
        while True:
            received = self._sock.recv_into(view)
            offset = 0
            while offset + 16 <= received:
                length, kind, flags, msg_seq, _pid = unpack(buf, offset)
                if length < 16 or offset + length > received:
                    raise OSError(errno.EBADMSG, "truncated netlink message")
                end = offset + length
                if msg_seq != seq:  # a late answer to an earlier, abandoned request
                    offset = align(end)
                    continue
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_DONE:
                    return results, interrupted
                if kind == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(buf, offset + 16)[0]
                    if code == 0:
                        return results, interrupted
                    raise OSError(code, os.strerror(code))
                item = parse(kind, buf, offset + 16, end)
                if item is not None:
                    results.append(item)
                offset = align(end)
