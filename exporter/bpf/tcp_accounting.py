"""The kernel's TCP accounting (tcp_accounting.bpf.c): load, attach, run an iterator pass, read the aggregates.

``TcpAccounting`` holds one loaded object: the close hooks (a sockops program on the cgroup v2 root, and a
tracepoint program for the sockets it does not follow) count every socket of every network namespace at
TCP_CLOSE, and ``live_pass()`` runs the socket iterator over the opener's namespace, which moves the live
sockets' counters into the same aggregates and returns their states and RTTs. ``totals(cookie)``
reads the aggregates of any namespace by its cookie (``netns_cookie()`` is the caller's own).
The layouts below mirror the C structs; ``BpfObject.map`` checks their sizes at load.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from . import build, libbpf

SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14)
ROOT_CGROUP_ID = 1  # the cgroup v2 root's kernfs id, its directory's inode number (fs/kernfs)
SOCKOPS_OFF, SOCKOPS_ROOT, SOCKOPS_BELOW_ROOT = range(3)  # settings.sockops: the C enum
STATES = 16  # slots of live.states: TCP state numbers (include/net/tcp_states.h)
RTT_BUCKETS = 20  # 19 bounds (the C's rtt_bounds_us) and +Inf
COUNTERS = 10  # the C enum, in the order of sock_diag's TCP_INFO_COUNTER_NAMES

_AGGREGATE_KEY = struct.Struct("=QI4x")  # struct aggregate_key
_TOTALS = struct.Struct(f"={COUNTERS + 1}Q")  # struct totals: counters, closed
_SETTINGS = struct.Struct("=QII")  # struct settings: pass, counting, sockops
_LIVE = struct.Struct(f"=Q{STATES}I{RTT_BUCKETS}IQ")  # struct live: pass, states, rtt, rtt_sum_us
_U32 = struct.Struct("=I")
_ZERO = _U32.pack(0)
PROGRAMS = ("tcp_sockops", "tcp_close", "tcp_live")


def cgroup2_root(mounts: str = "/proc/self/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (its root as this process sees it), or None."""
    with open(mounts) as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1].replace("\\040", " ")
    return None


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace (unique for the boot, never reused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        return struct.unpack("=Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


class Live(NamedTuple):
    """One bucket's live sockets in one pass."""
    states: tuple[int, ...]  # sockets by TCP state number
    rtt_buckets: tuple[int, ...]  # established sockets by RTT bucket (not cumulative), +Inf last
    rtt_sum_us: int


class Totals(NamedTuple):
    """One bucket's aggregates: the counters (microseconds for the times) and the closes."""
    counters: tuple[int, ...]
    closed: int


class TcpAccounting:
    """The loaded and attached programs. ``buckets`` maps listed local ports to buckets 1..n; every
    other port is bucket 0. The first pass runs here: sockets open now are the baseline (count from zero).
    ``cgroup`` is where tcp_sockops is attached, or None and ``sockops_error`` says why (closes are then
    counted by the tracepoint alone, which the kernel may skip under load).
    Not thread-safe: the caller serialises ``live_pass`` (one pass at a time)."""

    def __init__(self, buckets: dict[int, int]):
        self._bucket_count = 1 + max(buckets.values(), default=0)
        self._object = libbpf.BpfObject(str(build.object_path("tcp_accounting")),
                                        max_entries={"live": self._bucket_count})
        self._attachment = libbpf.Attachment()
        try:
            self._aggregates = self._object.map("aggregates", key_size=_AGGREGATE_KEY.size, value_size=_TOTALS.size)
            self._settings = self._object.map("settings", key_size=_U32.size, value_size=_SETTINGS.size)
            self._live = self._object.map("live", key_size=_U32.size, value_size=_LIVE.size)
            port_buckets = self._object.map("port_buckets", key_size=_U32.size, value_size=_U32.size)
            for port, bucket in buckets.items():
                port_buckets.update(_U32.pack(port), _U32.pack(bucket))
            # This namespace's aggregates exist from the start: other namespaces (never removed, their
            # cookies are never reused) can fill the map, never at this one's expense.
            self.cookie = netns_cookie()
            self._cpus = libbpf.possible_cpus()
            for bucket in range(self._bucket_count):
                self._aggregates.update(_AGGREGATE_KEY.pack(self.cookie, bucket), bytes(_TOTALS.size * self._cpus))
            # tcp_sockops accounts the closes of the sockets of its cgroup tree (never skipped), tcp_close the
            # others; from the hierarchy's root (not from a cgroup namespace's) it follows every socket.
            self.cgroup = cgroup2_root()
            self.sockops_error = None if self.cgroup else "no cgroup v2 hierarchy is mounted"
            if self.cgroup is not None:
                try:
                    self._attachment.attach_cgroup(self._object, "tcp_sockops", self.cgroup)
                except libbpf.BpfError as error:  # e.g. without CAP_NET_ADMIN: the tracepoint alone
                    self.cgroup, self.sockops_error = None, str(error).splitlines()[0]
            self._attachment.attach(self._object, "tcp_close")
            self._iterator = self._attachment.attach(self._object, "tcp_live")
            self._pass = 0
            self._counting = 0
            # From the first pass on (tcp_close counts every close until then).
            self._sockops = (SOCKOPS_OFF if self.cgroup is None else
                             SOCKOPS_ROOT if os.stat(self.cgroup).st_ino == ROOT_CGROUP_ID else SOCKOPS_BELOW_ROOT)
            self.live_pass()  # the baseline
            self._counting = 1
        except BaseException:
            self.close()
            raise

    def live_pass(self) -> list[Live]:
        """Run the iterator once; the live sockets of each bucket (index = bucket)."""
        self._pass += 1
        self._settings.update(_ZERO, _SETTINGS.pack(self._pass, self._counting, self._sockops))
        fd = self._attachment.open_iterator(self._iterator)
        try:
            while os.read(fd, 4096):  # the program writes nothing: reading runs it over every socket
                pass
        finally:
            os.close(fd)
        _, values, count = self._live.lookup_batch()
        empty = Live((0,) * STATES, (0,) * RTT_BUCKETS, 0)
        result = [empty] * self._bucket_count
        for bucket, fields in enumerate(_LIVE.iter_unpack(values[:count * _LIVE.size])):
            if fields[0] == self._pass:  # else no socket of this bucket in this pass
                result[bucket] = Live(fields[1:1 + STATES], fields[1 + STATES:-1], fields[-1])
        return result

    def totals(self, cookie: int | None = None) -> list[Totals]:
        """The aggregates (index = bucket) of the namespace with this cookie, by default the one this
        object was made in (the one its iterator walks)."""
        cookie = self.cookie if cookie is None else cookie
        result = [Totals((0,) * COUNTERS, 0)] * self._bucket_count
        stride = _TOTALS.size * self._cpus  # per key: one struct totals per possible CPU
        keys, values, count = self._aggregates.lookup_batch(stride)
        for index, (key_cookie, bucket) in enumerate(_AGGREGATE_KEY.iter_unpack(keys[:count * _AGGREGATE_KEY.size])):
            if key_cookie == cookie and bucket < self._bucket_count:
                per_cpu = _TOTALS.iter_unpack(values[index * stride:(index + 1) * stride])
                fields = [sum(column) for column in zip(*per_cpu)]
                result[bucket] = Totals(tuple(fields[:COUNTERS]), fields[COUNTERS])
        return result

    def close(self) -> None:
        self._attachment.close()
        self._object.close()
