"""Attaching tc programs to an interface: TCX links where the kernel has them, else clsact filters.

TCX (kernel 6.6+) links are created with a raw ``BPF_LINK_CREATE`` (Debian's libbpf 1.1 predates
them) and live as long as their fd: a killed exporter leaves nothing behind. A clsact qdisc's
cls_bpf filter outlives the process instead, so filters are named ``FILTER_NAME`` and removed at
start and on exit; filters and qdiscs of others are never touched. pyroute2 does the tc netlink
work that changes things (control plane only; it is imported here and nowhere on the scrape path).

Whether an attachment still holds is checked at every scrape, cheaply: a TCX link's info names the
interface it runs on (0 once the interface went or the link was detached); a clsact hook is one
stdlib netlink dump of its filters, searched for our program's id.
"""

from __future__ import annotations

import ctypes
import errno
import struct

from ..netlink.core import NetlinkSocket, attr_string, attr_u32, iter_attrs
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
# BPF_OBJ_GET_INFO_BY_FD: union bpf_attr info {bpf_fd, info_len, info (pointer)}. In struct bpf_prog_info
# the id is at offset 4; in struct bpf_link_info the union after type, id and prog_id is 8-aligned, so
# tcx.ifindex is at offset 16.
_BPF_OBJ_GET_INFO_BY_FD = 15
_INFO_ATTR = struct.Struct("=IIQ")
_PROG_ID_OFFSET = 4
_LINK_TCX_IFINDEX_OFFSET = 16
# include/uapi/linux/rtnetlink.h: RTM_GETTFILTER, struct tcmsg (family, pads, ifindex, handle, parent,
# info), TCA_KIND and TCA_OPTIONS; include/uapi/linux/pkt_cls.h: TCA_BPF_ID (the filter's program id).
_RTM_GETTFILTER = 46
_TCMSG = struct.Struct("=B3xiIII")
_TCA_KIND, _TCA_OPTIONS = 1, 2
_TCA_BPF_ID = 11
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


def _object_info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    attr = ctypes.create_string_buffer(_INFO_ATTR.pack(fd, size, ctypes.addressof(info)), _ATTR_SIZE)
    raw_syscall("bpf", _BPF_OBJ_GET_INFO_BY_FD, attr, _ATTR_SIZE)
    return info.raw


def program_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (what a cls_bpf filter reports as TCA_BPF_ID)."""
    return struct.unpack_from("=I", _object_info(prog_fd, 8), _PROG_ID_OFFSET)[0]


def tcx_link_ifindex(link_fd: int) -> int:
    """The interface a TCX link runs on; 0 once the interface is gone or the link was detached."""
    return struct.unpack_from("=I", _object_info(link_fd, 24), _LINK_TCX_IFINDEX_OFFSET)[0]


def _bpf_filter_program(kind: int, buf, offset: int, end: int) -> int | None:
    bpf, program = False, None
    for attr, start, length in iter_attrs(buf, offset + _TCMSG.size, end):
        if attr == _TCA_KIND:
            bpf = attr_string(buf, start, length) == "bpf"
        elif attr == _TCA_OPTIONS:
            for option, option_start, option_length in iter_attrs(buf, start, start + length):
                if option == _TCA_BPF_ID:
                    program = attr_u32(buf, option_start, option_length)
    return program if bpf else None


def clsact_programs(sock: NetlinkSocket, ifindex: int, direction: str) -> list[int]:
    """Ids of the programs of the bpf filters on an interface's clsact ``direction``; [] without clsact."""
    request = _TCMSG.pack(0, ifindex, 0, _CLSACT_PARENTS[direction], 0)
    return sock.dump(_RTM_GETTFILTER, request, _bpf_filter_program)


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
