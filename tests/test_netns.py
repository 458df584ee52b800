"""--collector.netns: every other network namespace's figures with a netns label, from readers made inside
each namespace; the exporter's own namespace unchanged. Real kernel: the exporter runs in a namespace the
test made ("home"); three more namespaces carry known traffic."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from tests.support import in_netns, run, value, veth_pair

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
