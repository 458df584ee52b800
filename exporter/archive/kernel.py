"""The archive's kernel side: exporter/bpf/tcp_archive.bpf.c loaded and attached, its ring buffer of final
records read; exporter/bpf/tcp_archive_changes.h, the iterator that names the connections that
changed. Needs what every tracing program needs (CAP_BPF and CAP_PERFMON, or root) and BTF."""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from ..bpf.build import object_path
from ..bpf.libbpf import Attachment, BpfError, BpfObject, RingBuffer
from ..bpf.tcp_accounting import netns_cookie
from ..netlink.connections import EXTENSIONS, REQUEST_SIZE

_U64 = struct.Struct("=Q")
_READ_BYTES = 1 << 16
_CONFIG = struct.Struct("=QI4x")  # struct config in tcp_archive_changes.h
# The change iterator's builds, in the order tried: Linux 6.2+ (a read-only cast), then older kernels.
CHANGE_OBJECTS = ("tcp_archive_changes", "tcp_archive_changes_compat")

# struct start_record and struct final_record in tcp_archive.bpf.c, told apart by their size
START_RECORD = struct.Struct("=QQ")
FINAL_RECORD = struct.Struct("=7Q15I3H2B16s16s4x")
FINAL_COUNTERS = ("bytes_acked", "bytes_received", "bytes_sent", "bytes_retrans", "segs_in", "segs_out",
                  "data_segs_in", "data_segs_out", "total_retrans", "rtt", "rttvar", "min_rtt", "snd_cwnd",
                  "snd_ssthresh", "delivered", "delivered_ce", "dsack_dups", "reord_seen", "rcv_ooopack")
"""The tcp_info fields a final record carries (what struct tcp_sock holds at TCP_CLOSE), in its order."""


class Final(NamedTuple):
    cookie: int
    start_ns: int  # CLOCK_MONOTONIC; 0 if the connection began before the program was attached
    end_ns: int
    counters: tuple[int, ...]  # FINAL_COUNTERS
    family: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    old_state: int


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


class Start(NamedTuple):
    cookie: int
    start_ns: int  # CLOCK_MONOTONIC at the connection's first state change


def decode(raw: bytes) -> Start | Final:
    if len(raw) == START_RECORD.size:
        return Start(*START_RECORD.unpack(raw))
    if len(raw) != FINAL_RECORD.size:
        raise ValueError(f"tcp_archive record of {len(raw)} bytes, the Python layouts read "
                         f"{START_RECORD.size} or {FINAL_RECORD.size}: the object and the exporter are out of step")
    values = FINAL_RECORD.unpack(raw)
    cookie, start, end = values[:3]
    counters = values[3:3 + len(FINAL_COUNTERS)]
    family, local_port, remote_port, old_state, _, local, remote = values[3 + len(FINAL_COUNTERS):]
    return Final(cookie, start, end, counters, family, _address(family, local), local_port,
                 _address(family, remote), remote_port, old_state)


class CloseHook:
    """The attached program and its ring buffer; ``poll(timeout_ms)`` hands each Start and Final to
    ``handle``, in the order the kernel queued them."""

    def __init__(self, ring_bytes: int, handle):
        self._object = BpfObject(str(object_path("tcp_archive")), max_entries={"finals": ring_bytes})
        self._attachment = Attachment()
        try:
            self._object.map("config", key_size=4, value_size=8).update(
                struct.pack("=I", 0), _U64.pack(netns_cookie()))
            self._lost = self._object.map("lost", key_size=4, value_size=8)
            self._ring = RingBuffer(self._object.map("finals"), lambda raw: handle(decode(raw)))
            self._attachment.attach(self._object, "archive_state")
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: int) -> int:
        return self._ring.poll(timeout_ms)

    def lost(self) -> int:
        """Final records the kernel could not queue (ring buffer full), over all CPUs."""
        from ..bpf.libbpf import possible_cpus
        raw = self._lost.lookup(struct.pack("=I", 0), 8 * possible_cpus()) or b""
        return sum(value for (value,) in _U64.iter_unpack(raw))

    def close(self) -> None:
        self._attachment.close()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._object.close()


class ChangeIterator:
    """exporter/bpf/tcp_archive_changes.h's programs (the first build of CHANGE_OBJECTS that loads)
    attached, the connections of this thread's network namespace enrolled: ``requests()`` runs one pass
    and returns the exact sock_diag requests, one for each connection that changed since the last pass
    (every connection in the first)."""

    def __init__(self):
        for name in CHANGE_OBJECTS:
            try:
                self._object = BpfObject(str(object_path(name)))
                break
            except BpfError:
                if name == CHANGE_OBJECTS[-1]:
                    raise
        self._attachment = Attachment()
        try:
            self._object.map("config", key_size=4, value_size=_CONFIG.size).update(
                struct.pack("=I", 0), _CONFIG.pack(netns_cookie(), EXTENSIONS))
            self._attachment.attach(self._object, "enroll_new")  # first: no connection falls between the two
            self._read(self._attachment.attach(self._object, "enroll_existing"))
            self._link = self._attachment.attach_map_iterator(self._object, "changed_sockets",
                                                              self._object.map("fingerprints"))
        except BaseException:
            self.close()
            raise

    def requests(self) -> bytes:
        requests = self._read(self._link)
        if len(requests) % REQUEST_SIZE:
            raise ValueError(f"tcp_archive_changes wrote {len(requests)} bytes, not a multiple of the "
                             f"{REQUEST_SIZE}-byte request Python reads: the object and the exporter are out of step")
        return requests

    def _read(self, link: int) -> bytes:
        fd = self._attachment.open_iterator(link)
        try:
            chunks = []
            while chunk := os.read(fd, _READ_BYTES):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def close(self) -> None:
        self._attachment.close()
        self._object.close()
