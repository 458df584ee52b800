"""The kernel's text symbols from /proc/kallsyms: address -> function name, for stack samples and drop
locations (shared by the collectors that resolve kernel addresses; none imports another)."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right

__all__ = ["KallsymsUnreadable", "KernelSymbols", "kallsyms_shows_addresses"]


class KallsymsUnreadable(Exception):
    """/proc/kallsyms hides the addresses (kernel.kptr_restrict without CAP_SYSLOG)."""


_KALLSYMS_TEXT = re.compile(rb"([0-9a-f]+) [tTwW] ([^\s]+)")


class KernelSymbols:
    """/proc/kallsyms text symbols as two arrays and a blob: addresses (sorted) and name offsets.

    About 13 bytes per symbol plus the names, a few MB for a whole kernel, instead of a dict or
    list of Python strings (tens of MB).
    """

    def __init__(self, path: str = "/proc/kallsyms"):
        # Streamed into arrays (no Python object per symbol), then sorted through one permutation:
        # the peak stays near three times the final size.
        starts, name_ends, raw = array("Q"), array("I"), bytearray()
        match = _KALLSYMS_TEXT.match
        with open(path, "rb") as file:
            for line in file:
                found = match(line)
                if found:
                    starts.append(int(found[1], 16))
                    raw += found[2]
                    name_ends.append(len(raw))
        if not starts or max(starts) == 0:
            raise KallsymsUnreadable("/proc/kallsyms shows no addresses (kernel.kptr_restrict): "
                                     "run as root or with CAP_SYSLOG")
        order = sorted(range(len(starts)), key=starts.__getitem__)
        self._addresses = array("Q", (starts[i] for i in order))
        self._offsets = array("I", [0]) * (len(order) + 1)
        blob = bytearray()
        for position, i in enumerate(order):
            blob += raw[name_ends[i - 1] if i else 0:name_ends[i]]
            self._offsets[position + 1] = len(blob)
        self._names = bytes(blob)

    def __len__(self) -> int:
        return len(self._addresses)

    def function(self, address: int) -> str | None:
        found = self.symbol(address)
        return found[1] if found else None

    def symbol(self, address: int) -> tuple[int, str] | None:
        """(start address, name) of the last text symbol at or below ``address``, or None."""
        index = bisect_right(self._addresses, address) - 1
        if index < 0:
            return None
        return (self._addresses[index],
                self._names[self._offsets[index]:self._offsets[index + 1]].decode(errors="replace"))

    def address_of(self, name: str) -> int | None:
        """The address of the text symbol ``name`` (the lowest, if several), or None."""
        needle, start = name.encode(), 0
        while (found := self._names.find(needle, start)) >= 0:
            index = bisect_right(self._offsets, found) - 1
            if self._offsets[index] == found and self._offsets[index + 1] == found + len(needle):
                return self._addresses[index]
            start = found + 1
        return None

    def memory_bytes(self) -> int:
        return (self._addresses.itemsize * len(self._addresses) + self._offsets.itemsize * len(self._offsets)
                + len(self._names))


def kallsyms_shows_addresses(path: str = "/proc/kallsyms") -> bool:
    """False where kernel.kptr_restrict shows every address as 0 (per-CPU symbols are 0 anyway)."""
    try:
        with open(path, "rb") as file:
            for line in file:
                address, kind = line.split()[:2]
                if kind in (b"t", b"T"):
                    return int(address, 16) != 0
    except (OSError, ValueError):
        pass
    return False
