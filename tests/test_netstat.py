"""netstat collector: parsers on recorded files, names and types, and exact kernel counter deltas in
namespaces the tests make (/proc/net is per network namespace: read through /proc/thread-self/net of a
thread inside it, or by an exporter started inside it)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import in_netns, promtool_problems, samples, value
from exporter.collectors import Scrape
from exporter.collectors.netstat import DEFAULT_FIELDS, NetstatCollector
from exporter.collectors.sockstat import SockstatCollector
from exporter.collectors.softnet import SoftnetCollector
from exporter.exposition import render_text, to_metric
from exporter.procfs.snmp import Table, parse_snmp6, parse_tables, read_tables

# Recorded on Linux 6.18 (Ip, Tcp, Udp: full lines), with IcmpMsg split over two pairs as the kernel
# writes it past 16 message types (shortened here to 2 + 1).
SNMP_6_18 = b"""\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 3212 0 0 0 0 0 3212 2879 0 0 0 0 0 0 0 0 0 2879
IcmpMsg: InType0 InType3
IcmpMsg: 4 1
IcmpMsg: OutType8
IcmpMsg: 4
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 42 2 0 0 3 3127 2796 7 0 60 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 84 5 0 85 1 0 0 0 0
"""
# An older kernel's lines (before Linux 3.10: no InCsumErrors, IgnoredMulti, MemErrors, OutTransmits).
SNMP_OLD = b"""\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates
Ip: 1 64 100 0 0 0 0 0 100 90 0 0 0 0 0 0 0 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts
Tcp: 1 200 120000 -1 4 2 0 0 1 50 40 0 0 1
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 10 2 0 11 0 0
"""
NETSTAT = b"""\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPOFODrop
TcpExt: 0 17 17 2 0
MPTcpExt: MPCurrEstab MPTCPRetrans
MPTcpExt: 1 0
"""
SNMP6 = b"""\
Ip6InReceives                   \t1
Ip6InOctets                     \t128
Icmp6InMsgs                     \t1
Icmp6InType1                    \t1
Udp6NoPorts                     \t3
UdpLite6InErrors                \t0
"""


def test_two_line_tables_as_the_kernel_writes_them():
    tables = parse_tables(SNMP_6_18, "snmp")
    assert [table.protocol for table in tables] == ["Ip", "IcmpMsg", "IcmpMsg", "Tcp", "Udp"]
    tcp = tables[3]
    assert tcp.file == "snmp" and dict(zip(tcp.fields, tcp.values))["MaxConn"] == -1
    assert tables[1] == Table("snmp", "IcmpMsg", ("InType0", "InType3"), (4, 1))
    assert tables[2] == Table("snmp", "IcmpMsg", ("OutType8",), (4,))


def test_snmp6_names_split_after_the_first_six():
    tables = parse_snmp6(SNMP6)
    assert tables == [Table("snmp6", "Ip6", ("InReceives", "InOctets"), (1, 128)),
                      Table("snmp6", "Icmp6", ("InMsgs", "InType1"), (1, 1)),
                      Table("snmp6", "Udp6", ("NoPorts",), (3,)),
                      Table("snmp6", "UdpLite6", ("InErrors",), (0,))]


@pytest.mark.parametrize("data", [
    b"Tcp: A B\nTcp: 1\n",  # fewer values than fields
    b"Tcp: A B\nUdp: 1 2\n",  # values of another protocol
    b"Tcp: A B\n",  # a header without values
    b"Tcp A B\nTcp 1 2\n",  # no colon
    b"Tcp: A\nTcp: x\n",  # not a number
])
def test_malformed_two_line_files_are_refused(data):
    with pytest.raises(ValueError):
        parse_tables(data, "snmp")


@pytest.mark.parametrize("data", [b"Ip6InReceives 1\nIp6InOctets\n", b"NoSixHere 1\n", b"Ip6 1\n", b"Ip6X y\n"])
def test_malformed_snmp6_is_refused(data):
    with pytest.raises(ValueError):
        parse_snmp6(data)


def _recorded(tmp_path, snmp: bytes, with_snmp6: bool = True):
    (tmp_path / "snmp").write_bytes(snmp)
    (tmp_path / "netstat").write_bytes(NETSTAT)
    if with_snmp6:
        (tmp_path / "snmp6").write_bytes(SNMP6)
    return str(tmp_path)


def _families(collector) -> dict:
    return {family.name: family for family in collector.read()}


def test_names_types_and_help_of_every_field(tmp_path):
    families = _families(NetstatCollector(".*", _recorded(tmp_path, SNMP_6_18)))
    gauges = {name for name, family in families.items() if family.type == "gauge"}
    assert gauges == {f"netio_netstat_{key.lower()}" for key in (
        "Ip_Forwarding", "Ip_DefaultTTL", "Tcp_RtoAlgorithm", "Tcp_RtoMin", "Tcp_RtoMax", "Tcp_MaxConn",
        "Tcp_CurrEstab", "MPTcpExt_MPCurrEstab")}
    assert all(family.type == "counter" for name, family in families.items() if name not in gauges)
    retrans = families["netio_netstat_tcp_retranssegs"]
    assert retrans.help == "The kernel's Tcp RetransSegs counter, from /proc/net/snmp."
    assert retrans.samples == [("_total", (), 7)]
    assert families["netio_netstat_tcp_maxconn"].samples == [("", (), -1)]
    assert families["netio_netstat_tcpext_listenoverflows"].help.endswith("from /proc/net/netstat.")
    assert families["netio_netstat_udp6_noports"].samples == [("_total", (), 3)]
    assert families["netio_netstat_udp6_noports"].help.endswith("from /proc/net/snmp6.")
    assert {"netio_netstat_icmpmsg_intype0", "netio_netstat_icmpmsg_outtype8",
            "netio_netstat_icmp6_intype1"} <= set(families)
    text = render_text(families.values()).decode()
    assert "netio_netstat_tcp_retranssegs_total 7\n" in text and "netio_netstat_tcp_currestab 3\n" in text


def test_a_field_the_kernel_lacks_is_absent_not_zero(tmp_path):
    families = _families(NetstatCollector(DEFAULT_FIELDS, _recorded(tmp_path, SNMP_OLD, with_snmp6=False)))
    assert "netio_netstat_udp_noports" in families and "netio_netstat_tcp_inerrs" in families
    for missing in ("Udp_MemErrors", "Udp_InCsumErrors", "Tcp_InCsumErrors", "Udp6_NoPorts"):
        assert f"netio_netstat_{missing}" not in families


def test_fields_fully_match_protocol_underscore_field(tmp_path):
    net = _recorded(tmp_path, SNMP_6_18)
    assert set(_families(NetstatCollector("Tcp_.*Segs", net))) == {
        "netio_netstat_tcp_insegs", "netio_netstat_tcp_outsegs", "netio_netstat_tcp_retranssegs"}
    assert set(_families(NetstatCollector("Tcp_InSeg", net))) == set()  # no partial match
    assert _families(NetstatCollector("^$", net)) == {}


def test_the_default_selection_of_a_recorded_kernel(tmp_path):
    names = set(_families(NetstatCollector(DEFAULT_FIELDS, _recorded(tmp_path, SNMP_6_18))))
    assert {"netio_netstat_udp_noports", "netio_netstat_udp_rcvbuferrors", "netio_netstat_tcp_retranssegs",
            "netio_netstat_tcpext_listenoverflows", "netio_netstat_tcpext_listendrops",
            "netio_netstat_tcpext_tcpofodrop", "netio_netstat_udp6_noports", "netio_netstat_ip_forwarding",
            "netio_netstat_tcp_currestab", "netio_netstat_udp_incsumerrors"} <= names
    assert not names & {"netio_netstat_ip_defaultttl", "netio_netstat_tcp_rtomin", "netio_netstat_mptcpext_mpcurrestab",
                        "netio_netstat_ip6_inreceives", "netio_netstat_icmpmsg_intype0"}


def test_every_kernel_field_here_has_a_valid_name_and_parses():
    """This kernel's own files: every table consistent, every name a valid metric name."""
    tables = read_tables()
    assert {"Ip", "Tcp", "Udp", "TcpExt", "IpExt"} <= {table.protocol for table in tables}
    families = NetstatCollector(".*").read()
    assert len(families) == sum(len(table.fields) for table in tables)
    assert samples(render_text(families).decode())


def _netstat(collector: NetstatCollector, ns: str) -> dict:
    with in_netns(ns):
        return samples(render_text(collector.read()).decode())


def test_udp_to_a_closed_port_moves_no_ports_by_the_datagrams_sent(netns):
    ns = netns()
    collector = NetstatCollector(net_dir="/proc/thread-self/net")  # this thread's namespace, not the process's
    datagrams = 37
    with in_netns(ns):
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = _netstat(collector, ns)
    for _ in range(datagrams):
        sender.sendto(b"x" * 20, ("127.0.0.1", port))
    after = _netstat(collector, ns)
    sender.close()

    def moved(name):
        return value(after, name) - value(before, name)

    assert moved("netio_netstat_udp_noports_total") == datagrams
    assert moved("netio_netstat_udp_outdatagrams_total") == datagrams
    assert moved("netio_netstat_udp_indatagrams_total") == 0
    assert moved("netio_netstat_udp_inerrors_total") == 0


def test_a_full_listen_queue_moves_listen_overflows_by_the_syns_dropped(netns):
    """backlog 1: the accept queue is full at 2 connections (sk_acceptq_is_full: more than the backlog);
    each further SYN is dropped once, counted in ListenOverflows and ListenDrops. The counters are read long before
    the clients' first SYN retransmission (1 s), which would count again."""
    ns = netns()
    collector = NetstatCollector(net_dir="/proc/thread-self/net")
    clients = 8
    with in_netns(ns):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # nothing accepts
        connecting = [socket.socket() for _ in range(clients)]
    before = _netstat(collector, ns)
    for client in connecting:
        client.setblocking(False)
        client.connect_ex(listener.getsockname())  # loopback: the handshake or the drop happens right here
    after = _netstat(collector, ns)
    for client in connecting:
        client.close()
    listener.close()

    def moved(name):
        return value(after, name) - value(before, name)

    assert moved("netio_netstat_tcpext_listenoverflows_total") == clients - 2
    assert moved("netio_netstat_tcpext_listendrops_total") == clients - 2


def test_a_scrape_of_the_three_collectors_passes_promtool(netns, exporter):
    """promtool's only remark is the camelCase of the kernel's field names (as for node_exporter's
    node_netstat_*); the types are right: counters end in _total, levels are gauges."""
    process = exporter(netns(), "--collector.netstat.fields", ".*")
    body = process.get()[2]
    assert promtool_problems(body) == []
    assert b"# TYPE netio_netstat_tcp_currestab gauge\n" in body
    assert b"# TYPE netio_netstat_tcp_retranssegs_total counter\n" in body
    parsed = samples(body.decode())
    assert value(parsed, "netio_netstat_udp_noports_total") == 0  # a fresh namespace
    for collector in ("netstat", "softnet", "sockstat"):
        assert value(parsed, "netio_scrape_collector_success", collector=collector) == 1
    assert value(parsed, "netio_sockstat_inuse", protocol="TCP") is not None
    assert value(parsed, "netio_softnet_processed_total", cpu="0") is not None


@pytest.mark.parametrize("make, file", [(NetstatCollector, "snmp"), (SoftnetCollector, "softnet_stat"),
                                        (SockstatCollector, "sockstat")])
@pytest.mark.parametrize("content, error", [(None, "No such file or directory"), (b"garbage\n", "ValueError")],
                         ids=["missing", "malformed"])
def test_a_missing_or_malformed_file_fails_the_collector_with_one_log_line(make, file, content, error, tmp_path,
                                                                         caplog):
    if content is not None:
        (tmp_path / file).write_bytes(content)
    collector = make(net_dir=str(tmp_path))
    scrape = Scrape([collector])
    for _ in range(3):
        parsed = samples(render_text(scrape.families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector=collector.name) == 0
    failures = [record.getMessage() for record in caplog.records if collector.name in record.getMessage()]
    assert len(failures) == 1 and error in failures[0]


def test_ipv6_off_is_no_failure(tmp_path):
    """snmp6 and sockstat6 do not exist when IPv6 is disabled: the IPv4 families alone, success 1."""
    net = _recorded(tmp_path, SNMP_6_18, with_snmp6=False)
    (tmp_path / "sockstat").write_bytes(b"sockets: used 3\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 2\n")
    parsed = samples(render_text(Scrape([NetstatCollector(".*", net), SockstatCollector(net)]).families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector="netstat") == 1
    assert value(parsed, "netio_scrape_collector_success", collector="sockstat") == 1
    assert not [name for name, _ in parsed if name.startswith(("netio_netstat_Ip6", "netio_netstat_Udp6"))]


def test_a_bad_fields_regex_is_a_clear_error():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "exporter", "--collector.netstat.fields", "("],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "--collector.netstat.fields" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


# node_exporter's default --collector.netstat.fields (upstream's current one; Debian's 1.5.0 lacks
# TCPOFOQueue and TCPRcvQDrop).
NODE_EXPORTER_DEFAULT = (r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
                         r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)"
                         r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
                         r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$")


def test_the_default_fields_hold_node_exporters_on_this_kernel():
    ours = {family.name for family in NetstatCollector().read()}
    theirs = {family.name for family in NetstatCollector(NODE_EXPORTER_DEFAULT).read()}
    assert theirs and theirs <= ours


def test_the_three_collectors_encode_like_generate_latest():
    families = Scrape([NetstatCollector(".*"), SoftnetCollector(), SockstatCollector()]).families()
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self):
            return [to_metric(family) for family in families]

    registry.register(Fixed())
    ours, reference = render_text(families).decode(), generate_latest(registry).decode()
    assert samples(ours) == samples(reference)

    def headers(text):
        return [(family.name, family.type, family.documentation) for family in text_string_to_metric_families(text)]
    assert headers(ours) == headers(reference)
