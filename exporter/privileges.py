"""Least privilege: once the collectors are loaded, keep only the capabilities they still use.

Loading eBPF programs, opening perf events and reading kernel addresses need capabilities; what a
loaded collector does afterwards mostly does not: it reads its maps and perf events through fds it
already holds. A collector that still calls privileged kernel interfaces at scrape time names their
capabilities in ``Collector.capabilities_after_start`` (mac: CAP_NET_ADMIN, to attach to an interface
again). ``drop_capabilities()`` keeps those and drops every other one from the effective, permitted,
inheritable and ambient sets (and from the bounding set where CAP_SETPCAP allows), and sets
no_new_privs, so nothing regained through execve either.

Capabilities belong to a thread: call it from the main thread before the server starts its threads,
which then inherit the reduced sets. A thread already running keeps its own until it ends (the
netstack collector's /proc/kallsyms reader, which opened the file with CAP_SYSLOG and ends once it
has read it). Uses capget/capset and prctl through ctypes (include/uapi/linux/capability.h,
include/uapi/linux/prctl.h).
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["CAPABILITIES", "PrivilegeError", "current_capabilities", "drop_after_start", "drop_capabilities"]

log = logging.getLogger("netio_exporter")

# include/uapi/linux/capability.h: the capabilities this project names (the rest by number).
CAPABILITIES = {"CAP_DAC_OVERRIDE": 1, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12,
                "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39}
_NAMES = {number: name for name, number in CAPABILITIES.items()}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# include/uapi/linux/prctl.h
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):  # two of them: capabilities 0-31, then 32-63
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class PrivilegeError(OSError):
    """The kernel refused to change this thread's capabilities."""


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise PrivilegeError(code, f"{what}: {os.strerror(code)}")


def _capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread as 64-bit masks."""
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return tuple(getattr(data[0], field) | getattr(data[1], field) << 32
                 for field in ("effective", "permitted", "inheritable"))


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    for index in (0, 1):
        data[index].effective = effective >> 32 * index & 0xFFFFFFFF
        data[index].permitted = permitted >> 32 * index & 0xFFFFFFFF
        data[index].inheritable = inheritable >> 32 * index & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _names(mask: int) -> list[str]:
    return [_NAMES.get(bit, f"capability {bit}") for bit in range(64) if mask >> bit & 1]


def _mask(names) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def current_capabilities() -> list[str]:
    """The calling thread's effective capabilities, by name."""
    return _names(_capget()[0])


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 40


def drop_capabilities(keep) -> list[str]:
    """Keep only the capabilities named in ``keep`` that this thread has; returns those kept, by name."""
    effective, permitted, inheritable = _capget()
    wanted = _mask(keep)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if effective & _mask(["CAP_SETPCAP"]):  # root: what an execve could grant goes too
        for bit in range(_last_capability() + 1):
            if not wanted >> bit & 1:
                _check(_libc.prctl(_PR_CAPBSET_DROP, bit, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {bit})")
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    kept = permitted & wanted
    if kept != permitted or effective != kept or inheritable & ~wanted:
        _capset(kept, kept, inheritable & wanted)
    names = _names(kept)
    if effective & ~kept:
        log.info("dropped capabilities %s; kept %s", ", ".join(_names(effective & ~kept)),
                 ", ".join(names) or "none")
    return names


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 1024


def drop_after_start(collectors, port: int | None = None, keep=()) -> list[str]:
    """Once the collectors are built: keep what their ``capabilities_after_start`` and ``keep`` name, and
    CAP_NET_BIND_SERVICE for a ``port`` below net.ipv4.ip_unprivileged_port_start (the server binds it
    after this). A kernel that refuses is logged once and the exporter runs on as it is."""
    keep = {*keep, *(name for collector in collectors for name in collector.capabilities_after_start)}
    if port is not None and port < _unprivileged_port_start():
        keep.add("CAP_NET_BIND_SERVICE")
    try:
        return drop_capabilities(keep)
    except PrivilegeError as error:
        log.warning("cannot drop capabilities (%s); running with those it has", error)
        return current_capabilities()
