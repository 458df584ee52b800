"""drops: every packet the kernel drops, by reason and device, counted by eBPF (exporter/bpf/drops.bpf.c).

``netio_drops_total{reason,device}``: the ``tp_btf/kfree_skb`` tracepoint runs once per dropped packet
(packets that were used, SKB_CONSUMED, never count) and counts it in the kernel by drop reason and
the packet's device. Only the exporter's own network namespace is counted (the namespace of the
packet's socket, else of its device; see the program's comment); ``device="none"`` when the packet
has no device there (socket-level drops of queued packets, locally built packets). Drops of no
namespace at all (neither socket nor device) count as ``none`` only in the host's namespace.

Reason names come from the running kernel's BTF (``enum skb_drop_reason``, exporter/bpf/btf.py):
``SKB_DROP_REASON_NO_SOCKET`` is ``no_socket``, and every kernel shows its own list. A reason with
subsystem bits (``SKB_DROP_REASON_SUBSYS_MASK``: mac80211, openvswitch) is named after its subsystem
(``enum skb_drop_reason_subsys``: ``openvswitch``); a value the kernel's BTF does not name is
``unknown_<value>``. Series appear when a reason first occurs: no zero series.

Devices are named at scrape time from a netlink link dump; the drops of a device that is gone are
removed from the kernel's table (a host whose containers come and go would fill it otherwise).
The table holds ``table_entries`` (4096) (device, reason[, location]) entries; drops of new entries beyond them count
under ``device="other"`` with their reason. In front of it each CPU has ``cache_slots`` (256) direct-mapped
slots that count the drops of the keys they hold without a hash lookup; a key's count is its slots' plus
its table entries' (see the program's comment).

``--collector.drops.locations`` adds ``function``, the kernel function that dropped (the
tracepoint's ``location``, resolved through /proc/kallsyms). At most ``locations_top`` functions
get a label of their own: at each scrape, functions not seen before are admitted, most drops first,
while there is room, and keep their label from then on; the rest count as ``function="other"``.
Admitted functions never move to ``other``, so every series only grows.

The program loads when the collector is constructed; if that fails (no root or capabilities, no
BTF, no libbpf, no compiled object) ``read()`` raises ``CollectorUnavailable`` with one message
saying what is missing, and the exporter goes on without it.
"""

from __future__ import annotations

import os
import struct
import threading

from .. import flags
from ..exposition import Family
from . import Collector, CollectorUnavailable, Flags, Registration, log

DEFAULT_LOCATIONS_TOP = 20
TABLE_ENTRIES = 4096  # MAX_ENTRIES of drops.bpf.c
CACHE_SLOTS = 256  # per CPU, in front of the table (a power of two; 0: none)
_REASON_ENUM, _SUBSYSTEM_ENUM = "skb_drop_reason", "skb_drop_reason_subsys"
_SUBSYSTEM_MASK = "SKB_DROP_REASON_SUBSYS_MASK"
# Inode numbers of the initial namespaces (include/linux/proc_ns.h PROC_NET_INIT_INO, fixed since 6.x;
# PROC_PID_INIT_INO, since 3.8). Dynamic ones start at 0xF0000000, so neither can be another namespace's.
_HOST_NETNS_INODE, _HOST_PIDNS_INODE = 0xEFFFFFF9, 0xEFFFFFFC

# drops.bpf.c: struct config {u32 netns; u32 flags; u32 slots}, struct drop_key {u64 location; u32 ifindex;
# u32 reason}, struct slot {struct drop_key key; u64 packets} (the cache, indexed by a u32); the overflow
# table is keyed by the reason (u32); the tables' values are u64 per CPU.
_CONFIG = struct.Struct("<III")
_KEY = struct.Struct("<QII")
_SLOT = struct.Struct("<QIIQ")
_INDEX = struct.Struct("<I")
_REASON = struct.Struct("<I")
_LOCATIONS, _UNATTRIBUTED = 1, 2


def _label(enumerator: str, prefixes: tuple[str, ...]) -> str:
    """SKB_DROP_REASON_NO_SOCKET -> no_socket: lower case without the first of ``prefixes`` it has."""
    for prefix in prefixes:
        if enumerator.startswith(prefix):
            return enumerator[len(prefix):].lower()
    return enumerator.lower()


class ReasonNames:
    """Drop reason values -> label values, from the kernel's enums (``btf.enums()`` output)."""

    def __init__(self, enums: dict[str, dict[str, int]]):
        reasons = enums.get(_REASON_ENUM)
        if not reasons:
            raise CollectorUnavailable(f"the kernel's BTF has no enum {_REASON_ENUM}: drop reasons need Linux 5.17 or later")
        self._names = {value: _label(name, ("SKB_DROP_REASON_", "SKB_")) for name, value in reversed(reasons.items())}
        self._mask = reasons.get(_SUBSYSTEM_MASK, 0)
        self._shift = (self._mask & -self._mask).bit_length() - 1 if self._mask else 0
        self._subsystems = {value: _label(name, ("SKB_DROP_REASON_SUBSYS_",)) for name, value in enums.get(_SUBSYSTEM_ENUM, {}).items()
                            if not name.endswith("_NUM") and value}

    def __call__(self, value: int) -> str:
        name = self._names.get(value)
        if name is None:
            subsystem = self._subsystems.get((value & self._mask) >> self._shift) if self._mask else None
            name = self._names[value] = subsystem or f"unknown_{value}"
        return name


def _host_namespace(inode: int) -> bool:
    """Whether the network namespace ``inode`` is the host's (the initial one)."""
    if inode == _HOST_NETNS_INODE:
        return True
    try:  # in the initial PID namespace (not a container's), pid 1 is the host's init
        return os.stat("/proc/self/ns/pid").st_ino == _HOST_PIDNS_INODE and os.stat("/proc/1/ns/net").st_ino == inode
    except OSError:
        return False


def _unavailable(error: Exception) -> CollectorUnavailable:
    from ..bpf.build import BpfObjectMissing
    if isinstance(error, CollectorUnavailable):
        return error
    if isinstance(error, BpfObjectMissing):
        return CollectorUnavailable(f"drops needs its compiled eBPF program: {error}")
    first, *libbpf_log = str(error).splitlines()
    if getattr(error, "errno", None) in (1, 13):  # EPERM, EACCES: libbpf's log only repeats it
        return CollectorUnavailable(f"cannot load eBPF programs ({first}): run as root, or grant CAP_BPF and "
                                    "CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)")
    detail = " | ".join(libbpf_log[-6:])
    return CollectorUnavailable(f"cannot load eBPF programs: {first}" + (f" ({detail})" if detail else ""))


def _family(locations: bool) -> Family:
    return Family.counter("netio_drops",
                          "Packets the kernel dropped in this network namespace, by drop reason (the kernel's "
                          "enum skb_drop_reason) and device" + (" and the kernel function that dropped them."
                                                                 if locations else "."))


class DropsCollector(Collector):
    name = "drops"

    def __init__(self, locations: bool = False, locations_top: int = DEFAULT_LOCATIONS_TOP,
                 table_entries: int = TABLE_ENTRIES, cache_slots: int = CACHE_SLOTS):
        if not isinstance(locations_top, int) or not 1 <= locations_top <= 1000:
            raise ValueError(f"locations_top: expected 1-1000, got {locations_top!r}")
        if cache_slots & (cache_slots - 1) or not 0 <= cache_slots <= 65536:
            raise ValueError(f"cache_slots: expected 0 or a power of two up to 65536, got {cache_slots!r}")
        self.locations = locations
        self.locations_top = locations_top
        self.table_entries = table_entries
        self.cache_slots = cache_slots
        self._lock = threading.Lock()
        self._object = self._attachment = self._netlink = self._symbols = None
        self._error: CollectorUnavailable | None = None
        self._functions: set[str] = set()  # those with a label of their own (at most locations_top)
        self._function_at: dict[int, str] = {}  # location -> function
        try:
            self._load()
        except Exception as error:  # the exporter must never die for this collector
            self.close()
            self._error = _unavailable(error)

    def _load(self) -> None:
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise CollectorUnavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux): drops needs a kernel "
                                       "built with CONFIG_DEBUG_INFO_BTF=y")
        from ..bpf import btf, build, libbpf
        from ..bpf.kallsyms import KernelSymbols, kallsyms_shows_addresses
        from ..netlink.core import NETLINK_ROUTE, NetlinkSocket
        try:
            self.reason_name = ReasonNames(btf.read_enums((_REASON_ENUM, _SUBSYSTEM_ENUM)))
        except btf.BtfError as error:
            raise CollectorUnavailable(f"cannot read the drop reasons from {btf.VMLINUX}: {error}") from None
        if self.locations:
            if kallsyms_shows_addresses():
                self._symbols = KernelSymbols()
            else:
                log.warning("drops: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict; grant CAP_SYSLOG "
                            "or run as root): counting without locations")
                self.locations = False
        netns = os.stat("/proc/thread-self/ns/net").st_ino  # the namespace this thread (the exporter) is in
        self._netlink = NetlinkSocket(NETLINK_ROUTE)  # opened here, so it dumps this namespace's links
        self._cpus = libbpf.possible_cpus()
        self._per_cpu = struct.Struct(f"<{self._cpus}Q")
        self._object = libbpf.BpfObject(str(build.object_path("drops")),
                                         max_entries={"drops": self.table_entries,
                                                      "recent": max(1, self.cache_slots * self._cpus)})
        self._recent = self._object.map("recent", key_size=_INDEX.size, value_size=_SLOT.size)
        self._drops = self._object.map("drops", key_size=_KEY.size, value_size=8)
        self._overflow = self._object.map("overflow", key_size=_REASON.size, value_size=8)
        config = self._object.map("config", key_size=4, value_size=_CONFIG.size)
        config.update(b"\0\0\0\0", _CONFIG.pack(netns, (_LOCATIONS if self.locations else 0)
                                                | (_UNATTRIBUTED if _host_namespace(netns) else 0), self.cache_slots))
        self._attachment = self._attach()

    def _attach(self):
        from ..bpf import libbpf
        attachment = libbpf.Attachment()
        attachment.attach(self._object, "kfree_skb")  # one link: a failure leaves nothing to undo
        return attachment

    def close(self) -> None:
        with self._lock:
            for part in (self._attachment, self._object, self._netlink):
                if part is not None:
                    part.close()
            self._attachment = self._object = self._netlink = None
            if self._error is None:
                self._error = CollectorUnavailable("drops collector closed")

    def describe_families(self) -> list[Family]:
        return [_family(self.locations)]

    def read(self) -> list[Family]:
        with self._lock:
            if self._error is not None:
                raise self._error
            entries = self._entries(self._drops, _KEY)
            overflow = self._entries(self._overflow, _REASON)
            return [self._family(self._slots() + entries, overflow)]

    def _entries(self, table, key: struct.Struct) -> list[tuple[tuple, int]]:
        """(key fields, packets summed over the CPUs) of every entry of a per-CPU table."""
        stride = self._per_cpu.size
        keys, values, count = table.lookup_batch(stride)
        return [(key.unpack_from(keys, index * key.size), sum(self._per_cpu.unpack_from(values, index * stride)))
                for index in range(count)]

    def _slots(self) -> list[tuple[tuple, int, int]]:
        """(key fields, packets, cache index) of every slot of the cache that holds a key."""
        if not self.cache_slots:
            return []
        indexes, slots, _ = self._recent.lookup_batch()
        return [((location, ifindex, reason), packets, index) for (index,), (location, ifindex, reason, packets)
                in zip(_INDEX.iter_unpack(indexes), _SLOT.iter_unpack(slots)) if packets]

    def _family(self, entries: list, overflow: list) -> Family:
        from ..netlink.rtnl import dump_links
        devices = {link.index: link.name for link in dump_links(self._netlink)}  # after the table: see below
        devices[0] = "none"
        counts: dict[tuple[str, ...], int] = {}
        by_location: list[tuple[int, str, str, int]] = []
        for (location, ifindex, reason), packets, *index in entries:
            device = devices.get(ifindex)
            if device is None:  # in the table before the dump, absent from it: the device is gone
                if index:
                    self._recent.update(_INDEX.pack(*index), bytes(_SLOT.size))
                else:
                    self._drops.delete(_KEY.pack(location, ifindex, reason))
                continue
            if self.locations:
                by_location.append((location, self.reason_name(reason), device, packets))
            else:
                labels = (self.reason_name(reason), device)
                counts[labels] = counts.get(labels, 0) + packets
        if self.locations:
            self._label_functions(by_location, counts)
        for (reason,), packets in overflow:
            labels = (self.reason_name(reason), "other") + (("other",) if self.locations else ())
            counts[labels] = counts.get(labels, 0) + packets
        family = _family(self.locations)
        names = ("reason", "device", "function")
        for labels in sorted(counts):
            family.add(tuple(zip(names, labels)), counts[labels])
        return family

    def _label_functions(self, by_location: list, counts: dict) -> None:
        """Sum the drops by (reason, device, function), admitting new functions while there is room."""
        cache = self._function_at
        if len(cache) > 100_000:
            cache.clear()
        per_function: dict[str, int] = {}
        rows = []
        for location, reason, device, packets in by_location:
            function = cache.get(location)
            if function is None:
                function = cache[location] = self._symbols.function(location) or "unknown"
            per_function[function] = per_function.get(function, 0) + packets
            rows.append((reason, device, function, packets))
        newcomers = sorted((function for function in per_function if function not in self._functions),
                           key=lambda function: (-per_function[function], function))
        self._functions.update(newcomers[:max(0, self.locations_top - len(self._functions))])
        for reason, device, function, packets in rows:
            labels = (reason, device, function if function in self._functions else "other")
            counts[labels] = counts.get(labels, 0) + packets


def _add_arguments(options: Flags) -> None:
    options.add("--collector.drops.locations", dest="drops_locations", action="store_true",
                help="also label drops with the kernel function that dropped them (function; off by default: "
                     "it multiplies the series)")
    options.add("--collector.drops.locations-top", dest="drops_locations_top", metavar="N",
                type=flags.bounded_int(1, 1000, "a number of functions"),
                help="with --collector.drops.locations: at most N functions get a label of their own (those with "
                     "the most drops when first seen, kept from then on); the rest count as function=\"other\" "
                     f"(default {DEFAULT_LOCATIONS_TOP})")


def _check(args) -> str | None:
    if args.drops_locations_top is not None and not args.drops_locations:
        return "--collector.drops.locations-top: needs --collector.drops.locations"
    return None


REGISTRATION = Registration(
    name="drops", help="packets the kernel dropped, by reason and device, with eBPF (reports itself unavailable "
                       "without eBPF)",
    add_arguments=_add_arguments, check=_check,
    build=lambda args: DropsCollector(bool(args.drops_locations), args.drops_locations_top or DEFAULT_LOCATIONS_TOP))
