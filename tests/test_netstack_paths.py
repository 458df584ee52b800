"""The NET_RX breakdown on live traffic: each receive path this kernel can produce, driven in namespaces
the test makes, puts at least half of the NET_RX samples it adds (above an idle window of the same
length) into the category that path exercises.

The samples are system-wide, so traffic elsewhere on the machine lands in both windows; the idle
window is subtracted. Each path sends UDP from a Python loop (one datagram per syscall, so every
datagram is one NET_RX run) for a couple of seconds, or TCP over loopback for local delivery.
Where a path ends at a next hop, the next hop is a tap device whose reader is a process (a VM's
backend): no second NET_RX run. Traffic that goes nowhere after the stage under test is dropped right
there (the firewall's verdict, a tc or XDP drop), so the stage under test is most of the work, as on
a host where it is the bottleneck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.bpf import build, libbpf, tc
from exporter.collectors.netstack import CATEGORIES
from exporter.exposition import render_text
from tests.support import in_netns, require, run, samples, unique_name
from tests.support.netstack import loaded_collector, prerouting_chain

SECONDS = 1.0
MINIMUM_SAMPLES = 100  # at 1000 Hz: a tenth of a CPU second in NET_RX above the idle windows
UNOWNED_MAC = "02:00:00:00:00:99"


@pytest.fixture(scope="module")
def collector():
    made = loaded_collector()
    made.read()  # the kallsyms index is built before the first window
    yield made
    made.close()


def _rx_samples(collector) -> dict[str, float]:
    parsed = samples(render_text(collector.read()).decode())
    return {category: parsed[("netio_netstack_rx_samples_total", (("category", category),))]
            for category in CATEGORIES}


def _window(collector, action) -> dict[str, float]:
    before = _rx_samples(collector)
    action()
    after = _rx_samples(collector)
    return {category: after[category] - before[category] for category in CATEGORIES}


def _assert_breakdown(collector, drive, category: str, attempts: int = 8) -> None:
    """``drive()`` puts at least half of the NET_RX samples it adds into ``category``.

    What it adds is its window less the mean of the idle windows before and after. Another process's
    traffic that starts or stops meanwhile shows as a difference between the two idle windows: such a
    measurement is taken again, and the steadiest one is judged (a quiet machine, such as CI's, needs
    one attempt)."""
    measured = []
    for _ in range(attempts):
        before = _window(collector, lambda: time.sleep(SECONDS))
        busy = _window(collector, drive)
        after = _window(collector, lambda: time.sleep(SECONDS))
        above = {name: busy[name] - (before[name] + after[name]) / 2 for name in CATEGORIES}
        total = sum(above.values())
        unsteady = sum(abs(after[name] - before[name]) for name in CATEGORIES) / 2
        measured.append((unsteady / max(total, 1), above, total))
        if total >= MINIMUM_SAMPLES and unsteady <= total / 5:
            break
    _, above, total = min(measured, key=lambda item: item[0])
    shown = {name: count for name, count in above.items() if count}
    assert total >= MINIMUM_SAMPLES, f"the traffic added only {total} NET_RX samples: {shown}"
    assert above[category] >= total / 2, f"{category}: {above[category]} of {total} samples above idle: {shown}"


def _udp_flood(ns: str, family: int, address: tuple, size: int = 64) -> None:
    """Datagrams from namespace ``ns`` to ``address`` as fast as one Python loop sends, for SECONDS."""
    with in_netns(ns):
        sender = socket.socket(family, socket.SOCK_DGRAM)
    payload = b"x" * size
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            for _ in range(100):
                try:
                    sender.sendto(payload, address)
                except OSError:  # ENOBUFS now and then: the point is the receive side
                    pass
    finally:
        sender.close()


def _link(ns_a: str, name_a: str, ns_b: str, name_b: str) -> str:
    """A veth pair ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b``, both up; returns ``name_b``'s MAC."""
    temp_a, temp_b = unique_name("vpa"), unique_name("vpb")
    run("ip", "link", "add", temp_a, "type", "veth", "peer", "name", temp_b)
    run("ip", "link", "set", temp_a, "netns", ns_a, "name", name_a)
    run("ip", "link", "set", temp_b, "netns", ns_b, "name", name_b)
    run("ip", "-n", ns_a, "link", "set", name_a, "up")
    run("ip", "-n", ns_b, "link", "set", name_b, "up")
    return run("ip", "-n", ns_b, "-br", "link", "show", name_b).stdout.split()[2]


def _quiet(ns: str, ipv6: bool) -> None:
    keys = ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6")
    for key in keys:
        run("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={0 if ipv6 else 1}")


def _sender_and_receiver(netns, ipv6: bool = False) -> tuple[str, str, str]:
    """Namespaces A and B joined by A's eth1 and B's eth1 (10.72.0.1/2, fd72::1/2); A knows B's MAC.
    Returns (A, B, B's MAC)."""
    a, b = netns(), netns()
    for ns in (a, b):
        _quiet(ns, ipv6)
    mac = _link(a, "eth1", b, "eth1")
    for ns, v4, v6 in ((a, "10.72.0.1", "fd72::1"), (b, "10.72.0.2", "fd72::2")):
        run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth1")
        if ipv6:
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth1", "nodad")
    run("ip", "-n", a, "neigh", "replace", "10.72.0.2", "lladdr", mac, "dev", "eth1", "nud", "permanent")
    if ipv6:
        run("ip", "-n", a, "neigh", "replace", "fd72::2", "lladdr", mac, "dev", "eth1", "nud", "permanent")
    return a, b, mac


_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000


@contextlib.contextmanager
def _tap(ns: str, name: str = "tap1"):
    """A tap device in ``ns``, up, whose frames a reader process takes (as a VM's backend would)."""
    require(os.path.exists("/dev/net/tun"), "no /dev/net/tun (CONFIG_TUN) for a tap device")
    with in_netns(ns):
        tap = os.open("/dev/net/tun", os.O_RDWR)
    reader = None
    try:
        fcntl.ioctl(tap, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
        reader = subprocess.Popen([sys.executable, "-c", "import os, sys\nwhile True: os.read(int(sys.argv[1]), 65536)",
                                   str(tap)], pass_fds=[tap])
        run("ip", "-n", ns, "link", "set", name, "up")
        yield name
    finally:
        if reader is not None:
            reader.kill()  # our own child, by its pid
            reader.wait()
        os.close(tap)


@pytest.mark.parametrize("version", [4, 6])
def test_forwarding_through_a_router(collector, netns, tmp_path, version):
    """A -> router R -> a tap device whose reader takes the frames (as a VM's backend would). R filters
    what it forwards, as routers do: a FORWARD chain of 100 rules that do not match (nft)."""
    require(shutil.which("nft") is not None, "nft not installed (apt-get install nftables)")
    ipv6 = version == 6
    a, router = netns(), netns()
    for ns in (a, router):
        _quiet(ns, ipv6)
    router_mac = _link(a, "eth1", router, "eth1")
    with _tap(router):
        if ipv6:
            plan = (("a", "fd73:1::1/64", "eth1"), ("r", "fd73:1::2/64", "eth1"), ("r", "fd73:2::1/64", "tap1"))
            gateway, subnet, destination, family = "fd73:1::2", "fd73:2::/64", "fd73:2::99", socket.AF_INET6
            run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        else:
            plan = (("a", "10.73.1.1/24", "eth1"), ("r", "10.73.1.2/24", "eth1"), ("r", "10.73.2.1/24", "tap1"))
            gateway, subnet, destination, family = "10.73.1.2", "10.73.2.0/24", "10.73.2.99", socket.AF_INET
            run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for where, address, device in plan:
            run("ip", "-n", a if where == "a" else router, "addr", "add", address, "dev", device,
                *(("nodad",) if ipv6 else ()))
        rules = "\n".join(f"    meta l4proto tcp tcp dport {port} counter" for port in range(10000, 10100))
        ruleset = tmp_path / "forward.nft"
        ruleset.write_text("table inet netio_test {\n  chain forward {\n    type filter hook forward priority 0; "
                           f"policy accept;\n{rules}\n  }}\n}}\n")
        run("ip", "netns", "exec", router, "nft", "-f", str(ruleset))
        run("ip", "-n", a, "route", "add", subnet, "via", gateway)
        run("ip", "-n", a, "neigh", "replace", gateway, "lladdr", router_mac, "dev", "eth1", "nud", "permanent")
        run("ip", "-n", router, "neigh", "replace", destination, "lladdr", UNOWNED_MAC, "dev", "tap1",
            "nud", "permanent")
        _assert_breakdown(collector, lambda: _udp_flood(a, family, (destination, 9)), f"forwarding_v{version}")


def test_nftables_prerouting_chain_of_1000_rules(collector, netns, tmp_path):
    a, b, _ = _sender_and_receiver(netns)
    prerouting_chain(b, tmp_path)
    with in_netns(b):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("10.72.0.2", 9))
    try:
        _assert_breakdown(collector, lambda: _udp_flood(a, socket.AF_INET, ("10.72.0.2", 9)), "nf_prerouting_v4")
    finally:
        receiver.close()


def test_conntrack(collector, netns, tmp_path):
    """Datagrams of two fragments to a firewall that tracks connections and drops what is new:
    conntrack reassembles each datagram (its defrag hook) and starts a connection for it, then the
    PREROUTING chain's policy drops it (so every datagram is a new connection, and the table stays empty)."""
    require(shutil.which("nft") is not None, "nft not installed (apt-get install nftables)")
    a, b, _ = _sender_and_receiver(netns)
    ruleset = tmp_path / "conntrack.nft"  # the ct expression turns connection tracking on in the namespace
    ruleset.write_text("table ip netio_test {\n"
                       "  chain output {\n    type filter hook output priority 0; policy accept;\n"
                       "    ct state new counter\n  }\n"
                       "  chain prerouting {\n    type filter hook prerouting priority -100; policy drop;\n  }\n}\n")
    run("ip", "netns", "exec", b, "nft", "-f", str(ruleset))
    _assert_breakdown(collector, lambda: _udp_flood(a, socket.AF_INET, ("10.72.0.2", 9), size=2800), "nf_conntrack")


def test_bridging(collector, netns):
    """A -> a bridge in its own namespace -> a tap port (a VM bridged onto the host's network)."""
    a, bridge = netns(), netns()
    for ns in (a, bridge):
        _quiet(ns, False)
    run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", bridge, "link", "set", "br0", "up")
    _link(a, "eth1", bridge, "port_a")
    with _tap(bridge) as tap:
        for port in ("port_a", tap):
            run("ip", "-n", bridge, "link", "set", port, "master", "br0")
        run("ip", "-n", bridge, "link", "set", tap, "up")
        run("bridge", "-n", bridge, "fdb", "add", UNOWNED_MAC, "dev", tap, "master", "static")
        run("ip", "-n", a, "addr", "add", "10.75.0.1/24", "dev", "eth1")
        run("ip", "-n", a, "neigh", "replace", "10.75.0.99", "lladdr", UNOWNED_MAC, "dev", "eth1", "nud", "permanent")
        _assert_breakdown(collector, lambda: _udp_flood(a, socket.AF_INET, ("10.75.0.99", 9)), "bridging")


@pytest.fixture(scope="module")
def test_programs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpf") / "netstack_paths.bpf.o"
    build.compile_object(Path(__file__).with_name("netstack_paths.bpf.c"), path)
    return path


def test_32_tcx_programs(collector, netns, test_programs):
    """31 accounting programs and a drop at B's TCX ingress (cls_bpf is the same tc hook)."""
    a, b, _ = _sender_and_receiver(netns)
    objects = [libbpf.BpfObject(str(test_programs)) for _ in range(32)]  # TCX takes each program once
    links = []
    try:
        with in_netns(b):
            ifindex = socket.if_nametoindex("eth1")
            for index, loaded in enumerate(objects):
                program = "drop" if index == len(objects) - 1 else "count_and_continue"
                links.append(tc.tcx_attach(loaded.program_fd(program), ifindex, "ingress"))
        _assert_breakdown(collector, lambda: _udp_flood(a, socket.AF_INET, ("10.72.0.2", 9)), "tc_classify")
    finally:
        for link in links:
            os.close(link)
        for loaded in objects:
            loaded.close()


def test_generic_xdp(collector, netns, test_programs):
    a, b, _ = _sender_and_receiver(netns)
    run("ip", "-n", b, "link", "set", "dev", "eth1", "xdpgeneric", "obj", str(test_programs), "sec", "xdp")
    _assert_breakdown(collector, lambda: _udp_flood(a, socket.AF_INET, ("10.72.0.2", 9), size=1400), "xdp_generic")


def test_ipv6_local_delivery(collector, netns):
    """Bulk TCP over the namespace's ::1."""
    ns = netns()
    with in_netns(ns):
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
        client = socket.create_connection(server.getsockname()[:2])
    peer, _ = server.accept()

    def drain():
        while peer.recv(1 << 16):
            pass

    def send():
        block = b"x" * (1 << 16)
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            client.sendall(block)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        _assert_breakdown(collector, send, "local_delivery_v6")
    finally:
        client.close()
        reader.join()
        peer.close()
        server.close()
