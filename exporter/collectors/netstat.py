"""netstat: the kernel's protocol counters from /proc/net/snmp, netstat and snmp6, read at scrape time.

One family per kernel field, named ``netio_netstat_<protocol>_<field>`` with the kernel's names in lower
case (``netio_netstat_tcp_retranssegs_total``, ``netio_netstat_tcpext_listenoverflows_total``,
``netio_netstat_udp6_noports_total``): node_exporter keeps the kernel's case
(``node_netstat_Tcp_RetransSegs``), which promtool's lint rejects. Typed: counters end in ``_total``; the
fields that are levels, not counts, are gauges. The help names the field as the kernel spells it.
``--collector.netstat.fields`` selects fields by a full match against ``Protocol_Field``. A field the
running kernel does not write is absent.
"""

from __future__ import annotations

import re

from .. import flags
from ..exposition import Family
from ..procfs.snmp import SnmpFiles, read_tables
from . import Collector, Flags, Registration, namespaces

# What an operator needs for loss and overload; README "netstat" compares it with node_exporter's.
DEFAULT_FIELDS = "|".join((
    r".*_(InErrors|InErrs|InCsumErrors)",
    r"Ip_(Forwarding|ForwDatagrams|InDiscards|OutDiscards|OutNoRoutes|ReasmFails|ReasmTimeout|FragFails)",
    r"Ip6_(OutForwDatagrams|InDiscards|OutDiscards|InNoRoutes|OutNoRoutes|InTooBigErrors|ReasmFails"
    r"|ReasmTimeout|FragFails)",
    r"IpExt_InNoRoutes",
    r"Ip(6|Ext)_(InOctets|OutOctets)",
    r"Icmp6?_(InMsgs|OutMsgs)",
    r"Tcp_(ActiveOpens|PassiveOpens|AttemptFails|EstabResets|CurrEstab|InSegs|OutSegs|RetransSegs|OutRsts)",
    r"TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop|TCPOFODrop|TCPBacklogDrop"
    r"|TCPZeroWindowDrop|PruneCalled|RcvPruned|OfoPruned|TCPReqQFull(Drop|DoCookies)|TCPAbortOn(Data|Close|Memory"
    r"|Timeout|Linger)|TCPAbortFailed|TCPMemoryPressures)",
    r"Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors|MemErrors)",
))

# The fields that are levels (net/ipv4/proc.c writes Forwarding and DefaultTTL from sysctls and Tcp's
# Rto*/MaxConn as constants; CurrEstab and MPCurrEstab go up and down). Every other field is a counter.
GAUGES = frozenset({"Ip_Forwarding", "Ip_DefaultTTL", "Tcp_RtoAlgorithm", "Tcp_RtoMin", "Tcp_RtoMax",
                    "Tcp_MaxConn", "Tcp_CurrEstab", "MPTcpExt_MPCurrEstab"})

# What --collector.netns reports of every other namespace: its loss counters.
NAMESPACE_FIELDS = "|".join((
    r"TcpExt_(ListenOverflows|ListenDrops|TCPBacklogDrop|TCPRcvQDrop|TCPOFODrop)",
    r"Tcp_(RetransSegs|InErrs|OutRsts|CurrEstab)",
    r"Udp6?_(InErrors|NoPorts|RcvbufErrors|SndbufErrors|MemErrors)",
))

_PREFIX = "netio_netstat_"
_VALID_NAME = re.compile(r"[A-Za-z0-9_]+")

# (index of the field in its table, family name, type, help, sample suffix)
_Selected = tuple[tuple[int, str, str, str, str], ...]


class NetstatCollector(Collector):
    """The selection of each table's fields is kept while the kernel writes the same header."""

    name = "netstat"

    def __init__(self, fields: str = DEFAULT_FIELDS, net_dir: str = "/proc/net", namespaces=None):
        self._fields = re.compile(fields)
        self._net_dir = net_dir
        self._selections: dict[tuple[str, str, tuple[str, ...]], _Selected] = {}
        self._namespaces = namespaces  # --collector.netns: every other namespace's NAMESPACE_FIELDS
        self._namespace_fields = re.compile(NAMESPACE_FIELDS)
        self._namespace_selections: dict[tuple[str, str, tuple[str, ...]], _Selected] = {}

    def describe_families(self) -> list[Family]:
        """None: which fields exist is the running kernel's to say. The names all begin netio_netstat_,
        which no other collector uses."""
        return []

    def read(self) -> list[Family]:
        families = []
        for table in read_tables(self._net_dir):
            key = (table.file, table.protocol, table.fields)
            selected = self._selections.get(key)
            if selected is None:
                selected = _remember(self._selections, key, self._select(self._fields, *key))
            values = table.values
            # Family() itself, with the suffix Family.counter().add() would give: half the cost per field
            families += [Family(name, type_, help_, [(suffix, (), values[index])])
                         for index, name, type_, help_, suffix in selected]
        if self._namespaces is not None:
            self._add_namespaces({family.name: family for family in families}, families)
        return families

    def _add_namespaces(self, by_name: dict[str, Family], families: list[Family]) -> None:
        for namespace, tables in self._namespaces.read_each("netstat", SnmpFiles, SnmpFiles.read_tables):
            labels = (("netns", namespace.label),)
            for table in tables:
                key = (table.file, table.protocol, table.fields)
                selected = self._namespace_selections.get(key)
                if selected is None:
                    selected = _remember(self._namespace_selections, key, self._select(self._namespace_fields, *key))
                for index, name, type_, help_, suffix in selected:
                    family = by_name.get(name)
                    if family is None:
                        family = by_name[name] = Family(name, type_, help_)
                        families.append(family)
                    family.samples.append((suffix, labels, table.values[index]))

    @staticmethod
    def _select(fields: re.Pattern, file: str, protocol: str, names: tuple[str, ...]) -> _Selected:
        selected = []
        for index, field in enumerate(names):
            key = f"{protocol}_{field}"
            if not fields.fullmatch(key) or not _VALID_NAME.fullmatch(key):
                continue
            name = _PREFIX + key.lower()
            if key in GAUGES:
                selected.append((index, name, "gauge",
                                 f"The kernel's {protocol} {field} value, from /proc/net/{file}.", ""))
            else:
                selected.append((index, name, "counter",
                                 f"The kernel's {protocol} {field} counter, from /proc/net/{file}.", "_total"))
        return tuple(selected)


def _remember(cache: dict, key, selected: _Selected) -> _Selected:
    if len(cache) >= 64:  # new headers come only with new IcmpMsg types
        cache.clear()
    cache[key] = selected
    return selected


def _add_arguments(options: Flags) -> None:
    options.add("--collector.netstat.fields", dest="netstat_fields", type=flags.regex, metavar="RE",
                default=DEFAULT_FIELDS,
                help="the fields to export: RE fully matches Protocol_Field as the kernel spells it, "
                     "e.g. 'Tcp_.*|TcpExt_ListenOverflows'")


REGISTRATION = Registration(
    name="netstat", help="protocol counters from /proc/net/snmp, netstat and snmp6",
    add_arguments=_add_arguments,
    build=lambda args: NetstatCollector(args.netstat_fields, namespaces=namespaces(args)))
