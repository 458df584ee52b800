"""The kernel's protocol counters: /proc/net/snmp, /proc/net/netstat and /proc/net/snmp6.

snmp and netstat hold pairs of lines, a header and its values, per protocol
(net/ipv4/proc.c: snmp_seq_show, netstat_seq_show; net/mptcp/mib.c for MPTcpExt)::

    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens ...
    Tcp: 1 200 120000 -1 42 ...

A protocol may take several pairs (IcmpMsg writes at most 16 fields per pair, and only the message
types seen so far). snmp6 holds one ``name value`` line per field (net/ipv6/proc.c: snmp6_seq_show);
the protocol is the name up to its first "6" (``Ip6InReceives`` -> ``Ip6`` ``InReceives``,
``UdpLite6InErrors`` -> ``UdpLite6`` ``InErrors``), as node_exporter splits it. Values are decimal,
signed (Tcp MaxConn is -1 when there is no limit).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from . import read_bytes


class Table(NamedTuple):
    """One protocol's fields and values, in the kernel's order and spelling."""
    file: str  # "snmp", "netstat" or "snmp6"
    protocol: str  # "Tcp", "TcpExt", "Ip6", ...
    fields: tuple[str, ...]
    values: tuple[int, ...]


# A header line -> (protocol, fields); snmp6's names -> [(protocol, fields, indexes)]. Headers change
# only when the kernel adds fields (IcmpMsg: a message type seen for the first time); cleared when full.
_headers: dict[bytes, tuple[str, tuple[str, ...]]] = {}
_snmp6_layouts: dict[tuple[bytes, ...], list[tuple[str, tuple[str, ...], tuple[int, ...]]]] = {}
_CACHE_ENTRIES = 64


def _header(line: bytes) -> tuple[str, tuple[str, ...]]:
    header = _headers.get(line)
    if header is None:
        protocol, colon, names = line.partition(b":")
        if not colon or not protocol:
            raise ValueError(f"expected 'Protocol: Field ...', got {line[:60]!r}")
        if len(_headers) >= _CACHE_ENTRIES:
            _headers.clear()
        header = _headers[line] = (protocol.decode(), tuple(name.decode() for name in names.split()))
    return header


def parse_tables(data: bytes, file: str) -> list[Table]:
    """The tables of /proc/net/snmp or /proc/net/netstat (``file`` names which)."""
    lines = data.splitlines()
    if len(lines) % 2:
        raise ValueError(f"{file}: {len(lines)} lines, expected header and value lines in pairs")
    tables = []
    for header, line in zip(lines[0::2], lines[1::2]):
        protocol, fields = _header(header)
        label, colon, numbers = line.partition(b":")
        values = tuple(map(int, numbers.split()))
        if label.decode() != protocol or len(values) != len(fields):
            raise ValueError(f"{file}: {protocol} has {len(fields)} fields but the next line is "
                             f"{label.decode(errors='replace')!r} with {len(values)} values")
        tables.append(Table(file, protocol, fields, values))
    return tables


def _snmp6_layout(names: tuple[bytes, ...]) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    layout = _snmp6_layouts.get(names)
    if layout is None:
        protocols: dict[str, tuple[list[str], list[int]]] = {}
        for index, name in enumerate(names):
            text = name.decode()
            six = text.find("6")
            if six < 1 or six == len(text) - 1:
                raise ValueError(f"snmp6: expected a name such as Ip6InReceives, got {text!r}")
            fields, indexes = protocols.setdefault(text[:six + 1], ([], []))
            fields.append(text[six + 1:])
            indexes.append(index)
        if len(_snmp6_layouts) >= _CACHE_ENTRIES:
            _snmp6_layouts.clear()
        layout = _snmp6_layouts[names] = [(protocol, tuple(fields), tuple(indexes))
                                          for protocol, (fields, indexes) in protocols.items()]
    return layout


def parse_snmp6(data: bytes) -> list[Table]:
    """The tables of /proc/net/snmp6 (or /proc/net/dev_snmp6/IFACE), one per protocol."""
    words = data.split()
    if len(words) % 2:
        raise ValueError(f"snmp6: {len(words)} words, expected name value pairs")
    values = list(map(int, words[1::2]))
    return [Table("snmp6", protocol, fields, tuple([values[index] for index in indexes]))
            for protocol, fields, indexes in _snmp6_layout(tuple(words[0::2]))]


def read_tables(net_dir: str = "/proc/net") -> list[Table]:
    """snmp, netstat and snmp6 of ``net_dir``. snmp6 is missing when IPv6 is off (ipv6.disable=1 or no
    ipv6 module): then there are no IPv6 tables, and no error."""
    tables = parse_tables(read_bytes(os.path.join(net_dir, "snmp")), "snmp")
    tables += parse_tables(read_bytes(os.path.join(net_dir, "netstat")), "netstat")
    try:
        tables += parse_snmp6(read_bytes(os.path.join(net_dir, "snmp6")))
    except FileNotFoundError:
        pass
    return tables


class SnmpFiles:
    """snmp, netstat and snmp6 held open: made inside another network namespace (from
    /proc/thread-self/net), the open files go on showing that namespace's counters, read again at every
    ``read_tables()`` without entering it."""

    def __init__(self, net_dir: str = "/proc/thread-self/net"):
        self._fds: dict[str, int] = {}
        try:
            for name in ("snmp", "netstat", "snmp6"):
                try:
                    self._fds[name] = os.open(os.path.join(net_dir, name), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if name != "snmp6":  # snmp6 is absent where IPv6 is off
                        raise
        except BaseException:
            self.close()
            raise

    def read_tables(self) -> list[Table]:
        tables = []
        for name, fd in self._fds.items():
            data = _pread_all(fd)
            tables += parse_snmp6(data) if name == "snmp6" else parse_tables(data, name)
        return tables

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


def _pread_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
