"""link collector against the real kernel: exact counter deltas, attributes and link events."""

from __future__ import annotations

import socket

import pytest

from tests.support import in_netns, run, value, veth_pair
from exporter.collectors import Scrape
from exporter.collectors.link import DeviceFilter, LinkCollector
from exporter.exposition import render_text
from exporter.netlink.rtnl import STATS64_FIELDS

PAYLOAD = 100
DATAGRAMS = 57
UDP_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4, UDP headers: a datagram is payload + 42 bytes on the wire


def _scrape(collector: LinkCollector, ns: str) -> dict:
    from tests.support import samples
    with in_netns(ns):
        return samples(render_text(Scrape([collector]).families()).decode())


@pytest.fixture
def pair(netns):
    ns_a, ns_b = netns(), netns()
    return veth_pair(ns_a, ns_b)


def test_counters_move_by_exactly_the_traffic_sent(pair):
    ns_a, dev_a, ip_a, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    with in_netns(ns_a):
        sender_collector = LinkCollector()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(ns_b):
        receiver_collector = LinkCollector()
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((ip_b, 9999))
    before_tx, before_rx = _scrape(sender_collector, ns_a), _scrape(receiver_collector, ns_b)
    for _ in range(DATAGRAMS):
        sender.sendto(b"x" * PAYLOAD, (ip_b, 9999))
    for _ in range(DATAGRAMS):
        assert len(receiver.recv(2048)) == PAYLOAD
    after_tx, after_rx = _scrape(sender_collector, ns_a), _scrape(receiver_collector, ns_b)

    def moved(before, after, name, device):
        return value(after, name, device=device) - value(before, name, device=device)

    wire_bytes = DATAGRAMS * (PAYLOAD + UDP_OVERHEAD)
    assert moved(before_tx, after_tx, "netio_network_transmit_bytes_total", dev_a) == wire_bytes
    assert moved(before_tx, after_tx, "netio_network_transmit_packets_total", dev_a) == DATAGRAMS
    assert moved(before_rx, after_rx, "netio_network_receive_bytes_total", dev_b) == wire_bytes
    assert moved(before_rx, after_rx, "netio_network_receive_packets_total", dev_b) == DATAGRAMS
    assert moved(before_rx, after_rx, "netio_network_receive_errors_total", dev_b) == 0
    assert moved(before_rx, after_rx, "netio_network_receive_dropped_total", dev_b) == 0
    sender.close()
    receiver.close()


def test_every_field_the_kernel_sends_is_exported(pair):
    ns_a, dev_a, _, mac_a = pair["a"]
    with in_netns(ns_a):
        parsed = _scrape(LinkCollector(), ns_a)
    for field in STATS64_FIELDS:  # this kernel (6.18) sends all 25
        from exporter.collectors.link import COUNTERS
        assert value(parsed, f"netio_network_{COUNTERS[field][0]}_total", device=dev_a) is not None, field
    assert value(parsed, "netio_network_up", device=dev_a) == 1
    assert value(parsed, "netio_network_mtu_bytes", device=dev_a) == 1500
    assert value(parsed, "netio_network_carrier_changes_total", device=dev_a) is not None
    assert value(parsed, "netio_network_info", device=dev_a, address=mac_a, operstate="up",
                 ifalias="", kind="veth") == 1
    assert value(parsed, "netio_network_up", device="lo") == 0  # loopback's operstate is "unknown"


def test_link_changes_show_at_the_next_scrape(pair):
    ns_a, dev_a, _, mac_a = pair["a"]
    ns_b, dev_b, _, _ = pair["b"]
    with in_netns(ns_a):
        collector = LinkCollector()
    assert value(_scrape(collector, ns_a), "netio_network_up", device=dev_a) == 1

    run("ip", "-n", ns_a, "link", "set", dev_a, "mtu", "1400")
    run("ip", "-n", ns_a, "link", "set", dev_a, "alias", "uplink \"one\"")
    parsed = _scrape(collector, ns_a)
    assert value(parsed, "netio_network_mtu_bytes", device=dev_a) == 1400
    assert value(parsed, "netio_network_info", device=dev_a, address=mac_a, operstate="up",
                 ifalias="uplink \"one\"", kind="veth") == 1

    run("ip", "-n", ns_b, "link", "set", dev_b, "down")  # the peer going down takes our carrier away (veth reports "down")
    parsed = _scrape(collector, ns_a)
    assert value(parsed, "netio_network_up", device=dev_a) == 0
    assert value(parsed, "netio_network_info", device=dev_a, address=mac_a, operstate="down",
                 ifalias="uplink \"one\"", kind="veth") == 1

    run("ip", "-n", ns_a, "link", "set", dev_a, "name", "wan0")
    parsed = _scrape(collector, ns_a)
    assert value(parsed, "netio_network_mtu_bytes", device="wan0") == 1400
    assert value(parsed, "netio_network_mtu_bytes", device=dev_a) is None

    run("ip", "-n", ns_a, "link", "add", "br-new", "type", "bridge")
    parsed = _scrape(collector, ns_a)
    assert value(parsed, "netio_network_receive_bytes_total", device="br-new") is not None

    run("ip", "-n", ns_a, "link", "del", "wan0")
    run("ip", "-n", ns_a, "link", "del", "br-new")
    parsed = _scrape(collector, ns_a)
    assert not [key for key in parsed if dict(key[1]).get("device") in ("wan0", "br-new")]
    assert value(parsed, "netio_network_receive_bytes_total", device="lo") is not None


def test_device_filters_are_full_matches(pair):
    ns_a, dev_a, _, _ = pair["a"]
    with in_netns(ns_a):
        included = _scrape(LinkCollector(DeviceFilter(include="eth")), ns_a)  # "eth" does not fully match eth1
        assert not [key for key in included if key[0].startswith("netio_network_up")]
        included = _scrape(LinkCollector(DeviceFilter(include="eth.*")), ns_a)
        assert value(included, "netio_network_up", device=dev_a) == 1
        assert value(included, "netio_network_up", device="lo") is None
        excluded = _scrape(LinkCollector(DeviceFilter(exclude="lo")), ns_a)
        assert value(excluded, "netio_network_up", device=dev_a) == 1
        assert value(excluded, "netio_network_up", device="lo") is None


def test_many_interfaces_change_between_scrapes(netns):
    """Enough events at once to exercise the notification queue and the re-dump path."""
    ns = netns()
    with in_netns(ns):
        collector = LinkCollector()
    _scrape(collector, ns)
    batch = "".join(f"link add v{i} type veth peer name p{i}\n" for i in range(150))
    run("ip", "-n", ns, "-batch", "-", input=batch)
    parsed = _scrape(collector, ns)
    devices = {dict(labels)["device"] for name, labels in parsed if name == "netio_network_mtu_bytes"}
    assert devices == {"lo"} | {f"v{i}" for i in range(150)} | {f"p{i}" for i in range(150)}
    run("ip", "-n", ns, "-batch", "-", input="".join(f"link del v{i}\n" for i in range(150)))
    parsed = _scrape(collector, ns)
    devices = {dict(labels)["device"] for name, labels in parsed if name == "netio_network_mtu_bytes"}
    assert devices == {"lo"}
