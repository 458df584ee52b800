"""mac collector against the real kernel: a gateway namespace with a bridge and two client namespaces.

Frames are written raw (AF_PACKET) with MACs, sizes and source addresses the test chooses, and IPv6 is
off everywhere, so every frame that crosses a port is one the test sent and the counts are exact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.support import in_netns, quiet_ipv6, require, run, samples, unique_name, value
from exporter.collectors import Scrape
from exporter.exposition import render_text

C1, C2, C3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
GW = "02:00:00:00:00:fe"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _frame(dst: str, src: str, size: int, ipv4: str | None = None, ipv6: str | None = None) -> bytes:
    """An Ethernet frame of exactly ``size`` bytes; with an IPv4 or IPv6 header carrying that source."""
    if ipv4:
        body = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 17, 0, socket.inet_aton(ipv4),
                           socket.inet_aton("10.9.9.9"))
        ethertype = 0x0800
    elif ipv6:
        body = struct.pack("!IHBB16s16s", 6 << 28, size - 54, 17, 64, socket.inet_pton(socket.AF_INET6, ipv6),
                           socket.inet_pton(socket.AF_INET6, "2001:db8::9"))
        ethertype = 0x86DD
    else:
        body, ethertype = b"", 0x88B5  # IEEE local experimental ethertype: nobody answers it
    frame = _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + body
    return frame + b"\0" * (size - len(frame))


def _send(ns: str, device: str, frames: list[bytes]) -> None:
    with in_netns(ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((device, 0))
            for frame in frames:
                raw.send(frame)


def _require_bpf() -> None:
    from exporter.bpf.build import BpfObjectMissing, object_path
    try:
        object_path("mac")
    except BpfObjectMissing as error:
        require(False, str(error))


@pytest.fixture
def lan(netns):
    """gw: bridge br0 with ports lan1, lan2; c1 and c2 each behind one port (their eth0)."""
    _require_bpf()
    gw, c1, c2 = netns(), netns(), netns()
    for ns in (gw, c1, c2):
        quiet_ipv6(ns)
    run("ip", "-n", gw, "link", "add", "br0", "address", GW, "type", "bridge")  # fixed: ports do not change it
    for port, client, mac in (("lan1", c1, C1), ("lan2", c2, C2)):
        temp = unique_name("vm")
        run("ip", "-n", gw, "link", "add", port, "type", "veth", "peer", "name", temp)
        run("ip", "-n", gw, "link", "set", temp, "netns", client)
        run("ip", "-n", client, "link", "set", temp, "name", "eth0", "address", mac, "up")
        run("ip", "-n", gw, "link", "set", port, "master", "br0", "up")
        run("bridge", "-n", gw, "fdb", "add", mac, "dev", port, "master", "static")
    run("ip", "-n", gw, "link", "set", "br0", "up")
    return {"gw": gw, "c1": c1, "c2": c2, "gw_mac": GW}


def _collector(ns: str, **kwargs):
    from exporter.collectors.mac import MacCollector
    with in_netns(ns):
        return MacCollector(["lan1", "lan2"], **kwargs)


def _scrape(collector, ns: str) -> dict:
    """One scrape in ``ns``; a failed read would make every count vanish, so it is an error here."""
    with in_netns(ns):
        parsed = samples(render_text(Scrape([collector]).families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector="mac") == 1
    return parsed


def _counts(parsed: dict, device: str, mac: str) -> tuple:
    return tuple(value(parsed, f"netio_mac_{name}_total", device=device, mac=mac)
                 for name in ("upload_bytes", "upload_packets", "download_bytes", "download_packets"))


@pytest.mark.parametrize("attach", ["tcx", "clsact"])
def test_each_client_counts_exactly_the_frames_it_sent_and_got(lan, attach):
    gw, c1, c2, gw_mac = lan["gw"], lan["c1"], lan["c2"], lan["gw_mac"]
    collector = _collector(gw, attach=attach)
    try:
        assert value(_scrape(collector, gw), "netio_scrape_collector_success", collector="mac") == 1
        _send(c1, "eth0", [_frame(C2, C1, 100)] * 7 + [_frame(gw_mac, C1, 300, ipv4="10.0.0.11")] * 3
              + [_frame(gw_mac, C1, 400, ipv6="2001:db8::11"), _frame(gw_mac, C1, 400, ipv6="fe80::11")])
        _send(c2, "eth0", [_frame(C1, C2, 200)] * 5 + [_frame(gw_mac, C2, 90, ipv6="fe80::22")] * 2)
        _send(gw, "br0", [_frame(C1, gw_mac, 120)] * 4 + [_frame(C2, gw_mac, 64)] * 6)
        parsed = _scrape(collector, gw)
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1) == (7 * 100 + 3 * 300 + 2 * 400, 12, 5 * 200 + 4 * 120, 9)
    assert _counts(parsed, "lan2", C2) == (5 * 200 + 2 * 90, 7, 7 * 100 + 6 * 64, 13)
    assert value(parsed, "netio_mac_info", device="lan1", mac=C1, ipv4="10.0.0.11", ipv6="2001:db8::11") == 1
    assert value(parsed, "netio_mac_info", device="lan2", mac=C2, ipv4="", ipv6="fe80::22") == 1
    macs = {dict(labels).get("mac") for _, labels in parsed}
    assert gw_mac not in macs  # the gateway is not a client
    assert value(parsed, "netio_mac_untracked_packets_total", device="lan1") == 0


def test_broadcast_is_nobodys_download(lan):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw)
    try:
        _send(c1, "eth0", [_frame(BROADCAST, C1, 60)] * 3)  # flooded out of lan2 to c2
        _send(gw, "br0", [_frame(BROADCAST, lan["gw_mac"], 60)] * 2)  # out of lan1 and lan2
        parsed = _scrape(collector, gw)
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1) == (180, 3, 0, 0)  # a broadcast from c1 is c1's upload
    assert _counts(parsed, "lan2", C2) == (None,) * 4  # c2 sent nothing and was sent nothing
    assert BROADCAST not in {dict(labels).get("mac") for _, labels in parsed}


def test_a_full_table_counts_the_rest_as_untracked(lan):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw, max_entries=2)
    try:
        history = []
        for round_ in range(3):
            _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100), _frame(lan["gw_mac"], C2, 100),
                               _frame(lan["gw_mac"], C3, 150)])
            history.append(_scrape(collector, gw))
    finally:
        collector.close()
    last = history[-1]
    assert _counts(last, "lan1", C1)[:2] == (300, 3)
    assert _counts(last, "lan1", C2)[:2] == (300, 3)
    assert _counts(last, "lan1", C3) == (None,) * 4
    assert value(last, "netio_mac_untracked_bytes_total", device="lan1") == 450
    assert value(last, "netio_mac_untracked_packets_total", device="lan1") == 3
    assert value(last, "netio_mac_table_entries", device="lan1") == 2  # full: visible without the counters
    assert value(last, "netio_mac_table_max_entries", device="lan1") == 2
    assert value(last, "netio_mac_table_entries", device="lan2") == 0
    for before, after in zip(history, history[1:]):  # no counter ever decreases
        for key, number in before.items():
            if key[0].endswith("_total") and key in after:
                assert after[key] >= number, key


def test_idle_clients_vanish(lan):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw, idle_timeout=0.5)
    try:
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)])
        assert _counts(_scrape(collector, gw), "lan1", C1)[:2] == (100, 1)
        time.sleep(0.8)
        parsed = _scrape(collector, gw)
    finally:
        collector.close()
    assert value(parsed, "netio_scrape_collector_success", collector="mac") == 1
    assert _counts(parsed, "lan1", C1) == (None,) * 4
    assert value(parsed, "netio_mac_info", device="lan1", mac=C1, ipv4="", ipv6="") is None


def test_a_returning_interface_is_attached_again(lan):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw)
    try:
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)])
        run("ip", "-n", gw, "link", "del", "lan1")
        parsed = _scrape(collector, gw)
        assert value(parsed, "netio_scrape_collector_success", collector="mac") == 1
        assert _counts(parsed, "lan1", C1) == (None,) * 4
        temp = unique_name("vm")
        run("ip", "-n", gw, "link", "add", "lan1", "type", "veth", "peer", "name", temp)
        run("ip", "-n", gw, "link", "set", temp, "netns", c1)
        run("ip", "-n", c1, "link", "set", temp, "name", "eth0", "address", C1, "up")
        run("ip", "-n", gw, "link", "set", "lan1", "master", "br0", "up")
        _scrape(collector, gw)  # finds lan1 back and attaches
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)])
        parsed = _scrape(collector, gw)
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1)[:2] == (200, 2)  # the table survived: counting continued


def _our_tcx_links() -> int:
    links = json.loads(run("bpftool", "link", "show", "-j").stdout or "[]")
    programs = {program["id"]: program.get("name", "")
                for program in json.loads(run("bpftool", "prog", "show", "-j").stdout or "[]")}
    return sum(1 for link in links if programs.get(link.get("prog_id")) in ("mac_ingress", "mac_egress"))


def _filters(ns: str, device: str) -> str:
    return run("tc", "-n", ns, "filter", "show", "dev", device, "ingress").stdout + \
        run("tc", "-n", ns, "filter", "show", "dev", device, "egress").stdout


@pytest.fixture
def foreign_filter(lan, tmp_path):
    """Somebody else's clsact qdisc and bpf filter on lan1, there before the exporter starts."""
    clang = shutil.which("clang")
    require(clang is not None, "clang not installed")
    source = tmp_path / "pass.bpf.c"
    source.write_text('#include <linux/bpf.h>\n__attribute__((section("tc"), used)) '
                      'int pass(struct __sk_buff *skb) { return -1; }\n'
                      'char LICENSE[] __attribute__((section("license"), used)) = "GPL";\n')
    from exporter.bpf.build import clang_command
    run(*clang_command(source, tmp_path / "pass.bpf.o", clang))
    run("tc", "-n", lan["gw"], "qdisc", "add", "dev", "lan1", "clsact")
    run("tc", "-n", lan["gw"], "filter", "add", "dev", "lan1", "ingress", "bpf", "da",
        "obj", str(tmp_path / "pass.bpf.o"), "sec", "tc")
    return _filters(lan["gw"], "lan1")


@pytest.mark.parametrize("attach", ["tcx", "clsact"])
def test_exit_leaves_nothing_and_touches_no_foreign_filter(lan, foreign_filter, exporter, attach):
    gw = lan["gw"]
    tcx_before = _our_tcx_links()
    running = exporter(gw, "--collector.mac.device", "lan1", "--collector.mac.attach", attach)
    parsed = running.scrape()
    assert value(parsed, "netio_scrape_collector_success", collector="mac") == 1
    if attach == "tcx":
        assert _our_tcx_links() == tcx_before + 2
    else:
        assert "netio_mac_ingress" in _filters(gw, "lan1") and "netio_mac_egress" in _filters(gw, "lan1")
    returncode, stderr = running.stop()
    assert returncode == 0, stderr
    assert _our_tcx_links() == tcx_before
    assert _filters(gw, "lan1") == foreign_filter


def test_leftover_clsact_filters_of_a_killed_exporter_are_removed(lan, foreign_filter, exporter):
    gw = lan["gw"]
    first = exporter(gw, "--collector.mac.device", "lan1", "--collector.mac.attach", "clsact")
    first.process.kill()  # SIGKILL: cls_bpf filters outlive the process
    first.process.wait()
    assert "netio_mac_ingress" in _filters(gw, "lan1")
    second = exporter(gw, "--collector.mac.device", "lan1", "--collector.mac.attach", "clsact")
    filters = _filters(gw, "lan1")
    assert filters.count("netio_mac_ingress") == 1 and filters.count("netio_mac_egress") == 1
    second.stop()
    assert _filters(gw, "lan1") == foreign_filter


def test_without_privileges_the_collector_reports_unavailable(lan):
    """An unprivileged process (capabilities dropped) still answers, with success 0 for mac."""
    capsh = shutil.which("capsh")
    require(capsh is not None, "capsh not installed (apt-get install libcap2-bin)")
    code = ("from exporter.collectors import Scrape; from exporter.collectors.mac import MacCollector; "
            "from exporter.collectors.link import LinkCollector; from exporter.exposition import render_text; "
            "import sys; sys.stdout.write(render_text(Scrape([MacCollector(['lan1']), LinkCollector()]).families()"
            ").decode())")
    result = subprocess.run(["ip", "netns", "exec", lan["gw"], capsh, "--drop=cap_sys_admin,cap_bpf,cap_perfmon,"
                             "cap_net_admin", "--", "-c", f'{sys.executable} -c "{code}"'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parsed = samples(result.stdout)
    assert value(parsed, "netio_scrape_collector_success", collector="mac") == 0
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    assert "eBPF is not permitted" in result.stderr or "collector mac failed" in result.stderr


def _readd_lan1(gw: str, c1: str, index: int | None = None) -> None:
    """lan1 again (with ``index``: the ifindex it had), c1's eth0 on its other end, in the bridge."""
    temp = unique_name("vm")
    run("ip", "-n", gw, "link", "add", "lan1", *(("index", str(index)) if index else ()), "type", "veth",
        "peer", "name", temp)
    run("ip", "-n", gw, "link", "set", temp, "netns", c1)
    run("ip", "-n", c1, "link", "set", temp, "name", "eth0", "address", C1, "up")
    run("ip", "-n", gw, "link", "set", "lan1", "master", "br0", "up")


def _ifindex(ns: str, device: str) -> int:
    return int(run("ip", "-n", ns, "-o", "link", "show", device).stdout.split(":", 1)[0])


def _detached_once(caplog) -> bool:
    return sum("were detached" in record.getMessage() for record in caplog.records) == 1


@pytest.mark.parametrize("attach", ["tcx", "clsact"])
def test_an_interface_re_created_with_the_same_ifindex_is_attached_again(lan, attach, caplog):
    """Between two scrapes lan1 goes and comes back with the same index: only our attachment tells."""
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw, attach=attach)
    try:
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)])
        assert _counts(_scrape(collector, gw), "lan1", C1)[:2] == (100, 1)
        index = _ifindex(gw, "lan1")
        run("ip", "-n", gw, "link", "del", "lan1")
        _readd_lan1(gw, c1, index)
        assert _ifindex(gw, "lan1") == index
        _scrape(collector, gw)  # notices and attaches again
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)] * 2)
        parsed = _scrape(collector, gw)
        _scrape(collector, gw)
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1)[:2] == (300, 3)
    assert _detached_once(caplog)


@pytest.mark.parametrize("what", ["qdisc", "filter"])
def test_a_deleted_clsact_qdisc_or_filter_is_attached_again(lan, what, caplog):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw, attach="clsact")
    try:
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)])
        _scrape(collector, gw)
        if what == "qdisc":
            run("tc", "-n", gw, "qdisc", "del", "dev", "lan1", "clsact")
        else:  # only our ingress filter: egress still counts, upload would be lost
            run("tc", "-n", gw, "filter", "del", "dev", "lan1", "ingress")
        _scrape(collector, gw)
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)] * 2)
        parsed = _scrape(collector, gw)
        _scrape(collector, gw)
        filters = _filters(gw, "lan1")
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1)[:2] == (300, 3)
    assert filters.count("netio_mac_ingress") == 1 and filters.count("netio_mac_egress") == 1
    assert _detached_once(caplog)


def _own_tcx_links(ifindex: int) -> list[str]:
    """Ids of this process's TCX links on ``ifindex`` (from /proc/self/fdinfo): nobody else's."""
    ids = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as file:
                info = dict(line.split(":\t", 1) for line in file.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        if info.get("link_type") == "tcx" and info.get("ifindex") == str(ifindex):
            ids.append(info["link_id"])
    return ids


def test_a_detached_tcx_link_is_attached_again(lan, caplog):
    gw, c1 = lan["gw"], lan["c1"]
    collector = _collector(gw, attach="tcx")
    try:
        _scrape(collector, gw)
        links = _own_tcx_links(_ifindex(gw, "lan1"))
        assert len(links) == 2
        run("bpftool", "link", "detach", "id", links[0])
        _scrape(collector, gw)
        _send(c1, "eth0", [_frame(lan["gw_mac"], C1, 100)] * 2)
        _send(lan["gw"], "br0", [_frame(C1, lan["gw_mac"], 60)])
        parsed = _scrape(collector, gw)
    finally:
        collector.close()
    assert _counts(parsed, "lan1", C1) == (200, 2, 60, 1)
    assert _detached_once(caplog)


@pytest.mark.parametrize("mode", ["auto", "tcx"])
def test_leftover_clsact_filters_are_removed_in_every_attach_mode(lan, foreign_filter, exporter, mode):
    gw = lan["gw"]
    first = exporter(gw, "--collector.mac.device", "lan1", "--collector.mac.attach", "clsact")
    first.process.kill()  # SIGKILL: cls_bpf filters outlive the process
    first.process.wait()
    assert "netio_mac_ingress" in _filters(gw, "lan1")
    second = exporter(gw, "--collector.mac.device", "lan1", "--collector.mac.attach", mode)
    assert _filters(gw, "lan1") == foreign_filter  # the orphans are gone, the foreign filter stays
    assert value(second.scrape(), "netio_scrape_collector_success", collector="mac") == 1
    returncode, stderr = second.stop()
    assert returncode == 0 and "removed 2 tc filters named netio_mac" in stderr
