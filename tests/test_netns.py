"""--collector.netns: every other network namespace's figures with a netns label, from readers made inside
each namespace; the exporter's own namespace unchanged. Real kernel: the exporter runs in a namespace the
test made ("home"); three more namespaces carry known traffic."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

from tests.support import in_netns, run, samples, value, veth_pair

PAYLOAD = 200
UDP_WIRE = PAYLOAD + 14 + 20 + 8  # Ethernet, IPv4, UDP headers


def _send(ns_from: str, ip_to: str, count: int, ns_to: str) -> None:
    with in_netns(ns_to):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((ip_to, 9999))
    with in_netns(ns_from):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, receiver:
        for _ in range(count):
            sender.sendto(b"n" * PAYLOAD, (ip_to, 9999))
        for _ in range(count):
            receiver.recv(2048)


def _device_series(parsed: dict, netns: str | None) -> dict:
    """{(name, device): value} of the link counters of one namespace (None: the exporter's own)."""
    found = {}
    for (name, labels), number in parsed.items():
        labels = dict(labels)
        if name.startswith("netio_network_") and "device" in labels and labels.get("netns") == netns:
            found[name, labels["device"]] = number
    return found


def test_each_namespace_moves_by_its_own_traffic_and_vanishes_when_deleted(netns, exporter):
    home, first, second, third = netns(), netns(), netns(), netns()
    pair = veth_pair(first, second, ip_a="10.198.0.1", ip_b="10.198.0.2")
    alone = veth_pair(third, home, name_a="eth2", name_b="eth2", ip_a="10.197.0.1", ip_b="10.197.0.2")
    include = "|".join(re.escape(name) for name in (first, second, third))
    running = exporter(home, "--collector.netns", "--collector.netns.include", include)
    before = running.scrape()
    _send(first, pair["b"][2], 30, second)      # first -> second: 30 datagrams
    _send(second, pair["a"][2], 11, first)      # second -> first: 11
    _send(third, alone["b"][2], 7, home)        # third -> the exporter's own namespace: 7
    time.sleep(0.05)
    after = running.scrape()

    def moved(name, device, netns=None):
        labels = {"device": device} if netns is None else {"netns": netns, "device": device}
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("netio_network_transmit_packets_total", "eth1", first) == 30
    assert moved("netio_network_receive_bytes_total", "eth1", second) == 30 * UDP_WIRE
    assert moved("netio_network_transmit_packets_total", "eth1", second) == 11
    assert moved("netio_network_receive_bytes_total", "eth1", first) == 11 * UDP_WIRE
    assert moved("netio_network_transmit_packets_total", "eth2", third) == 7
    # The exporter's own namespace: no netns label, only its own interfaces, moved by its own traffic only.
    assert moved("netio_network_receive_packets_total", "eth2") == 7
    assert set(device for _, device in _device_series(after, None)) == {"lo", "eth2"}
    assert value(after, "netio_netns_info", netns=first, inode=str(_inode(first))) == 1
    assert value(after, "netio_scrape_collector_success", collector="netns") == 1
    assert not any(dict(labels).get("netns") == home for _, labels in after)  # itself is not "another"

    run("ip", "netns", "del", second)  # (its veth end goes with it, and first's eth1 with that)
    time.sleep(1.1)  # discovery runs at most once a second
    gone = running.scrape()
    assert not _device_series(gone, second)
    assert not any(name == "netio_netns_info" and dict(labels)["netns"] == second for name, labels in gone)
    assert _device_series(gone, third) and _device_series(gone, first)


def test_netns_flags_need_the_collector():
    result = subprocess.run([sys.executable, "-m", "exporter", "--collector.netns.include", "x"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "--collector.netns.include: the netns collector is off (--no-collector.netns)" in result.stderr


def _inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def test_each_namespace_has_its_loss_counters(netns, exporter):
    home, busy = netns(), netns()
    running = exporter(home, "--collector.netns", "--collector.netns.include", re.escape(busy))
    before = running.scrape()
    with in_netns(busy):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        for _ in range(23):
            sender.sendto(b"x", ("127.0.0.1", 9))  # nobody listens: Udp NoPorts in that namespace
    after = running.scrape()
    name = "netio_netstat_udp_noports_total"
    assert value(after, name, netns=busy) - value(before, name, netns=busy) == 23
    assert value(after, name) == value(before, name)  # the exporter's own namespace saw none of it
    assert value(after, "netio_netstat_tcpext_listenoverflows_total", netns=busy) == 0


# --- TCP per namespace. Expected bytes follow the kernel's SYN/FIN rule (see tests/test_tcp_kernel.py): the
# connecting side has its SYN and its FIN in bytes_acked, each side's bytes_received has the peer's FIN but
# not its SYN, bytes_sent is data only; the listening port's ends are local_port=PORT, the clients' "other".

TCP_PORT = 5003
TCP_COUNTERS = ("netio_tcp_received_bytes_total", "netio_tcp_acked_bytes_total", "netio_tcp_sent_bytes_total",
                "netio_tcp_received_segments_total", "netio_tcp_sent_segments_total",
                "netio_tcp_connections_closed_total")


def _tcp_listener(ns: str) -> socket.socket:
    with in_netns(ns):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", TCP_PORT))
        listener.listen(512)
    return listener


def _tcp_open(ns: str, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    with in_netns(ns):
        client = socket.create_connection(("127.0.0.1", TCP_PORT))
    server, _ = listener.accept()
    return client, server


def _tcp_send(sender: socket.socket, receiver: socket.socket, size: int) -> None:
    sender.sendall(b"t" * size)
    assert len(receiver.recv(size, socket.MSG_WAITALL)) == size


def _tcp_close(client: socket.socket, server: socket.socket) -> None:
    """The client closes first (FIN), then the server."""
    client.close()
    assert server.recv(1) == b""
    server.close()


def _tcp_connection(ns: str, listener: socket.socket, up: int, down: int) -> None:
    client, server = _tcp_open(ns, listener)
    _tcp_send(client, server, up)
    _tcp_send(server, client, down)
    _tcp_close(client, server)


def _tcp_settle(ns: str, timeout: float = 20.0) -> None:
    """Until every TCP socket of the namespace listens or is in TIME_WAIT (every close has happened)."""
    from exporter.netlink.sock_diag import SockDiagReader
    with in_netns(ns):
        reader = SockDiagReader()
    try:
        deadline = time.monotonic() + timeout
        while any(sock.state not in (6, 10) for sock in reader.dump_tcp_sockets()):
            assert time.monotonic() < deadline, "sockets did not settle"
            time.sleep(0.02)
    finally:
        reader.close()


def _tcp_series(parsed: dict, netns: str | None) -> dict:
    return {(name, labels): number for (name, labels), number in parsed.items()
            if name.startswith("netio_tcp_") and dict(labels).get("netns") == netns}


def test_each_namespace_counts_its_own_tcp_traffic_and_its_short_lived_connections(netns, exporter):
    """Kernel method: short-lived connections between two scrapes count in full in their namespace; a
    connection open at first sight counts from zero; the exporter's own namespace sees none of it."""
    home, first, second = netns(), netns(), netns()
    listeners = {first: _tcp_listener(first), second: _tcp_listener(second)}
    old_client, old_server = _tcp_open(first, listeners[first])
    _tcp_send(old_client, old_server, 5000)  # before the exporter saw the namespace: not counted
    include = f"{re.escape(first)}|{re.escape(second)}"
    running = exporter(home, "--collector.netns", "--collector.netns.include", include,
                       "--collector.tcp.local-ports", str(TCP_PORT))
    port, other = str(TCP_PORT), "other"
    before = running.scrape()
    assert value(before, "netio_tcp_accounting_info", method="kernel") == 1
    assert value(before, "netio_tcp_connections", netns=first, local_port=port, state="listen") == 1
    assert value(before, "netio_tcp_connections", netns=first, local_port=port, state="established") == 1
    assert value(before, "netio_tcp_connections", local_port=port, state="listen") == 0  # home has none
    live_client, live_server = _tcp_open(first, listeners[first])
    _tcp_send(live_client, live_server, 2000)
    middle = running.scrape()  # the live connection is seen live once, then closes
    for _ in range(4):
        _tcp_connection(first, listeners[first], 20_000, 1_000)
    for _ in range(3):
        _tcp_connection(second, listeners[second], 7_000, 300)
    _tcp_send(old_client, old_server, 3000)
    _tcp_send(live_client, live_server, 1000)
    _tcp_close(old_client, old_server)
    _tcp_close(live_client, live_server)
    _tcp_settle(first)
    _tcp_settle(second)
    after = running.scrape()

    def moved(name, netns, local_port):
        labels = {"local_port": local_port} if netns is None else {"netns": netns, "local_port": local_port}
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("netio_tcp_received_bytes_total", first, port) == 4 * (20_000 + 1) + (3000 + 1) + (3000 + 1)
    assert moved("netio_tcp_sent_bytes_total", first, port) == 4 * 1_000
    assert moved("netio_tcp_acked_bytes_total", first, port) == 4 * (1_000 + 1) + 1 + 1
    assert moved("netio_tcp_sent_bytes_total", first, other) == 4 * 20_000 + 3000 + 3000
    assert moved("netio_tcp_received_bytes_total", first, other) == 4 * (1_000 + 1) + 1 + 1
    # The old client's SYN was acknowledged before the namespace was first seen; the live one's after.
    assert moved("netio_tcp_acked_bytes_total", first, other) == 4 * (20_000 + 2) + (3000 + 1) + (3000 + 2)
    assert moved("netio_tcp_connections_closed_total", first, port) == 4 + 2
    assert moved("netio_tcp_connections_closed_total", first, other) == 4 + 2
    assert moved("netio_tcp_received_bytes_total", second, port) == 3 * (7_000 + 1)
    assert moved("netio_tcp_sent_bytes_total", second, port) == 3 * 300
    assert moved("netio_tcp_sent_bytes_total", second, other) == 3 * 7_000
    assert moved("netio_tcp_connections_closed_total", second, other) == 3
    for name in TCP_COUNTERS:  # the exporter's own namespace: no connection on the port, no netns label
        assert moved(name, None, port) == 0
    assert value(middle, "netio_tcp_connections", netns=first, local_port=port, state="established") == 2
    assert not _tcp_series(after, home)
    for listener in listeners.values():
        listener.close()

    run("ip", "netns", "del", second)
    time.sleep(1.1)  # discovery runs at most once a second
    gone = running.scrape()
    assert not _tcp_series(gone, second)
    assert _tcp_series(gone, first)
    assert value(gone, "netio_scrape_collector_success", collector="tcp") == 1


def test_namespace_tcp_totals_are_monotonic_and_exact_while_connections_churn(netns, exporter):
    home, busy = netns(), netns()
    listener = _tcp_listener(busy)
    running = exporter(home, "--collector.netns", "--collector.netns.include", re.escape(busy),
                       "--collector.tcp.local-ports", str(TCP_PORT))
    scrapes = [running.scrape()]
    count, up, down = 1500, 3000, 200
    done = threading.Event()

    def churn():
        try:
            for _ in range(count):
                _tcp_connection(busy, listener, up, down)
        finally:
            done.set()

    worker = threading.Thread(target=churn)
    worker.start()
    while not done.is_set():
        scrapes.append(running.scrape())
    worker.join()
    _tcp_settle(busy)
    scrapes.append(running.scrape())
    assert len(scrapes) > 3  # scrapes happened while connections opened and closed
    for local_port in (str(TCP_PORT), "other"):
        for name in TCP_COUNTERS:
            series = [value(scrape, name, netns=busy, local_port=local_port) for scrape in scrapes]
            assert all(later >= earlier for earlier, later in zip(series, series[1:])), (name, local_port)
    first, last = scrapes[0], scrapes[-1]

    def moved(name, local_port):
        return value(last, name, netns=busy, local_port=local_port) - value(first, name, netns=busy,
                                                                            local_port=local_port)

    assert moved("netio_tcp_received_bytes_total", str(TCP_PORT)) == count * (up + 1)
    assert moved("netio_tcp_sent_bytes_total", "other") == count * up
    assert moved("netio_tcp_received_bytes_total", "other") == count * (down + 1)
    assert moved("netio_tcp_acked_bytes_total", "other") == count * (up + 2)
    assert moved("netio_tcp_connections_closed_total", str(TCP_PORT)) == count
    listener.close()


def test_without_bpf_each_namespace_is_polled_as_the_host_is(netns):
    """The polling method (kernel=False, as where BPF does not load) in process: the collector and its
    namespaces are made and read in "home"; the opener thread is born there too."""
    from exporter.collectors import Scrape
    from exporter.collectors.tcp import TcpCollector
    from exporter.exposition import render_text
    from exporter.netlink.namespaces import Namespaces
    home, busy = netns(), netns()
    listener = _tcp_listener(busy)
    with in_netns(home):
        shared = Namespaces(re.escape(busy))
        collector = TcpCollector(frozenset({TCP_PORT}), kernel=False, namespaces=shared)

    def scrape():
        with in_netns(home):
            return samples(render_text(Scrape([collector]).families()).decode())

    try:
        assert collector.method == "polling"
        client, server = _tcp_open(busy, listener)
        _tcp_send(client, server, 1000)
        before = scrape()  # first sight: the live pair counts from here
        _tcp_send(client, server, 4000)
        _tcp_connection(busy, listener, 20_000, 1_000)  # opened and closed between scrapes: not seen
        _tcp_send(server, client, 700)
        after = scrape()
        port = str(TCP_PORT)

        def moved(name, local_port, **labels):
            return (value(after, name, local_port=local_port, **labels)
                    - value(before, name, local_port=local_port, **labels))

        assert moved("netio_tcp_received_bytes_total", port, netns=busy) == 4000
        assert moved("netio_tcp_sent_bytes_total", "other", netns=busy) == 4000
        assert moved("netio_tcp_sent_bytes_total", port, netns=busy) == 700
        assert moved("netio_tcp_connections_closed_total", port, netns=busy) == 0
        assert value(after, "netio_tcp_connections", netns=busy, local_port=port, state="established") == 1
        assert moved("netio_tcp_received_bytes_total", port) == 0  # the exporter's own namespace
        _tcp_close(client, server)
        _tcp_settle(busy)
        closed = scrape()
        assert value(closed, "netio_tcp_connections_closed_total", netns=busy, local_port=port) \
            - value(after, "netio_tcp_connections_closed_total", netns=busy, local_port=port) == 1
    finally:
        collector.close()
        shared.close()
        listener.close()
