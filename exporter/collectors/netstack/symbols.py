"""Kernel function names for NET_RX stack frames, kept current, and the online CPUs.

``CurrentSymbols`` wraps the kallsyms index (``exporter/bpf/kallsyms.py``) with the loaded modules of
``/proc/modules``: when that file changes (a module loaded or unloaded), ``refresh()`` reads kallsyms
again, so frames of modules loaded after start resolve. An address in neither the kernel's text
(``_stext`` to ``_etext``) nor a module's is code the kernel generated: a BPF program (programs come
and go all the time, and one loaded since kallsyms was read would resolve to whatever precedes it), so
it is named as a BPF program, never as a stage marker. The
sources are paths, so tests can stand in for modprobe and CPU hotplug.
"""

from __future__ import annotations

import os
from bisect import bisect_right

from ...bpf.kallsyms import KernelSymbols
from .stages import BPF_PROGRAM_PREFIX

__all__ = ["CurrentSymbols", "online_cpus", "parse_cpu_list"]


def _module_extents(text: bytes) -> tuple[list[int], list[int]]:
    """Sorted (starts, ends) of the modules' core text from /proc/modules lines
    ("veth 40960 0 - Live 0xffffffffc0a01000"; the address reads 0 without CAP_SYSLOG)."""
    extents = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1].isdigit() and fields[5].startswith(b"0x"):
            try:
                start = int(fields[5], 16)
            except ValueError:  # not this format: no extent rather than no symbols
                continue
            if start:
                extents.append((start, start + int(fields[1])))
    extents.sort()
    return [start for start, _ in extents], [end for _, end in extents]


class CurrentSymbols:
    """Function names of kernel text addresses, re-read when the set of loaded modules changes."""

    def __init__(self, kallsyms_path: str = "/proc/kallsyms", modules_path: str = "/proc/modules"):
        self._kallsyms_path = kallsyms_path
        self._modules_path = modules_path
        self._modules = None
        self.refresh()

    def _read_modules(self) -> bytes:
        try:
            with open(self._modules_path, "rb") as file:
                return file.read()
        except FileNotFoundError:  # a kernel without loadable modules
            return b""

    def refresh(self) -> bool:
        """Read kallsyms again if /proc/modules changed since the last read; True if it did (names
        resolved before may be stale). Raises what reading kallsyms raises, keeping the old index; each
        change is tried once, so a kallsyms that cannot be read is not read at every scrape."""
        modules = self._read_modules()
        if modules == self._modules:
            return False
        first = self._modules is None
        self._modules = modules
        try:
            symbols = KernelSymbols(self._kallsyms_path)  # after /proc/modules: a module loaded between
        except BaseException:                            # the two reads shows up at the next refresh
            if first:
                self._modules = None
            raise
        self._symbols = symbols
        self._core_start = symbols.address_of("_stext") or 0
        self._core_end = symbols.address_of("_etext") or 2**64  # no _etext: every address is kernel text
        self._starts, self._ends = _module_extents(modules)
        return True

    def function(self, address: int) -> str | None:
        found = self._symbols.symbol(address)
        if found is None:
            return None
        start, name = found
        if self._core_start <= address < self._core_end:
            return name
        index = bisect_right(self._starts, address) - 1
        if index >= 0 and address < self._ends[index]:
            return name  # in a module's text, and its symbols were read after it loaded
        # Neither kernel nor module text: code the kernel made at run time (JIT-compiled BPF programs,
        # trampolines). Programs loaded since kallsyms was read resolve to whatever precedes them.
        return name if name.startswith(BPF_PROGRAM_PREFIX) else BPF_PROGRAM_PREFIX

    def memory_bytes(self) -> int:
        return self._symbols.memory_bytes()


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,6"`` (the kernel's cpulist format) -> ``[0, 1, 2, 3, 6]``."""
    cpus = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    try:
        with open(path) as file:
            return parse_cpu_list(file.read())
    except OSError:
        return list(range(os.cpu_count() or 1))
