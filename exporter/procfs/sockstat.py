"""Socket counts and memory: /proc/net/sockstat and /proc/net/sockstat6.

Lines of ``PROTO: key value key value ...`` (net/ipv4/proc.c: sockstat_seq_show, net/ipv6/proc.c:
sockstat6_seq_show, net/socket.c: socket_seq_show)::

    sockets: used 15
    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 206
    UDP: inuse 0 mem 249
    FRAG: inuse 0 memory 0
    TCP6: inuse 0

``mem`` is in pages (proto_memory_allocated); FRAG's ``memory`` is in bytes (frag_mem_limit). Both come
out as ``memory_bytes``. inuse, tw and ``sockets used`` count the reading namespace's sockets; TCP's
orphan and alloc and every ``mem`` are the whole kernel's (the protocol's global counters).
"""

from __future__ import annotations

import os
import resource
from typing import NamedTuple

from . import read_bytes

# key as the kernel writes it -> (name, unit multiplier: None for the page size)
_KEYS = {b"inuse": ("inuse", 1), b"orphan": ("orphan", 1), b"tw": ("tw", 1), b"alloc": ("alloc", 1),
         b"mem": ("memory_bytes", None), b"memory": ("memory_bytes", 1)}
FIELDS = ("inuse", "orphan", "tw", "alloc", "memory_bytes")


class Sockstat(NamedTuple):
    sockets_used: int | None  # "sockets: used", None if the file has no such line
    protocols: dict[str, dict[str, int]]  # "TCP" -> {"inuse": 1, ..., "memory_bytes": 843776}; FIELDS only


def parse_sockstat(data: bytes, page_size: int, into: Sockstat | None = None) -> Sockstat:
    """One file's lines, added to ``into`` if given (sockstat6 after sockstat). Keys the kernel may
    add later are left out: their unit is unknown."""
    sockets_used = into.sockets_used if into else None
    protocols = into.protocols if into else {}
    for line in data.splitlines():
        protocol, colon, rest = line.partition(b":")
        words = rest.split()
        if not colon or len(words) % 2:
            raise ValueError(f"sockstat: expected 'PROTO: key value ...', got {line[:60]!r}")
        if protocol == b"sockets":
            if words[:1] == [b"used"]:
                sockets_used = int(words[1])
            continue
        fields = protocols.setdefault(protocol.decode(), {})
        for key, value in zip(words[0::2], words[1::2]):
            known = _KEYS.get(key)
            if known is not None:
                name, unit = known
                fields[name] = int(value) * (page_size if unit is None else unit)
    return Sockstat(sockets_used, protocols)


def read_sockstat(net_dir: str = "/proc/net", page_size: int | None = None) -> Sockstat:
    """sockstat and sockstat6 of ``net_dir``; sockstat6 is missing when IPv6 is off (no error)."""
    page_size = page_size or resource.getpagesize()
    stat = parse_sockstat(read_bytes(os.path.join(net_dir, "sockstat")), page_size)
    try:
        return parse_sockstat(read_bytes(os.path.join(net_dir, "sockstat6")), page_size, stat)
    except FileNotFoundError:
        return stat
