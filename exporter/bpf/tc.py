"""Attaching tc programs to an interface: TCX links where the kernel has them, else clsact filters.

TCX (kernel 6.6+) links are created with a raw ``BPF_LINK_CREATE`` (Debian's libbpf 1.1 predates
them) and live as long as their fd: a killed exporter leaves nothing behind. A clsact qdisc's
cls_bpf filter outlives the process instead, so filters are named ``FILTER_NAME`` and removed at
start and on exit; filters and qdiscs of others are never touched. pyroute2 does the tc netlink
work (control plane only; it is imported here and nowhere on the scrape path).
"""

from __future__ import annotations

import ctypes
import errno
import struct

from .libbpf import raw_syscall

FILTER_NAME = "netio_mac"
DIRECTIONS = ("ingress", "egress")

# include/uapi/linux/bpf.h: enum bpf_cmd BPF_LINK_CREATE; enum bpf_attach_type BPF_TCX_*.
_BPF_LINK_CREATE = 28
_TCX_ATTACH_TYPES = {"ingress": 46, "egress": 47}
# union bpf_attr, link_create: prog_fd, target_ifindex, attach_type, flags, then tcx's
# relative_fd (u32) and expected_revision (u64, at offset 24).
_LINK_CREATE = struct.Struct("=IIII")
_ATTR_SIZE = 64
# TC_H_CLSACT's minor handles (include/uapi/linux/pkt_sched.h) for the two filter parents.
_CLSACT_PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}


class AttachError(OSError):
    """Attaching failed; the message names the interface, direction and method."""


def tcx_attach(prog_fd: int, ifindex: int, direction: str) -> int:
    """A TCX link running ``prog_fd`` after the programs already attached; returns the link fd."""
    attr = ctypes.create_string_buffer(_LINK_CREATE.pack(prog_fd, ifindex, _TCX_ATTACH_TYPES[direction], 0),
                                       _ATTR_SIZE)
    try:
        return raw_syscall("bpf", _BPF_LINK_CREATE, attr, _ATTR_SIZE)
    except OSError as error:
        raise AttachError(error.errno, f"TCX {direction} link on ifindex {ifindex}: {error.strerror}") from None


def tcx_supported(code: int) -> bool:
    """Whether a failed TCX attach means "this kernel has no TCX" (so clsact is the way)."""
    return code not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, 524)  # 524: ENOTSUPP


class Clsact:
    """Our cls_bpf filters on one interface's clsact qdisc; creates the qdisc only if missing."""

    def __init__(self, ifindex: int):
        from pyroute2 import IPRoute  # control plane only
        self.ifindex = ifindex
        self._ipr = IPRoute()
        self.created_qdisc = False

    def close(self) -> None:
        self._ipr.close()

    def _has_clsact(self) -> bool:
        return any(qdisc.get_attr("TCA_KIND") == "clsact" for qdisc in self._ipr.get_qdiscs(index=self.ifindex))

    def _our_filters(self, direction: str) -> list:
        try:
            filters = self._ipr.get_filters(index=self.ifindex, parent=_CLSACT_PARENTS[direction])
        except Exception:  # no clsact qdisc: no filters
            return []
        ours = []
        for message in filters:
            options = message.get_attr("TCA_OPTIONS")
            if message.get_attr("TCA_KIND") == "bpf" and options is not None \
                    and options.get_attr("TCA_BPF_NAME", "").startswith(FILTER_NAME):
                ours.append(message)
        return ours

    def remove_ours(self) -> int:
        """Delete every filter of ours (leftovers of a killed exporter too); returns how many."""
        removed = 0
        for direction in DIRECTIONS:
            for message in self._our_filters(direction):
                try:
                    self._ipr.tc("del-filter", "bpf", self.ifindex, message["handle"],
                                 parent=_CLSACT_PARENTS[direction], info=message["info"])
                    removed += 1
                except Exception as error:  # gone already: nothing to remove
                    if getattr(error, "code", None) not in (errno.ENOENT, errno.EINVAL):
                        raise
        return removed

    def attach(self, prog_fds: dict[str, int]) -> None:
        if not self._has_clsact():
            self._ipr.tc("add", "clsact", self.ifindex)
            self.created_qdisc = True
        for direction, fd in prog_fds.items():
            self._ipr.tc("add-filter", "bpf", self.ifindex, ":1", fd=fd, name=f"{FILTER_NAME}_{direction}",
                         parent=_CLSACT_PARENTS[direction], classid=1, direct_action=True)

    def detach(self) -> None:
        """Remove our filters, and the clsact qdisc if we created it and nothing else uses it."""
        self.remove_ours()
        if self.created_qdisc:
            others = 0
            for parent in _CLSACT_PARENTS.values():
                try:
                    others += len(self._ipr.get_filters(index=self.ifindex, parent=parent))
                except Exception:
                    pass
            if others == 0:
                try:
                    self._ipr.tc("del", "clsact", self.ifindex)
                except Exception:  # the interface is gone, and the qdisc with it
                    pass
            self.created_qdisc = False
