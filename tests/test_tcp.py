"""tcp collector against the real kernel, both accounting methods (``method``: kernel and polling): exact
totals from tcp_info, states, retransmissions, IPv6, sockets open at start, concurrent scrapes, and the
exposition; then polling's own behaviour, the parser and the bookkeeping on synthetic input. What only
the kernel method does (short-lived connections, exactly-once closes) is in test_tcp_kernel.py.

Every kernel test runs in namespaces it creates; the collector is created and read inside ``in_netns``,
so its netlink socket and its iterator passes see only that namespace's sockets.
"""

from __future__ import annotations

import argparse

import socket
import struct
import subprocess
import threading
import time


import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from tests.support import close_after_test, in_netns, require, run, samples, value
from exporter.collectors import Scrape
from exporter.collectors.tcp import RTT_BOUNDS_US, STATES, TcpCollector, polling
from exporter.flags import port_list
from exporter.exposition import render_text
from exporter.netlink.core import NLM_F_DUMP_INTR, DumpInterrupted
from exporter.netlink.sock_diag import INET_DIAG_INFO, TCP_INFO_COUNTER_NAMES, SockDiagReader

PORT = 5001  # the listed service port; free in a fresh namespace
COUNTER_METRICS = {  # tcp_info field -> sample name
    "bytes_sent": "netio_tcp_sent_bytes_total",
    "bytes_acked": "netio_tcp_acked_bytes_total",
    "bytes_received": "netio_tcp_received_bytes_total",
    "bytes_retrans": "netio_tcp_retransmitted_bytes_total",
    "segs_out": "netio_tcp_sent_segments_total",
    "segs_in": "netio_tcp_received_segments_total",
    "total_retrans": "netio_tcp_retransmitted_segments_total",
}
# struct tcp_info offsets, written out from include/uapi/linux/tcp.h independently of the parser.
_TCP_INFO = {"state": (0, "B"), "unacked": (24, "I"), "total_retrans": (100, "I"), "bytes_acked": (120, "Q"),
             "bytes_received": (128, "Q"), "segs_out": (136, "I"), "segs_in": (140, "I"),
             "bytes_sent": (200, "Q"), "bytes_retrans": (208, "Q")}


# --- helpers -------------------------------------------------------------------------------------

def _render(collector: TcpCollector, ns: str) -> str:
    with in_netns(ns):
        return render_text(Scrape([collector]).families()).decode()


def _scrape(collector: TcpCollector, ns: str) -> dict:
    return samples(_render(collector, ns))


def _tcp_info(sock: socket.socket) -> dict[str, int]:
    """The kernel's own tcp_info of one socket, by getsockopt."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    return {name: struct.unpack_from("=" + fmt, raw, offset)[0] for name, (offset, fmt) in _TCP_INFO.items()}


def _quiet(sockets: list[socket.socket], timeout: float = 10.0) -> list[dict[str, int]]:
    """Wait until nothing is in flight and two readings 100 ms apart agree; return the last reading."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        reading = [_tcp_info(sock) for sock in sockets]
        if reading == last and all(info["unacked"] == 0 for info in reading):
            return reading
        last = reading
        time.sleep(0.1)
    raise AssertionError("sockets did not go quiet")


def _ss_counters(ns: str, port: int) -> list[dict[str, int]]:
    """`ss -tin` for the sockets on local port ``port`` (ss leaves out counters that are zero)."""
    output = run("ip", "netns", "exec", ns, "ss", "-tinH", "state", "established", f"( sport = :{port} )").stdout
    readings = []
    for line in output.splitlines():
        fields = dict(item.split(":", 1) for item in line.split() if ":" in item and item.split(":", 1)[1].isdigit())
        if "segs_out" in fields:  # the tcp_info line of a socket
            readings.append({name: int(fields.get(name, 0)) for name in COUNTER_METRICS})
    return readings


def _connect_pairs(ns: str, count: int, family=socket.AF_INET, host="127.0.0.1", port=PORT):
    with in_netns(ns):
        listener = socket.socket(family)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(64)
        pairs = []
        for _ in range(count):
            client = socket.create_connection((host, port))
            server, _ = listener.accept()
            pairs.append((client, server))
    return listener, pairs


def _exchange(pairs, request: int, response: int) -> None:
    for client, server in pairs:
        client.sendall(b"q" * request)
        assert len(server.recv(request, socket.MSG_WAITALL)) == request
        server.sendall(b"r" * response)
        assert len(client.recv(response, socket.MSG_WAITALL)) == response


def _moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - (value(before, name, **labels) or 0)


def _close_all(pairs: list, *listeners: socket.socket) -> None:
    for client, server in pairs:
        client.close()
        server.close()
    for listener in listeners:
        listener.close()


def _settle(ns: str, timeout: float = 10.0) -> None:
    """Wait until every TCP socket in the namespace is established, listening or in TIME_WAIT."""
    with in_netns(ns):
        reader = SockDiagReader()
    try:
        deadline = time.monotonic() + timeout
        while any(sock.state not in (1, 6, 10) for sock in reader.dump_tcp_sockets()):
            if time.monotonic() > deadline:
                raise AssertionError("sockets did not settle")
            time.sleep(0.05)
    finally:
        reader.close()


# --- real kernel ---------------------------------------------------------------------------------


@pytest.fixture(params=["kernel", "polling"])
def method(request) -> str:
    return request.param


def _collector_in(ns: str, method: str, ports: frozenset = frozenset({PORT})) -> TcpCollector:
    """A TcpCollector whose sock_diag socket (or BPF accounting) belongs to namespace ``ns``."""
    with in_netns(ns):
        collector = TcpCollector(ports, kernel=method == "kernel")
    close_after_test(collector)
    require(collector.method == method, f"the {method} method did not start (eBPF needs root and BTF)")
    return collector


def test_totals_on_a_listed_port_move_by_exactly_the_kernels_tcp_info(netns, method):
    ns = netns()
    clients, request, response = 3, 3000, 30_000  # small enough to sit in socket buffers unread
    collector = _collector_in(ns, method)
    listener, pairs = _connect_pairs(ns, clients)
    baseline = _quiet([server for _, server in pairs])
    before = _scrape(collector, ns)  # the accepted sockets are already known: the test measures deltas
    _exchange(pairs, request, response)
    after_exchange = _quiet([server for _, server in pairs])
    after = _scrape(collector, ns)

    for field, name in COUNTER_METRICS.items():
        kernel = sum(now[field] - then[field] for now, then in zip(after_exchange, baseline))
        assert _moved(before, after, name, local_port=str(PORT)) == kernel, name
    # What the test moved, as the kernel counts it (no SYN or FIN inside the window).
    assert _moved(before, after, "netio_tcp_received_bytes_total", local_port=str(PORT)) == clients * request
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port=str(PORT)) == clients * response
    assert _moved(before, after, "netio_tcp_acked_bytes_total", local_port=str(PORT)) == clients * response
    assert _moved(before, after, "netio_tcp_retransmitted_segments_total", local_port=str(PORT)) == 0
    # ss reads the same tcp_info: its absolute values add up to what the kernel reported.
    by_ss = _ss_counters(ns, PORT)
    assert len(by_ss) == clients
    for field in ("bytes_received", "bytes_acked", "segs_in", "segs_out", "bytes_sent"):
        assert sum(reading[field] for reading in by_ss) == sum(info[field] for info in after_exchange), field
    # The client ends have ephemeral ports: they and the scrape's own traffic are "other".
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port="other") == clients * request
    assert value(after, "netio_tcp_connections", local_port=str(PORT), state="established") == clients
    assert value(after, "netio_tcp_connections", local_port=str(PORT), state="listen") == 1
    assert value(after, "netio_tcp_connections", local_port="other", state="established") == clients
    _close_all(pairs, listener)


def test_sockets_open_at_start_count_from_zero(netns, method):
    ns = netns()
    listener, pairs = _connect_pairs(ns, 2)
    _exchange(pairs, 500, 1500)
    before = _quiet([sock for pair in pairs for sock in pair])
    collector = _collector_in(ns, method)  # created after the traffic: its sockets are the baseline
    parsed = _scrape(collector, ns)
    for name in COUNTER_METRICS.values():
        assert value(parsed, name, local_port=str(PORT)) == 0, name
        assert value(parsed, name, local_port="other") == 0, name
    assert value(parsed, "netio_tcp_connections", local_port=str(PORT), state="established") == 2
    _exchange(pairs, 70, 30)  # what they move from now on counts
    after = _quiet([sock for pair in pairs for sock in pair])
    moved = _scrape(collector, ns)
    servers = slice(1, None, 2)
    for field, name in COUNTER_METRICS.items():
        kernel = sum(now[field] - then[field] for now, then in zip(after[servers], before[servers]))
        assert value(moved, name, local_port=str(PORT)) == kernel, name
    assert value(moved, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 2 * 70
    assert value(moved, "netio_tcp_received_bytes_total", local_port="other") == 2 * 30
    # A socket that appears later counts in full: the client's SYN is one acknowledged byte.
    with in_netns(ns):
        client = socket.create_connection(("127.0.0.1", PORT))
    server, _ = listener.accept()
    _exchange([(client, server)], 9, 0)
    _quiet([client, server])
    later = _scrape(collector, ns)
    assert _moved(moved, later, "netio_tcp_acked_bytes_total", local_port="other") == 9 + 1
    assert _moved(moved, later, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 9
    assert value(later, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 0
    _close_all(pairs + [(client, server)], listener)


def test_polling_closed_sockets_keep_their_bytes_and_count_once(netns):
    ns = netns()
    collector = _collector_in(ns, "polling")
    listener, pairs = _connect_pairs(ns, 4)
    _exchange(pairs, 1000, 2000)
    _quiet([sock for pair in pairs for sock in pair])
    live = _scrape(collector, ns)
    assert value(live, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 0

    # Two close from the client side first (the server ends go through CLOSE_WAIT/LAST_ACK and leave the
    # dump), two from the server side first (the server ends enter TIME_WAIT: no tcp_info).
    for client, server in pairs[:2]:
        client.close()
        server.close()
    for client, server in pairs[2:]:
        server.close()
        client.close()
    _settle(ns)
    closed = _scrape(collector, ns)
    for name in COUNTER_METRICS.values():  # what they moved after their last scrape (the FINs) is not seen
        assert value(closed, name, local_port=str(PORT)) == value(live, name, local_port=str(PORT)), name
    assert value(closed, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 4 * 1000
    assert value(closed, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 4
    assert value(closed, "netio_tcp_connections_closed_total", local_port="other") == 4
    assert value(closed, "netio_tcp_connections", local_port=str(PORT), state="time_wait") == 2
    again = _scrape(collector, ns)  # TIME_WAIT sockets still in the dump are not counted twice
    assert value(again, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 4

    # A connection opened and closed between two scrapes: counted as closed, its bytes unseen.
    with in_netns(ns):
        client = socket.create_connection(("127.0.0.1", PORT))
    server, _ = listener.accept()
    _exchange([(client, server)], 100, 100)
    server.close()
    client.close()
    _settle(ns)
    later = _scrape(collector, ns)
    assert value(later, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 5  # its TIME_WAIT end
    assert value(later, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 4 * 1000
    listener.close()


def test_states_land_under_the_right_label(netns, method):
    ns = netns()
    listener, pairs = _connect_pairs(ns, 2)
    collector = _collector_in(ns, method, frozenset())
    client, server = pairs.pop()
    client.close()  # the active closer ends in TIME_WAIT
    server.close()
    _settle(ns)
    text = _render(collector, ns)
    connections = [line for line in text.splitlines() if line.startswith("netio_tcp_connections{")]
    expected = {"established": 2, "listen": 1, "time_wait": 1}
    assert connections == [f'netio_tcp_connections{{state="{state}"}} {expected.get(state, 0)}' for state in STATES]
    _close_all(pairs, listener)


def test_request_sockets_count_by_state_only(netns, method):
    """A handshake whose last ACK never arrives leaves a request socket (SYN_RECV, no tcp_info)."""
    ns = netns()
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=(
        "table inet netio_test {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  tcp dport {PORT} tcp flags & syn != syn drop\n }}\n}}\n"))
    collector = _collector_in(ns, method)
    with in_netns(ns):
        listener = socket.socket()
        listener.bind(("127.0.0.1", PORT))
        listener.listen(8)
        client = socket.create_connection(("127.0.0.1", PORT))  # established on its side at once
    with in_netns(ns):
        reader = SockDiagReader()

    def wait_for_request_sockets(count: int) -> None:
        deadline = time.monotonic() + 10
        while len([sock for sock in reader.dump_tcp_sockets() if sock.state == 3]) != count:
            assert time.monotonic() < deadline, f"expected {count} request sockets"
            time.sleep(0.05)

    wait_for_request_sockets(1)
    first = _scrape(collector, ns)
    assert value(first, "netio_tcp_connections", local_port=str(PORT), state="syn_recv") == 1
    assert value(first, "netio_tcp_connections", local_port="other", state="established") == 1
    listener.close()  # its request socket goes at its next timer, and was never a connection
    wait_for_request_sockets(0)
    reader.close()
    second = _scrape(collector, ns)
    assert value(second, "netio_tcp_connections", local_port=str(PORT), state="syn_recv") == 0
    assert value(second, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 1  # the listener
    assert value(second, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 0
    client.close()


def test_retransmissions_under_packet_loss(netns, method):
    ns = netns()
    collector = _collector_in(ns, method, frozenset())
    listener, pairs = _connect_pairs(ns, 1)
    client, server = pairs[0]
    before = _scrape(collector, ns)
    # Drop a fifth of what the client sends to the server, inside the namespace only. The input hook:
    # a drop on output is a local send error the sender retries, not a loss it retransmits.
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=(
        "table inet netio_test {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  tcp dport {PORT} numgen random mod 5 == 0 drop\n }}\n}}\n"))
    size = 4 << 20
    received = []
    reader = threading.Thread(target=lambda: received.append(len(server.recv(size, socket.MSG_WAITALL))))
    reader.start()
    for _ in range(64):
        client.sendall(b"d" * (size // 64))
    reader.join(timeout=60)
    assert received == [size]
    kernel = _quiet([client, server], timeout=30)
    after = _scrape(collector, ns)
    retransmitted = _moved(before, after, "netio_tcp_retransmitted_segments_total")
    assert retransmitted >= 1
    assert retransmitted == sum(info["total_retrans"] for info in kernel)
    assert _moved(before, after, "netio_tcp_retransmitted_bytes_total") == sum(info["bytes_retrans"] for info in kernel)
    assert _moved(before, after, "netio_tcp_received_bytes_total") == size
    _close_all(pairs, listener)


def test_ipv6_sockets_are_counted(netns, method):
    ns = netns()
    collector = _collector_in(ns, method)
    listener4, pairs4 = _connect_pairs(ns, 1)
    listener6, pairs6 = _connect_pairs(ns, 2, socket.AF_INET6, "::1", PORT + 1)
    servers6 = [server for _, server in pairs6]
    start = _quiet(servers6)
    collector6 = _collector_in(ns, method, frozenset({PORT + 1}))  # its sockets count from here
    _exchange(pairs6, 600, 0)
    kernel = _quiet(servers6)
    parsed = _scrape(collector6, ns)
    assert value(parsed, "netio_tcp_connections", local_port=str(PORT + 1), state="established") == 2
    assert value(parsed, "netio_tcp_connections", local_port=str(PORT + 1), state="listen") == 1
    assert value(parsed, "netio_tcp_received_bytes_total", local_port=str(PORT + 1)) == 2 * 600
    assert value(parsed, "netio_tcp_received_segments_total", local_port=str(PORT + 1)) == sum(
        now["segs_in"] - then["segs_in"] for now, then in zip(kernel, start))
    # other: the two IPv6 clients and both ends of the IPv4 connection
    assert value(parsed, "netio_tcp_connections", local_port="other", state="established") == 4
    both = _scrape(collector, ns)
    assert value(both, "netio_tcp_connections", local_port=str(PORT), state="established") == 1
    assert value(both, "netio_tcp_connections", local_port="other", state="established") == 5
    assert value(both, "netio_tcp_connections", local_port="other", state="listen") == 1
    assert value(both, "netio_tcp_rtt_seconds_gcount", local_port="other") == 5
    _close_all(pairs4 + pairs6, listener4, listener6)


def test_concurrent_scrapes_do_not_double_count(netns, method):
    ns = netns()
    collector = _collector_in(ns, method)
    listener, pairs = _connect_pairs(ns, 20)
    results: list[dict] = []
    lock = threading.Lock()

    def scrape_together(barrier: threading.Barrier) -> None:
        with in_netns(ns):  # the iterator walks the namespace of the thread that runs a pass
            barrier.wait()
            parsed = samples(render_text(Scrape([collector]).families()).decode())
        with lock:
            results.append(parsed)

    for request in (700, 1300, 0):  # traffic between rounds: every round has deltas to apply
        _exchange(pairs, request, request)
        kernel = _quiet([server for _, server in pairs])
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=scrape_together, args=(barrier,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        final = _scrape(collector, ns)
        for field, name in COUNTER_METRICS.items():
            truth = sum(info[field] for info in kernel)
            assert value(final, name, local_port=str(PORT)) == truth, name
            assert {value(parsed, name, local_port=str(PORT)) for parsed in results} == {truth}, name
        results.clear()
    _close_all(pairs, listener)


def test_promtool_accepts_the_scrape_and_it_matches_generate_latest(netns, method):
    ns = netns()
    listener, pairs = _connect_pairs(ns, 2)
    _exchange(pairs, 10, 10)
    _quiet([sock for pair in pairs for sock in pair])
    for ports in (None, frozenset({PORT, 22})):
        collector = _collector_in(ns, method, ports)
        text = _render(collector, ns)
        checked = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        problems = checked.stdout + checked.stderr
        assert checked.returncode == 0 and problems == "", problems
        registry = CollectorRegistry(auto_describe=True)
        with in_netns(ns):
            registry.register(collector)
            reference = generate_latest(registry).decode()
            ours = render_text(collector.read()).decode()
        assert samples(ours) == samples(reference)
    parsed = samples(text)
    assert value(parsed, "netio_tcp_rtt_seconds_gcount", local_port="other") == 2
    les = [labels for name, labels in parsed if name == "netio_tcp_rtt_seconds_bucket"
           and dict(labels)["local_port"] == "22"]
    assert [dict(labels)["le"] for labels in les] == [floatToGoString(b / 1e6) for b in RTT_BOUNDS_US] + ["+Inf"]
    assert value(parsed, "netio_tcp_connections", local_port="22", state="established") == 0
    _close_all(pairs, listener)


# --- no kernel needed ----------------------------------------------------------------------------

def test_parse_local_ports():
    assert port_list("22,443, 8080") == frozenset({22, 443, 8080})
    assert port_list("65535") == frozenset({65535})
    for bad in ("", "x", "22,,443", "0", "65536", "-1", "22;443", "1e3", "٢٢"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected comma-separated port numbers 1-65535, got '.*'"):
            port_list(bad)


def test_describe_names_every_family():
    collector = TcpCollector()
    close_after_test(collector)
    names = [metric.name for metric in collector.describe()]
    assert names == ["netio_tcp_connections", "netio_tcp_retransmitted_segments", "netio_tcp_acked_bytes",
                     "netio_tcp_received_bytes", "netio_tcp_sent_segments", "netio_tcp_received_segments",
                     "netio_tcp_busy_seconds", "netio_tcp_rwnd_limited_seconds", "netio_tcp_sndbuf_limited_seconds",
                     "netio_tcp_sent_bytes", "netio_tcp_retransmitted_bytes", "netio_tcp_connections_closed",
                     "netio_tcp_rtt_seconds", "netio_tcp_accounting_info"]


class _FakeReader:
    """Stands in for SockDiagReader: replays scripted dumps of (cookie, state, port, counters).

    Its counter snapshots are the counter tuples themselves, fresh objects per dump as the parser's are.
    """

    counter_names = TCP_INFO_COUNTER_NAMES

    def __init__(self):
        self.dumps: list[list[tuple]] = []
        self.interrupt_after: int | None = None

    def visit_tcp_sockets(self, visit) -> None:
        sockets = self.dumps[0]
        for index, (cookie, state, port, counters) in enumerate(sockets):
            if self.interrupt_after is not None and index == self.interrupt_after:
                self.interrupt_after = None
                raise DumpInterrupted(11, "interrupted")
            snapshot = None if counters is None else tuple(list(counters))
            visit(cookie, state, port, None if counters is None else 50, snapshot)
        self.dumps.pop(0)

    class _Identity(dict):
        def __missing__(self, length):
            return tuple

    snapshot_decoders = _Identity()  # any length: the snapshot is the counters already

    @staticmethod
    def counter_columns(snapshots: list[tuple]) -> list[tuple] | None:
        if any(len(snapshot) != len(TCP_INFO_COUNTER_NAMES) for snapshot in snapshots):
            return None
        return list(zip(*snapshots)) or [()] * len(TCP_INFO_COUNTER_NAMES)

    def close(self) -> None:
        pass


def _info(total_retrans=0, bytes_acked=0, bytes_received=0, segs_out=0, segs_in=0,
          busy=0, rwnd=0, sndbuf=0, bytes_sent=0, bytes_retrans=0):
    return (total_retrans, bytes_acked, bytes_received, segs_out, segs_in, busy, rwnd, sndbuf,
            bytes_sent, bytes_retrans)


def _fake_collector(monkeypatch, ports=None) -> tuple[TcpCollector, _FakeReader]:
    """A polling collector whose dumps are the fake's, the first (its baseline at start) empty."""
    fake = _FakeReader()
    fake.dumps = [[]]
    monkeypatch.setattr(polling, "SockDiagReader", lambda: fake)
    return TcpCollector(ports, kernel=False), fake


def _totals(collector: TcpCollector) -> dict:
    return samples(render_text(collector.read()).decode())


def test_32_bit_counters_wrap_and_64_bit_counters_never_go_back(monkeypatch):
    collector, fake = _fake_collector(monkeypatch)
    near = 2**32 - 10
    fake.dumps = [
        [(1, 1, 80, _info(segs_out=near, segs_in=5, total_retrans=near, bytes_sent=1000))],
        [(1, 1, 80, _info(segs_out=20, segs_in=7, total_retrans=near + 1, bytes_sent=900))],  # wrapped; a decrease
        [(1, 1, 80, _info(segs_out=25, segs_in=7, total_retrans=near + 1, bytes_sent=950))],
    ]
    first = _totals(collector)
    assert value(first, "netio_tcp_sent_segments_total") == near  # first seen: in full
    second = _totals(collector)
    assert value(second, "netio_tcp_sent_segments_total") == near + 30  # 10 to the wrap, then 20
    assert value(second, "netio_tcp_received_segments_total") == 7
    assert value(second, "netio_tcp_retransmitted_segments_total") == near + 1
    assert value(second, "netio_tcp_sent_bytes_total") == 1000  # not counted backwards
    third = _totals(collector)
    assert value(third, "netio_tcp_sent_segments_total") == near + 35
    assert value(third, "netio_tcp_sent_bytes_total") == 1050  # moves on from the new reading


def test_bookkeeping_of_closes_duplicates_and_interrupted_dumps(monkeypatch):
    collector, fake = _fake_collector(monkeypatch, frozenset({80}))
    live = _info(bytes_received=100, busy=1_500_000)
    fake.dumps = [
        [(1, 10, 80, _info()), (2, 1, 80, live), (3, 1, 40000, live), (4, 3, 80, None)],  # 4: request socket
        [(1, 10, 80, _info()), (2, 6, 80, None), (5, 6, 80, None), (6, 1, 80, live), (6, 1, 80, live)],
        [(1, 10, 80, _info()), (2, 6, 80, None), (6, 1, 80, _info(bytes_received=150)), (7, 1, 80, live)],
        [(1, 10, 80, _info()), (2, 6, 80, None), (6, 1, 80, _info(bytes_received=150)), (7, 1, 80, live)],
    ]
    first = _totals(collector)
    assert value(first, "netio_tcp_received_bytes_total", local_port="80") == 100
    assert value(first, "netio_tcp_busy_seconds_total", local_port="80") == 1.5
    assert value(first, "netio_tcp_connections", local_port="80", state="syn_recv") == 1
    assert value(first, "netio_tcp_connections_closed_total", local_port="80") == 0
    # 2 enters TIME_WAIT (closed once), 3 leaves (closed once), 5 is first seen in TIME_WAIT (closed once),
    # 4 (a request socket) leaves without counting, 6 appears twice in one dump and counts once.
    second = _totals(collector)
    assert value(second, "netio_tcp_connections_closed_total", local_port="80") == 2
    assert value(second, "netio_tcp_connections_closed_total", local_port="other") == 1
    assert value(second, "netio_tcp_received_bytes_total", local_port="80") == 200
    assert value(second, "netio_tcp_received_bytes_total", local_port="other") == 100
    assert value(second, "netio_tcp_connections", local_port="80", state="time_wait") == 2
    # An interrupted dump changes nothing and is read again.
    fake.interrupt_after = 3
    third = _totals(collector)
    assert value(third, "netio_tcp_received_bytes_total", local_port="80") == 350
    assert value(third, "netio_tcp_connections_closed_total", local_port="80") == 2  # 5 was counted already
    fourth = _totals(collector)
    assert value(fourth, "netio_tcp_received_bytes_total", local_port="80") == 350
    assert value(fourth, "netio_tcp_connections_closed_total", local_port="80") == 2
    assert len(collector._accounting._known[0]) + len(collector._accounting._known[1]) == 4  # only the sockets of the last dump


def _message(state: int, port: int, cookie: int, attributes: list[tuple[int, bytes]], flags: int = 0) -> bytes:
    """A netlink header plus an inet_diag_msg with attributes, as the kernel lays them out."""
    body = struct.pack("=BBBBHH16s16sIQIIIII", socket.AF_INET, state, 0, 0, socket.htons(port), 0,
                       b"", b"", 0, cookie, 0, 0, 0, 0, 0)
    for kind, payload in attributes:
        attr = struct.pack("=HH", 4 + len(payload), kind) + payload
        body += attr + b"\0" * (-len(attr) % 4)
    return struct.pack("=IHHII", 16 + len(body), 20, flags, 1, 0) + body


def _tcp_info_bytes(length: int, **fields) -> bytes:
    raw = bytearray(length)
    offsets = {"rtt": (68, "I"), "total_retrans": (100, "I"), "bytes_acked": (120, "Q"), "segs_in": (140, "I"),
               "bytes_sent": (200, "Q"), "bytes_retrans": (208, "Q")}
    for name, number in fields.items():
        offset, fmt = offsets[name]
        if offset + struct.calcsize(fmt) <= length:
            struct.pack_into("=" + fmt, raw, offset, number)
    return bytes(raw)


def test_parser_fast_path_agrees_with_the_attribute_walk_and_counters_beyond_the_struct_are_absent():
    reader = SockDiagReader()
    seen = []
    parse = reader._parser(lambda cookie, state, port, rtt, snapshot: seen.append(
        (cookie, state, port, rtt, None if snapshot is None else reader.decode_counters(snapshot))))
    full = _tcp_info_bytes(280, rtt=33, segs_in=7, bytes_sent=9000, bytes_retrans=5)
    short = _tcp_info_bytes(104, rtt=44, total_retrans=3)  # a 2.6-era kernel: nothing after total_retrans
    shutdown, mark, cgroup = (8, b"\0"), (15, b"\0\0\0\0"), (21, struct.pack("=Q", 0x0002011C))
    messages = [
        _message(1, 443, 11, [shutdown, mark, (INET_DIAG_INFO, full)]),
        _message(1, 443, 12, [shutdown, mark, (INET_DIAG_INFO, full)]),  # fast path
        _message(1, 443, 13, [shutdown, cgroup, mark, (INET_DIAG_INFO, full)]),  # a different layout
        _message(6, 443, 14, [mark]),  # TIME_WAIT: no tcp_info
        _message(1, 80, 15, [shutdown, mark, (INET_DIAG_INFO, short)]),
        _message(1, 80, 16, [shutdown, mark, (INET_DIAG_INFO, full[:150])]),
        _message(1, 80, 17, [shutdown, mark, (INET_DIAG_INFO, full[:90])]),  # too short to use
    ]
    # Message 16 claims more tcp_info than it carries: its attribute overruns the message, so it is dropped.
    broken = bytearray(messages[5])
    struct.pack_into("=H", broken, 16 + 72 + 8 + 8, 4 + 280)
    messages[5] = bytes(broken)
    for message in messages:
        buf = bytearray(message)
        parse(20, buf, 16, len(buf))
    full_counters = (0, 0, 0, 0, 7, 0, 0, 0, 9000, 5)
    assert seen[0] == (11, 1, 443, 33, full_counters)
    assert seen[1] == (12, 1, 443, 33, full_counters)
    assert seen[2] == (13, 1, 443, 33, full_counters)
    assert seen[3] == (14, 6, 443, None, None)
    assert seen[4] == (15, 1, 80, 44, (3,))  # only the counter a 104-byte tcp_info holds
    assert seen[5] == (16, 1, 80, None, None)
    assert seen[6] == (17, 1, 80, None, None)
    with pytest.raises(DumpInterrupted):
        buf = bytearray(_message(1, 443, 18, [shutdown, mark, (INET_DIAG_INFO, full)], flags=NLM_F_DUMP_INTR))
        parse(20, buf, 16, len(buf))
    reader.close()


def test_counter_columns_agree_with_decoding_one_by_one():
    reader = SockDiagReader()
    assert reader.counter_names == TCP_INFO_COUNTER_NAMES  # kernel 6.18 sends them all...
    length = max(reader.snapshot_decoders)  # ...so its snapshots are the longest
    for count in (reader.COLUMN_BATCH, 7, 1):
        snapshots = [bytes((index * 7 + byte) % 256 for byte in range(length)) for index in range(count)]
        rows = [reader.decode_counters(snapshot) for snapshot in snapshots]
        assert reader.counter_columns(snapshots) == [tuple(column) for column in zip(*rows)]
    assert reader.counter_columns([b"\0" * 4]) is None  # not this kernel's length: decode one by one
    reader.close()
