"""mac: per-client (per-MAC) download and upload on gateway interfaces, counted by eBPF at tc.

What speedy did with libpcap in user space, counted in the kernel instead (exporter/bpf/mac.bpf.c):
ingress frames are the upload of their source MAC, egress frames the download of their destination
MAC; bytes are the L2 frame length as tc sees it (Ethernet header included, FCS not). Each interface
gets its own copy of the programs and its own table of ``max_entries`` clients; frames of clients that
find it full are counted as untracked; ``netio_mac_table_entries`` against ``netio_mac_table_max_entries``
shows how full the table is. Clients idle longer than ``idle_timeout`` are deleted here, and their
series vanish.

Every scrape checks the attachment itself, not only the interface's index: a TCX link still running
on that interface, or our program's id among the interface's clsact filters. An interface that went
and came back (even with the same ifindex), a deleted clsact qdisc or filter, a detached link: the
next scrape attaches again and logs it once; the table survives, so the clients' counters continue.
Before attaching, in every mode, our filters left on the interface (a killed exporter's) are removed.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import struct
import threading
import time

from ..bpf import tc
from ..bpf.build import object_path
from ..bpf.libbpf import BpfObject
from ..exposition import Family
from ..netlink.core import NETLINK_ROUTE, NetlinkSocket
from ..netlink.rtnl import dump_links, format_address
from .. import flags
from . import Collector, CollectorUnavailable, Flags, Registration

log = logging.getLogger("netio_exporter")

ATTACH_MODES = ("auto", "tcx", "clsact")
DEFAULT_MAX_ENTRIES = 4096  # clients per interface; mac.bpf.c's table is sized to it at load
DEFAULT_IDLE_TIMEOUT = 3600.0
CLIENT_KEY = struct.Struct("=6s2x")
CLIENT = struct.Struct("=5QI16sB3x")  # struct client in mac.bpf.c
_UNTRACKED = struct.Struct("=QQ")
_ZERO_KEY = struct.pack("=I", 0)


_mac_text = functools.lru_cache(maxsize=65536)(format_address)


@functools.lru_cache(maxsize=65536)
def _ipv6_text(raw: bytes) -> str:
    if raw == bytes(16):
        return ""
    address = ipaddress.IPv6Address(raw)
    if address.ipv4_mapped is not None:  # RFC 5952 section 5
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


@functools.lru_cache(maxsize=65536)
def _ipv4_text(raw: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", raw)) if raw else ""


def _families() -> dict[str, Family]:
    return {
        "download_bytes": Family.counter("netio_mac_download_bytes",
                                 "L2 bytes of frames sent to the client (tc egress, by destination MAC)."),
        "download_packets": Family.counter("netio_mac_download_packets",
                                   "Frames sent to the client (tc egress, by destination MAC)."),
        "upload_bytes": Family.counter("netio_mac_upload_bytes",
                               "L2 bytes of frames received from the client (tc ingress, by source MAC)."),
        "upload_packets": Family.counter("netio_mac_upload_packets",
                                 "Frames received from the client (tc ingress, by source MAC)."),
        "info": Family.info("netio_mac_info",
                       "The client's last seen IPv4 and IPv6 source addresses (IPv6 link-local only when no "
                       "other was seen); the value is 1."),
        "untracked_bytes": Family.counter("netio_mac_untracked_bytes",
                                  "L2 bytes of frames of clients the table had no room for."),
        "untracked_packets": Family.counter("netio_mac_untracked_packets",
                                    "Frames of clients the table had no room for."),
        "table_entries": Family.gauge("netio_mac_table_entries",
                                      "Clients in the interface's table; at max entries, new clients count as "
                                      "untracked."),
        "table_max_entries": Family.gauge("netio_mac_table_max_entries",
                                          "Clients the interface's table can hold (--collector.mac.max-entries)."),
    }


class _Device:
    """The programs, table and attachment of one interface."""

    def __init__(self, name: str, max_entries: int, attach_mode: str):
        self.name = name
        self.attach_mode = attach_mode
        self.object = BpfObject(str(object_path("mac")), max_entries={"clients": max_entries})
        self.clients = self.object.map("clients", key_size=CLIENT_KEY.size, value_size=CLIENT.size)
        self.untracked = self.object.map("untracked", key_size=len(_ZERO_KEY), value_size=_UNTRACKED.size)
        self.self_map = self.object.map("self", key_size=len(_ZERO_KEY), value_size=CLIENT_KEY.size)
        self._program_fds = {direction: self.object.program_fd(f"mac_{direction}") for direction in tc.DIRECTIONS}
        self._program_ids = {direction: tc.program_id(fd) for direction, fd in self._program_fds.items()}
        self._netlink = NetlinkSocket(NETLINK_ROUTE)  # the per-scrape check of clsact filters
        self.ifindex: int | None = None
        self.method = ""
        self._links: list[int] = []
        self._clsact = None
        self._missing_said = False
        self._leftovers_said = False
        # The label rows of the last scrape, reused (the same tuple objects) while the clients and their
        # addresses stay the same: render_text then keeps their label text between scrapes.
        self._keys = b""
        self._rows: tuple = ()
        self._addresses: tuple = ()
        self._info_rows: tuple = ()

    def rows(self, keys: bytes) -> tuple:
        """``(("device", name), ("mac", mac))`` per client, in the order of ``keys``."""
        if keys != self._keys:
            self._keys = keys
            self._rows = tuple((("device", self.name), ("mac", _mac_text(keys[offset:offset + 6])))
                               for offset in range(0, len(keys), CLIENT_KEY.size))
        return self._rows

    def info_rows(self, rows: tuple, ipv4s: tuple, ipv6s: tuple) -> tuple:
        """``rows`` with each client's ``ipv4`` and ``ipv6`` labels added."""
        addresses = (rows, ipv4s, ipv6s)
        if addresses != self._addresses:
            self._addresses = addresses
            self._info_rows = tuple(row + (("ipv4", _ipv4_text(ipv4)), ("ipv6", _ipv6_text(ipv6)))
                                    for row, ipv4, ipv6 in zip(rows, ipv4s, ipv6s))
        return self._info_rows

    def forget_if_idle(self, key: bytes, idle_before: int) -> bool:
        """Delete the client if it is still idle now (it may have sent a frame since the sweep)."""
        value = self.clients.lookup(key)
        if value is not None and CLIENT.unpack(value)[4] < idle_before:
            return self.clients.delete(key)
        return False

    def ensure_attached(self) -> bool:
        """Attached to the interface called ``name`` now: again if our attachment is gone (the interface
        re-created, even with the same ifindex; a qdisc or filter deleted; a link detached). False while
        the interface is absent."""
        try:
            ifindex = socket.if_nametoindex(self.name)
        except OSError:
            ifindex = None
        if ifindex is not None and ifindex == self.ifindex and self._still_attached():
            return True
        lost = self.ifindex is not None
        self.detach()
        if ifindex is None:
            if not self._missing_said:
                log.warning("mac: interface %s is not present; counting resumes when it returns", self.name)
                self._missing_said = True
            return False
        link = next((link for link in dump_links() if link.index == ifindex), None)
        own = bytes.fromhex(link.address.replace(":", "")) if link and len(link.address) == 17 else bytes(6)
        self.self_map.update(_ZERO_KEY, CLIENT_KEY.pack(own))
        self._attach(ifindex)
        self.ifindex = ifindex
        if self._missing_said:
            log.info("mac: interface %s is present now; attached (%s)", self.name, self.method)
            self._missing_said = False
        elif lost:
            log.warning("mac: the programs on %s were detached (interface re-created, tc qdisc or filter deleted, "
                        "or link detached); attached again (%s)", self.name, self.method)
        return True

    def _still_attached(self) -> bool:
        if self.method == "tcx":
            return all(tc.tcx_link_ifindex(fd) == self.ifindex for fd in self._links)
        return all(self._program_ids[direction] in tc.clsact_programs(self._netlink, self.ifindex, direction)
                   for direction in tc.DIRECTIONS)

    def _attach(self, ifindex: int) -> None:
        clsact = tc.Clsact(ifindex)
        try:
            removed = clsact.remove_ours()  # a killed exporter's leftovers, whatever the mode now
            if removed and not self._leftovers_said:
                log.info("mac: removed %d tc filters named %s* left on %s (a killed exporter's)", removed,
                         tc.FILTER_NAME, self.name)
            self._leftovers_said = True
            if self.attach_mode in ("auto", "tcx"):
                try:
                    for direction in tc.DIRECTIONS:
                        self._links.append(tc.tcx_attach(self._program_fds[direction], ifindex, direction))
                    self.method = "tcx"
                    clsact.close()
                    return
                except tc.AttachError as error:
                    self.detach()
                    if self.attach_mode == "tcx" or tc.tcx_supported(error.errno):
                        raise
            clsact.attach(self._program_fds)
        except BaseException:
            clsact.detach()
            clsact.close()
            raise
        self._clsact = clsact
        self.method = "clsact"

    def detach(self) -> None:
        while self._links:
            os.close(self._links.pop())
        if self._clsact is not None:
            try:
                self._clsact.detach()
            finally:
                self._clsact.close()
                self._clsact = None
        self.ifindex = None

    def close(self) -> None:
        self.detach()
        self._netlink.close()
        self.object.close()


class MacCollector(Collector):
    name = "mac"

    def __init__(self, devices: list[str], max_entries: int = DEFAULT_MAX_ENTRIES,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, attach: str = "auto"):
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach mode must be one of {', '.join(ATTACH_MODES)}")
        self._idle_ns = int(idle_timeout * 1e9)
        self._lock = threading.Lock()
        self._devices: list[_Device] = []
        self._error: str | None = None
        try:
            for name in dict.fromkeys(devices):
                self._devices.append(_Device(name, max_entries, attach))
            for device in self._devices:  # count from start-up, not from the first scrape
                device.ensure_attached()
        except Exception as error:  # reported by every read(); the other collectors keep working
            self._error = _unavailable(error)
            self.close()

    @property
    def capabilities_after_start(self) -> tuple[str, ...]:
        """CAP_NET_ADMIN while an interface may need clsact (its qdisc and filters) to attach again. A TCX
        link is made from the loaded programs' fds without capabilities (measured on kernel 6.18)."""
        if self._error is None and any("tcx" not in (device.method, device.attach_mode) for device in self._devices):
            return ("CAP_NET_ADMIN",)
        return ()

    def close(self) -> None:
        with self._lock:
            while self._devices:
                self._devices.pop().close()

    def describe_families(self) -> list[Family]:
        return list(_families().values())

    def read(self) -> list[Family]:
        if self._error is not None:
            raise CollectorUnavailable(self._error)
        families = _families()
        with self._lock:
            now = time.monotonic_ns()
            for device in self._devices:
                if device.ensure_attached():
                    self._read_device(device, families, now)
        return list(families.values())

    def _read_device(self, device: _Device, families: dict[str, Family], now: int) -> None:
        keys, values, count = device.clients.lookup_batch()
        clients = list(CLIENT.iter_unpack(values))
        idle_before = now - self._idle_ns
        idle = {index for index, client in enumerate(clients) if client[4] < idle_before}
        if idle:
            for index in idle:
                device.forget_if_idle(keys[index * CLIENT_KEY.size:(index + 1) * CLIENT_KEY.size], idle_before)
            keep = [index for index in range(count) if index not in idle]
            keys = b"".join(keys[index * CLIENT_KEY.size:(index + 1) * CLIENT_KEY.size] for index in keep)
            clients = [clients[index] for index in keep]
        rows = device.rows(keys)
        up_bytes, up_packets, down_bytes, down_packets, _, ipv4s, ipv6s, _ = zip(*clients) if clients else ((),) * 8
        families["download_bytes"].add_column(rows, down_bytes)
        families["download_packets"].add_column(rows, down_packets)
        families["upload_bytes"].add_column(rows, up_bytes)
        families["upload_packets"].add_column(rows, up_packets)
        families["info"].add_column(device.info_rows(rows, ipv4s, ipv6s), (1,) * len(rows))
        lost = device.untracked.lookup(_ZERO_KEY)
        lost_bytes, lost_packets = _UNTRACKED.unpack(lost) if lost else (0, 0)
        labels = (("device", device.name),)
        families["untracked_bytes"].add(labels, lost_bytes)
        families["untracked_packets"].add(labels, lost_packets)
        families["table_entries"].add(labels, len(rows))
        families["table_max_entries"].add(labels, device.clients.max_entries)


def _unavailable(error: Exception) -> str:
    if isinstance(error, PermissionError) or getattr(error, "errno", None) in (1, 13):
        return f"eBPF is not permitted here ({error}); run as root or with CAP_BPF and CAP_NET_ADMIN"
    return f"cannot count per-MAC traffic: {error}"


def _add_arguments(options: Flags) -> None:
    options.add("--collector.mac.device", dest="mac_devices", action="append", type=flags.interface,
                metavar="IFACE", help="count traffic per client MAC on IFACE with eBPF at tc; repeatable; turns "
                                      "the mac collector on")
    options.add("--collector.mac.max-entries", dest="mac_max_entries", metavar="N", default=DEFAULT_MAX_ENTRIES,
                type=flags.bounded_int(1, 1_000_000, "a number of clients"),
                help="clients tracked per interface; frames of others count as untracked")
    options.add("--collector.mac.idle-timeout", dest="mac_idle_timeout", type=flags.seconds, metavar="S",
                default=DEFAULT_IDLE_TIMEOUT, help="forget clients idle for S seconds; their series vanish")
    options.add("--collector.mac.attach", dest="mac_attach", type=flags.choice(*ATTACH_MODES), metavar="MODE",
                default="auto", help="auto (TCX links where the kernel has them, else clsact), tcx or clsact")


REGISTRATION = Registration(
    name="mac", help="per-client traffic by MAC on gateway interfaces, with eBPF at tc", default=False,
    enabled_by="mac_devices", add_arguments=_add_arguments,
    build=lambda args: MacCollector(args.mac_devices, args.mac_max_entries, args.mac_idle_timeout,
                                    args.mac_attach))
