"""drops collector against the real kernel: exact counts of the drops the tests cause, by reason and device.

Every collector here is made inside a namespace of the test's own (the collector counts the namespace
it is made in), so other tests dropping packets on this machine at the same time cannot move these
counts: each test asserts the whole change of the family, not just the series it expects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from exporter.bpf import btf
from exporter.bpf.libbpf import BpfError
from exporter.collectors import Scrape
from exporter.collectors.drops import DropsCollector, ReasonNames, _host_namespace
from exporter.collectors.link import LinkCollector
from exporter.exposition import render_text
from tests.support import in_netns, require, run, samples, value, veth_pair

REASON_ENUMS = ("skb_drop_reason", "skb_drop_reason_subsys")


def _require_bpf() -> None:
    require(os.geteuid() == 0, "needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "kernel has no BTF (/sys/kernel/btf/vmlinux)")


@pytest.fixture
def drops_in():
    """Factory: ``drops_in(ns, **options)`` is a loaded DropsCollector counting namespace ``ns`` (None: ours)."""
    _require_bpf()
    made = []

    def make(ns: str | None, **options) -> DropsCollector:
        with in_netns(ns) if ns else contextlib.nullcontext():  # None: the namespace the tests run in
            collector = DropsCollector(**options)
        made.append(collector)
        require(collector._error is None, f"drops collector cannot load: {collector._error}")
        return collector

    yield make
    for collector in made:
        collector.close()


def _counts(collector: DropsCollector) -> dict[tuple[str, ...], int]:
    """{(reason, device[, function]): packets}, through the text exposition and its parser."""
    parsed = samples(render_text(collector.read()).decode())
    order = ("reason", "device", "function")
    return {tuple(dict(labels)[name] for name in order if name in dict(labels)): number
            for (name, labels), number in parsed.items() if name == "netio_drops_total"}


def _change(collector: DropsCollector, before: dict, settle: float = 0.2) -> dict[tuple[str, ...], int]:
    time.sleep(settle)  # softirq processing of what was sent has finished
    after = _counts(collector)
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def _udp_to_closed_port(ns: str, count: int, address: str = "127.0.0.1") -> None:
    with in_netns(ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind((address, 0))
            port = closed.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(count):
                sender.sendto(b"x" * 32, (address, port))


def _tcp_syns_to_closed_port(ns: str, count: int) -> None:
    with in_netns(ns):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        for _ in range(count):
            with socket.socket() as client:
                with pytest.raises(ConnectionRefusedError):
                    client.connect(("127.0.0.1", port))


def test_closed_ports_count_no_socket_exactly_and_delivered_packets_nothing(netns, drops_in):
    ns = netns()
    collector = drops_in(ns)
    before = _counts(collector)
    with in_netns(ns):  # delivered and read: consumed, not dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            receiver.bind(("127.0.0.1", 0))
            for _ in range(100):
                sender.sendto(b"y" * 32, receiver.getsockname())
                receiver.recv(64)
    assert _change(collector, before) == {}
    _udp_to_closed_port(ns, 500)
    _tcp_syns_to_closed_port(ns, 50)
    assert _change(collector, before) == {("no_socket", "lo"): 550}


@pytest.fixture
def pair(netns):
    """Two namespaces joined by a veth pair (eth1 in each); only the tests' packets cross it."""
    return veth_pair(netns(), netns())


def test_nftables_drop_rule_counts_netfilter_drop_on_the_receiving_device(pair, drops_in):
    require(shutil.which("nft") is not None, "nft not installed (apt-get install nftables)")
    (sender_ns, _, _, _), (receiver_ns, device, receiver_ip, _) = pair["a"], pair["b"]
    run("ip", "netns", "exec", receiver_ns, "nft", "add table inet netio_test; add chain inet netio_test input "
        "{ type filter hook input priority 0; policy accept; }; add rule inet netio_test input udp dport 5555 drop")
    receiving, sending = drops_in(receiver_ns), drops_in(sender_ns)
    before_receiving, before_sending = _counts(receiving), _counts(sending)
    with in_netns(sender_ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):
                sender.sendto(b"z" * 64, (receiver_ip, 5555))
    assert _change(receiving, before_receiving) == {("netfilter_drop", device): 200}
    assert _change(sending, before_sending, settle=0) == {}


def _udp_snmp(ns: str) -> dict[str, int]:
    with in_netns(ns):
        with open("/proc/thread-self/net/snmp") as file:
            lines = [line.split() for line in file if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def test_a_full_receive_buffer_counts_as_many_drops_as_udp_rcvbuf_errors(netns, drops_in):
    ns = netns()
    collector = drops_in(ns)
    with in_netns(ns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum; never read
        receiver.bind(("127.0.0.1", 0))
    try:
        before, errors_before = _counts(collector), _udp_snmp(ns)["RcvbufErrors"]
        with in_netns(ns):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for _ in range(300):
                    sender.sendto(b"w" * 1000, receiver.getsockname())
        change = _change(collector, before)
        rcvbuf_errors = _udp_snmp(ns)["RcvbufErrors"] - errors_before
    finally:
        receiver.close()
    assert 0 < rcvbuf_errors < 300
    assert change == {("socket_rcvbuff", "lo"): rcvbuf_errors}


def test_drops_of_no_namespace_count_in_the_host_only(netns, drops_in):
    # Datagrams still queued when a UDP socket closes are freed with kfree_skb(): not_specified, with neither
    # a socket nor a device (UDP keeps its dev_scratch where the device was). No namespace owns them, so a
    # namespace that is not the host's must not count them (nor anyone else's).
    ns = netns()
    collector = drops_in(ns)
    before = _counts(collector)
    with in_netns(ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            receiver.bind(("127.0.0.1", 0))
            for _ in range(20):
                sender.sendto(b"v" * 32, receiver.getsockname())
    assert _change(collector, before) == {}
    require(_host_namespace(os.stat("/proc/self/ns/net").st_ino), "the tests do not run in the host's namespace")
    host = drops_in(None, locations=True, locations_top=1000)
    require(host.locations, "/proc/kallsyms hides kernel addresses")
    before = _counts(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        for _ in range(20):
            sender.sendto(b"v" * 32, receiver.getsockname())
    # at least ours (other work on the machine may close such sockets at the same time)
    assert _change(host, before).get(("not_specified", "none", "udp_destruct_common"), 0) >= 20


def _frame(destination: str, source: str, source_ip: str, destination_ip: str) -> bytes:
    """An Ethernet frame carrying a minimal IPv4/UDP datagram, padded to the 60-byte minimum."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                     socket.inet_aton(source_ip), socket.inet_aton(destination_ip))
    udp = struct.pack("!HHHH", 4000, 4001, 8, 0)
    frame = bytes.fromhex(destination.replace(":", "")) + bytes.fromhex(source.replace(":", "")) + b"\x08\x00"
    return (frame + ip + udp).ljust(60, b"\0")


def _send_frames(ns: str, device: str, frame: bytes, count: int) -> None:
    with in_netns(ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((device, 0))
            for _ in range(count):
                raw.send(frame)


def test_frames_to_another_mac_count_otherhost_on_the_receiving_device(pair, drops_in):
    (sender_ns, sender_device, sender_ip, sender_mac), (receiver_ns, device, receiver_ip, _) = pair["a"], pair["b"]
    receiving, sending = drops_in(receiver_ns), drops_in(sender_ns)
    before_receiving, before_sending = _counts(receiving), _counts(sending)
    _send_frames(sender_ns, sender_device, _frame("02:00:00:00:00:99", sender_mac, sender_ip, receiver_ip), 120)
    assert _change(receiving, before_receiving) == {("otherhost", device): 120}
    # The frames still carry the sender's packet socket (skb->sk survives the veth): not the sender's drops.
    assert _change(sending, before_sending, settle=0) == {}


def _bpftool_enum(name: str) -> dict[str, int]:
    """The enum as bpftool (libbpf's own BTF parser) dumps it: an independent reading of the same BTF."""
    dump = run("bpftool", "btf", "dump", "file", btf.VMLINUX, "format", "raw").stdout
    block = re.search(rf"^\[\d+\] ENUM '{name}' .*?\n((?:\t.*\n)+)", dump, re.M)
    assert block, f"bpftool shows no enum {name}"
    return {found[1]: int(found[2]) for found in re.finditer(r"'(\w+)' val=(-?\d+)", block[1])}


def test_every_value_of_the_running_kernels_enum_has_its_name():
    require(os.path.exists(btf.VMLINUX), "kernel has no BTF (/sys/kernel/btf/vmlinux)")
    require(shutil.which("bpftool") is not None, "bpftool not installed (apt-get install bpftool)")
    enums = btf.read_enums(REASON_ENUMS)
    reasons = _bpftool_enum("skb_drop_reason")
    assert enums["skb_drop_reason"] == reasons
    names = ReasonNames(enums)
    for enumerator, number in reasons.items():
        expected = re.sub(r"^SKB_(DROP_REASON_)?", "", enumerator).lower()  # SKB_DROP_REASON_SKB_CSUM: skb_csum
        assert names(number) == expected
    assert names(reasons["SKB_DROP_REASON_NO_SOCKET"]) == "no_socket"
    assert len({names(number) for number in reasons.values()}) == len(reasons)
    if "skb_drop_reason_subsys" in enums:  # a subsystem's reason has the subsystem's name
        for enumerator, subsystem in enums["skb_drop_reason_subsys"].items():
            if subsystem and not enumerator.endswith("_NUM"):
                assert names(subsystem << 16 | 7) == enumerator.removeprefix("SKB_DROP_REASON_SUBSYS_").lower()


def _btf_blob(types: list[tuple[int, int, int, bytes]], strings: bytes, order: str = "<") -> bytes:
    """BTF as the kernel lays it out (include/uapi/linux/btf.h): header, types, strings; ``types`` are
    (name offset, info, size or type, the kind's trailing data)."""
    section = b"".join(struct.pack(order + "III", name, info, size) + data for name, info, size, data in types)
    header = struct.pack(order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(section), len(section), len(strings))
    return header + section + strings


def _enum(kind: int, enumerators: list[tuple[int, int]], order: str = "<", signed: bool = False) -> tuple[int, bytes]:
    if kind == 6:
        data = b"".join(struct.pack(order + ("Ii" if signed else "II"), name, number) for name, number in enumerators)
    else:
        data = b"".join(struct.pack(order + "III", name, number & 0xFFFFFFFF, (number >> 32) & 0xFFFFFFFF)
                        for name, number in enumerators)
    return (signed << 31) | (kind << 24) | len(enumerators), data


def _synthetic(order: str = "<") -> bytes:
    """int, struct {int a;}, enum skb_drop_reason, an enum64, enum skb_drop_reason_subsys."""
    strings = ["int", "pair", "a", "skb_drop_reason", "SKB_NOT_DROPPED_YET", "SKB_CONSUMED",
               "SKB_DROP_REASON_NO_SOCKET", "SKB_DROP_REASON_SUBSYS_MASK", "wide", "WIDE_NEGATIVE",
               "skb_drop_reason_subsys", "SKB_DROP_REASON_SUBSYS_CORE", "SKB_DROP_REASON_SUBSYS_WIFI",
               "SKB_DROP_REASON_SUBSYS_NUM"]
    table = b"\0" + b"".join(text.encode() + b"\0" for text in strings)
    offset = {text: table.index(b"\0" + text.encode() + b"\0") + 1 for text in strings}
    reasons_info, reasons = _enum(6, [(offset["SKB_NOT_DROPPED_YET"], 0), (offset["SKB_CONSUMED"], 1),
                                      (offset["SKB_DROP_REASON_NO_SOCKET"], 3),
                                      (offset["SKB_DROP_REASON_SUBSYS_MASK"], 0xFFFF0000)], order)
    wide_info, wide = _enum(19, [(offset["WIDE_NEGATIVE"], -5)], order, signed=True)
    subsystems_info, subsystems = _enum(6, [(offset["SKB_DROP_REASON_SUBSYS_CORE"], 0),
                                            (offset["SKB_DROP_REASON_SUBSYS_WIFI"], 1),
                                            (offset["SKB_DROP_REASON_SUBSYS_NUM"], 2)], order)
    types = [(offset["int"], 1 << 24, 4, struct.pack(order + "I", 32)),
             (offset["pair"], 4 << 24 | 1, 4, struct.pack(order + "III", offset["a"], 1, 0)),
             (offset["skb_drop_reason"], reasons_info, 4, reasons),
             (offset["wide"], wide_info, 8, wide),
             (offset["skb_drop_reason_subsys"], subsystems_info, 4, subsystems)]
    return _btf_blob(types, table, order)


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_synthetic_btf_names_known_subsystem_and_unknown_values(order):
    enums = btf.enums(_synthetic(order), [*REASON_ENUMS, "wide", "absent"])
    assert enums["skb_drop_reason"] == {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NO_SOCKET": 3,
                                        "SKB_DROP_REASON_SUBSYS_MASK": 0xFFFF0000}
    assert enums["wide"] == {"WIDE_NEGATIVE": -5}
    assert "absent" not in enums
    names = ReasonNames(enums)
    assert [names(number) for number in (0, 1, 3, 7, 1 << 16 | 4, 2 << 16 | 1, 0xFFFF0000)] == \
        ["not_dropped_yet", "consumed", "no_socket", "unknown_7", "wifi", "unknown_131073", "subsys_mask"]
    without_subsystems = ReasonNames({"skb_drop_reason": {"SKB_DROP_REASON_NO_SOCKET": 3}})
    assert without_subsystems(1 << 16 | 4) == "unknown_65540"


@pytest.mark.parametrize("damage, message", [
    (lambda blob: blob[:10], "shorter than a BTF header"),
    (lambda blob: b"\0\0" + blob[2:], "bad BTF magic"),
    (lambda blob: blob[:-3], "past the end"),
    (lambda blob: blob[:24] + struct.pack("<III", 1, 31 << 24, 0) + blob[36:], "unknown BTF kind 31"),
])
def test_damaged_btf_is_refused_in_one_line(damage, message):
    with pytest.raises(btf.BtfError, match=message):
        btf.enums(damage(_synthetic()), REASON_ENUMS)


def test_btf_this_reader_cannot_read_makes_the_collector_unavailable(monkeypatch):
    _require_bpf()

    def newer_kernel(*args, **kwargs):
        raise btf.BtfError("unknown BTF kind 20: a kernel newer than this reader")

    monkeypatch.setattr(btf, "read_enums", newer_kernel)  # simulated: this kernel's BTF reads fine
    collector = DropsCollector()
    with pytest.raises(Exception, match=r"^cannot read the drop reasons from /sys/kernel/btf/vmlinux: unknown BTF "
                                        r"kind 20"):
        collector.read()
    assert collector._object is None  # nothing loaded


_TRACE_HELPER = textwrap.dedent("""
    # In a mount namespace of its own: tracefs mounted only here, an instance of our own, removed at exit.
    import os, sys
    os.system("mount -t tracefs nodev /sys/kernel/tracing")
    root = "/sys/kernel/tracing/instances/" + sys.argv[1]
    os.mkdir(root)
    try:
        with open(root + "/events/skb/kfree_skb/filter", "w") as f: f.write("reason == " + sys.argv[2])
        with open(root + "/events/skb/kfree_skb/enable", "w") as f: f.write("1")
        print("ready", flush=True)
        sys.stdin.readline()
        with open(root + "/events/skb/kfree_skb/enable", "w") as f: f.write("0")
        with open(root + "/trace") as f: sys.stdout.write(f.read())
    finally:
        os.rmdir(root)
""")


def _kernel_reported_functions(reason: int, make_drops) -> dict[str, int]:
    """How many kfree_skb events of ``reason`` the kernel's own trace shows per function (location=%pS)
    while ``make_drops()`` runs: every drop of that reason on the machine, ours among them."""
    require(shutil.which("unshare") is not None, "unshare (util-linux) not installed")
    helper = subprocess.Popen(["unshare", "-m", sys.executable, "-c", _TRACE_HELPER, f"netio-drops-{os.getpid()}",
                               str(reason)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        if helper.stdout.readline().strip() != "ready":
            require(False, f"cannot trace kfree_skb with tracefs: {helper.communicate()[1].strip()}")
        make_drops()
        trace, errors = helper.communicate("done\n", timeout=30)
    finally:
        if helper.poll() is None:
            helper.kill()  # our own child, by its Popen handle
            helper.wait()
    assert helper.returncode == 0, errors
    functions: dict[str, int] = {}
    for found in re.finditer(r"location=([\w.]+)\+0x", trace):
        functions[found[1]] = functions.get(found[1], 0) + 1
    return functions


def test_locations_name_the_function_the_kernel_reports_and_stay_bounded(netns, drops_in):
    ns = netns()
    collector = drops_in(ns, locations=True, locations_top=1)
    require(collector.locations, "/proc/kallsyms hides kernel addresses")
    no_socket = btf.read_enums(REASON_ENUMS)["skb_drop_reason"]["SKB_DROP_REASON_NO_SOCKET"]
    before = _counts(collector)
    reported = _kernel_reported_functions(no_socket, lambda: _udp_to_closed_port(ns, 500))
    change = _change(collector, before)
    assert len(change) == 1 and change[next(iter(change))] == 500
    (reason, device, function), = change
    assert (reason, device) == ("no_socket", "lo")
    assert reported.get(function, 0) >= 500, reported  # the kernel names the same function for them
    # The one label is taken: TCP's drops, in another function, count as "other", and UDP keeps its label.
    _tcp_syns_to_closed_port(ns, 30)
    _udp_to_closed_port(ns, 5)
    assert _change(collector, before) == {("no_socket", "lo", function): 505, ("no_socket", "lo", "other"): 30}


@contextlib.contextmanager
def _on_one_cpu():
    """This thread runs on one CPU only, so the drops it causes (sent from it, dropped in the softirq that
    follows on the same CPU) all meet that CPU's cache slots."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def test_keys_that_collide_in_the_cache_count_exactly_through_the_table(pair, drops_in):
    (sender_ns, sender_device, sender_ip, sender_mac), (receiver_ns, device, receiver_ip, _) = pair["a"], pair["b"]
    collector = drops_in(receiver_ns, cache_slots=1)  # one slot per CPU: every second key collides
    before = _counts(collector)
    otherhost = _frame("02:00:00:00:00:99", sender_mac, sender_ip, receiver_ip)
    with _on_one_cpu():
        _send_frames(sender_ns, sender_device, otherhost, 10)  # takes the slot
        time.sleep(0.1)
        _udp_to_closed_port(receiver_ns, 7)  # finds it taken: counted in the table
        _tcp_syns_to_closed_port(receiver_ns, 4)
        _send_frames(sender_ns, sender_device, otherhost, 3)
    assert _change(collector, before) == {("otherhost", device): 13, ("no_socket", "lo"): 11}
    (slot_key, packets, _), = collector._slots()  # the one slot of the one CPU: otherhost's
    assert (collector.reason_name(slot_key[2]), packets) == ("otherhost", 13)
    assert collector._drops.lookup_batch(collector._per_cpu.size)[2] == 1  # no_socket's, in the table


def test_a_full_table_counts_new_entries_under_device_other(pair, drops_in):
    (sender_ns, sender_device, sender_ip, sender_mac), (receiver_ns, device, receiver_ip, _) = pair["a"], pair["b"]
    collector = drops_in(receiver_ns, table_entries=1, cache_slots=0)  # no cache: every key meets the table
    before = _counts(collector)
    _send_frames(sender_ns, sender_device, _frame("02:00:00:00:00:99", sender_mac, sender_ip, receiver_ip), 10)
    _udp_to_closed_port(receiver_ns, 7)
    _send_frames(sender_ns, sender_device, _frame("02:00:00:00:00:99", sender_mac, sender_ip, receiver_ip), 3)
    assert _change(collector, before) == {("otherhost", device): 13, ("no_socket", "other"): 7}


def test_a_vanished_device_leaves_the_output_and_the_kernels_table(pair, drops_in):
    (sender_ns, sender_device, sender_ip, sender_mac), (receiver_ns, device, receiver_ip, _) = pair["a"], pair["b"]
    collector = drops_in(receiver_ns)
    _send_frames(sender_ns, sender_device, _frame("02:00:00:00:00:99", sender_mac, sender_ip, receiver_ip), 4)
    time.sleep(0.2)
    assert _counts(collector)[("otherhost", device)] == 4
    assert collector._slots()  # the cache counted them
    run("ip", "-n", receiver_ns, "link", "del", device)
    assert not [key for key in _counts(collector) if key[1] == device]
    assert collector._drops.lookup_batch(collector._per_cpu.size)[2] == 0
    assert collector._slots() == []


def test_without_ebpf_the_collector_is_unavailable_in_one_line_and_the_scrape_answers(monkeypatch, caplog):
    # Simulated: the loader fails as it does without CAP_BPF (this test runs as root, where it would load).
    from exporter.bpf import libbpf

    def refuse(*args, **kwargs):
        raise BpfError(1, "loading drops.bpf.o into the kernel: Operation not permitted\nlibbpf: prog 'kfree_skb': "
                          "failed to load: -1")

    monkeypatch.setattr(libbpf, "BpfObject", refuse)
    collector = DropsCollector()
    scrape = Scrape([LinkCollector(), collector])
    with caplog.at_level(logging.INFO, logger="netio_exporter"):
        for _ in range(3):
            parsed = samples(render_text(scrape.families()).decode())
    scrape.close()
    assert value(parsed, "netio_scrape_collector_success", collector="drops") == 0
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    assert not [key for key in parsed if key[0].startswith("netio_drops")]
    lines = [record.getMessage() for record in caplog.records if "drops" in record.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "CAP_BPF" in lines[0]


_UNPRIVILEGED_CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from exporter.collectors import Scrape
    from exporter.collectors.drops import DropsCollector
    from exporter.collectors.link import LinkCollector
    from exporter.exposition import render_text
    scrape = Scrape([LinkCollector(), DropsCollector()])
    for _ in range(2):
        text = render_text(scrape.families()).decode()
    sys.stdout.write(text)
""")


def test_without_bpf_capabilities_the_scrape_still_answers():
    _require_bpf()
    capsh = shutil.which("capsh")
    require(capsh is not None, "capsh not installed (apt-get install libcap2-bin)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([capsh, "--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c",
                             f'exec "{sys.executable}" -c "$0"', _UNPRIVILEGED_CHILD],
                            capture_output=True, text=True, cwd=root, timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, result.stderr
    parsed = samples(result.stdout)
    assert value(parsed, "netio_scrape_collector_success", collector="drops") == 0
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    errors = [line for line in result.stderr.splitlines() if "collector drops failed" in line]
    assert len(errors) == 1 and "CAP_BPF" in errors[0], result.stderr


@pytest.mark.parametrize("flags", [(), ("--collector.drops.locations", "--collector.drops.locations-top", "3")])
def test_the_exporter_serves_drops(netns, exporter, flags):
    _require_bpf()
    ns = netns()
    running = exporter(ns, *flags)

    def no_socket_on_lo() -> tuple[dict, int]:
        # The readiness probe's connection attempts before the server listened are no_socket drops of this
        # namespace too (before the first scrape): the test counts from a first scrape.
        found = {labels: number for (name, labels), number in running.scrape().items()
                 if name == "netio_drops_total" and dict(labels)["reason"] == "no_socket"}
        assert all(dict(labels)["device"] == "lo" for labels in found)
        return found, sum(found.values())

    _, before = no_socket_on_lo()
    _udp_to_closed_port(ns, 9)
    time.sleep(0.2)
    after, total = no_socket_on_lo()
    assert total - before == 9, after
    assert value(running.scrape(), "netio_scrape_collector_success", collector="drops") == 1
    labels = dict(next(iter(after)))
    assert ("function" in labels) == bool(flags)
