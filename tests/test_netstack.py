"""netstack collector against the real kernel: softirq and (opt-in) syscall accounting, the NET_RX
breakdown's accounting (lost samples, symbols kept current, CPUs that come online), degradation without
privileges, and no program left behind by a killed exporter. The breakdown on each receive path is in
test_netstack_paths.py.

The counters are system-wide, so traffic the tests make (in their own namespaces) is compared
with what the kernel itself reports (/proc/softirqs) or with a baseline window; nothing here
asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.support import in_netns, require, run, samples, value
from tests.support.netstack import loaded_collector, prerouting_chain, require_bpf
from exporter.collectors import Scrape
from exporter.bpf.kallsyms import KernelSymbols
from exporter.collectors.netstack import CATEGORIES, ENTRIES, LOST_REASONS, NetstackCollector, classify
from exporter.collectors.netstack.syscalls import NETWORK_SYSCALLS
from exporter.exposition import render_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def collector():
    """A loaded netstack collector with the defaults (1000 Hz, no syscall entries); closed at teardown."""
    made = loaded_collector()
    yield made
    made.close()


@pytest.fixture
def syscall_collector():
    """A loaded netstack collector with --collector.netstack.syscalls; closed at teardown."""
    made = loaded_collector(syscalls=True)
    yield made
    made.close()


def _scrape(collector: NetstackCollector) -> dict:
    return samples(render_text(collector.read()).decode())


def _sum(parsed: dict, name: str, **labels) -> float:
    return sum(number for (sample, sample_labels), number in parsed.items()
               if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()))


def _per_cpu(parsed: dict, name: str, entry: str) -> dict[int, float]:
    return {int(dict(labels)["cpu"]): number for (sample, labels), number in parsed.items()
            if sample == name and dict(labels)["entry"] == entry}


def _proc_softirqs_net_rx() -> dict[int, int]:
    with open("/proc/softirqs") as file:
        lines = file.read().splitlines()
    cpus = [int(name[3:]) for name in lines[0].split()]
    for line in lines[1:]:
        fields = line.split()
        if fields[0] == "NET_RX:":
            return dict(zip(cpus, map(int, fields[1:])))
    raise AssertionError("no NET_RX line in /proc/softirqs")


def _loopback_tcp(ns: str, seconds: float) -> int:
    """Bulk TCP over the namespace's loopback for about ``seconds``; returns the bytes moved."""
    with in_netns(ns):
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    received = [0]

    def drain():
        while chunk := peer.recv(1 << 16):
            received[0] += len(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    block = b"x" * (1 << 16)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.sendall(block)
    client.close()
    reader.join()
    peer.close()
    server.close()
    return received[0]


def test_describe_touches_no_kernel_and_names_the_contract():
    families = {family.name: family for family in NetstackCollector.describe_families(None)}
    assert set(families) == {"netio_netstack_cpu_seconds", "netio_netstack_invocations",
                             "netio_netstack_rx_samples", "netio_netstack_rx_samples_lost",
                             "netio_netstack_rx_sampling_cpus"}
    assert {name: family.type for name, family in families.items() if family.type != "counter"} == {
        "netio_netstack_rx_sampling_cpus": "gauge"}
    assert LOST_REASONS == ("table_full", "stack_unreadable")
    assert ENTRIES == ("net_rx_softirq", "net_tx_softirq", "tx_syscall", "rx_syscall")
    assert CATEGORIES == ("driver_poll", "gro", "xdp_generic", "tc_classify", "nf_ingress", "nf_conntrack",
                          "bridging", "nf_prerouting_v4", "nf_prerouting_v6", "forwarding_v4", "forwarding_v6",
                          "local_delivery_v4", "local_delivery_v6", "other")


SOFTIRQ = ["net_rx_action", "handle_softirqs", "do_softirq.part.0", "__local_bh_enable_ip"]


@pytest.mark.parametrize("stack, category", [
    (["copy_to_user", "tcp_rcv_established", "tcp_v4_do_rcv", "tcp_v4_rcv", "ip_protocol_deliver_rcu",
      "ip_local_deliver_finish", "ip_local_deliver", "ip_rcv", "__netif_receive_skb_one_core",
      "process_backlog", "__napi_poll", *SOFTIRQ], "local_delivery_v4"),
    # the innermost stage wins: conntrack called from the PREROUTING hook
    (["nf_conntrack_in", "nf_hook_slow", "ip_rcv", "__netif_receive_skb_one_core", *SOFTIRQ], "nf_conntrack"),
    # a netfilter hook takes its caller's stage
    (["nft_do_chain", "nft_do_chain_ipv4", "nf_hook_slow", "ip_rcv", *SOFTIRQ], "nf_prerouting_v4"),
    (["nft_do_chain", "nf_hook_slow", "ip_local_deliver", "ip_rcv_finish", "ip_rcv", *SOFTIRQ], "local_delivery_v4"),
    (["nft_do_chain", "nf_hook_slow", "ip6_input", "ipv6_rcv", *SOFTIRQ], "local_delivery_v6"),
    (["nft_do_chain", "nf_hook_slow", "__netif_receive_skb_core.constprop.0", *SOFTIRQ], "nf_ingress"),
    (["nft_do_chain", "nf_hook_slow", "ip_forward", "ip_rcv", *SOFTIRQ], "forwarding_v4"),
    (["nf_hook_slow", "ip_output", "ip_forward_finish", "ip_forward", "ip_rcv", *SOFTIRQ], "forwarding_v4"),
    (["veth_xmit", "dev_hard_start_xmit", "__dev_queue_xmit", "ip6_finish_output2", "ip6_forward", "ipv6_rcv",
      *SOFTIRQ], "forwarding_v6"),
    (["fib_table_lookup", "ip_route_input_slow", "ip_route_input_noref", "ip_rcv_finish", "ip_rcv", *SOFTIRQ],
     "nf_prerouting_v4"),
    (["nf_hook_slow", "br_handle_frame", "__netif_receive_skb_core", *SOFTIRQ], "bridging"),
    (["cls_bpf_classify", "tcf_classify", "tc_run", "__netif_receive_skb_core", *SOFTIRQ], "tc_classify"),
    (["bpf_prog_run_generic_xdp", "do_xdp_generic", "__netif_receive_skb_core", *SOFTIRQ], "xdp_generic"),
    (["inet_gro_receive", "dev_gro_receive", "napi_gro_receive", "virtnet_poll", "__napi_poll", *SOFTIRQ], "gro"),
    (["virtnet_receive", "virtnet_poll", "__napi_poll", *SOFTIRQ], "driver_poll"),
    (["skb_defer_free_flush", *SOFTIRQ], "driver_poll"),
    # frames outside net_rx_action belong to what the softirq interrupted, never to a stage
    (["bpf_trace_run1", "handle_softirqs", "do_softirq.part.0", "__local_bh_enable_ip", "ip_finish_output2",
      "ip_output", "tcp_v4_rcv"], "other"),
    (["some_unknown_function"], "other"),
    # ip_forward reaches the output path by tail calls: its frame is gone by then
    (["veth_xmit", "dev_hard_start_xmit", "__dev_queue_xmit", "ip_finish_output2", "ip_output",
      "__netif_receive_skb_one_core", "process_backlog", *SOFTIRQ], "forwarding_v4"),
    (["tun_net_xmit", "__dev_queue_xmit", "ip6_finish_output", "ip6_output", "__netif_receive_skb_one_core",
      *SOFTIRQ], "forwarding_v6"),
    # ... but what the local stack sends while it receives (a TCP ACK) is local delivery
    (["__dev_queue_xmit", "ip_finish_output2", "ip_output", "ip_local_out", "__ip_queue_xmit", "__tcp_transmit_skb",
      "tcp_ack", "tcp_rcv_established", "tcp_v4_do_rcv", "tcp_v4_rcv", "ip_local_deliver_finish", *SOFTIRQ],
     "local_delivery_v4"),
    # conntrack in the output path still wins over forwarding
    (["nf_conntrack_in", "nf_hook_slow", "ip_output", "__netif_receive_skb_one_core", *SOFTIRQ], "nf_conntrack"),
    # tc and TCX are inlined into __netif_receive_skb_core: a BPF program's caller decides
    (["htab_map_hash", "bpf_prog_2d923b728ff2a551_count_and_continue", "__netif_receive_skb_core.constprop.0",
      *SOFTIRQ], "tc_classify"),
    (["bpf_prog_2d923b728ff2a551_xdp_count_and_drop", "bpf_prog_run_generic_xdp", "do_xdp_generic",
      "__netif_receive_skb_core", *SOFTIRQ], "xdp_generic"),
    # a route to nowhere, early demux: IP receive up to the routing decision
    (["kfree", "ip_error", "__netif_receive_skb_one_core", *SOFTIRQ], "nf_prerouting_v4"),
    (["udp_v4_early_demux", "ip_rcv_finish_core", "ip_rcv", *SOFTIRQ], "nf_prerouting_v4"),
    # bh enabled again inside a stage is not the softirq's own exit
    (["__local_bh_enable_ip", "nft_do_chain", "nft_do_chain_ipv4", "nf_hook_slow", "ip_rcv", *SOFTIRQ],
     "nf_prerouting_v4"),
    (["bpf_prog_ca1240e4a2ca8bfb_softirq_exit", "bpf_trace_run1", *SOFTIRQ[1:]], "other"),
    ([], "other"),
])
def test_each_stack_lands_in_exactly_one_category(stack, category):
    assert classify(stack) == category


def test_kallsyms_index_is_compact_and_resolves_functions():
    require(os.geteuid() == 0, "needs root to read kernel addresses in /proc/kallsyms")
    symbols = KernelSymbols()
    address = None
    with open("/proc/kallsyms") as file:
        for line in file:
            fields = line.split()
            if fields[1] in ("T", "t") and fields[2] == "net_rx_action":
                address = int(fields[0], 16)
                break
    assert address is not None
    assert symbols.function(address) == "net_rx_action"
    assert symbols.function(address + 1) == "net_rx_action"
    assert len(symbols) > 10_000
    assert symbols.memory_bytes() < 10_000_000  # two arrays and one blob, no Python object per symbol


def test_net_rx_invocations_match_proc_softirqs(collector, netns):
    ns = netns()
    proc_before = _proc_softirqs_net_rx()
    before = _scrape(collector)
    moved = _loopback_tcp(ns, 1.0)
    after = _scrape(collector)
    proc_after = _proc_softirqs_net_rx()
    assert moved > 0

    name = "netio_netstack_invocations_total"
    ours = {cpu: after_value - _per_cpu(before, name, "net_rx_softirq")[cpu]
            for cpu, after_value in _per_cpu(after, name, "net_rx_softirq").items()}
    kernel = {cpu: proc_after[cpu] - proc_before[cpu] for cpu in proc_after}
    assert sum(ours.values()) > 100  # loopback TCP runs NET_RX for every batch of segments
    for cpu, count in kernel.items():
        # /proc/softirqs was read just outside our scrapes: it may only be a little ahead
        assert count - 50 - count // 100 <= ours.get(cpu, 0) <= count, (cpu, ours, kernel)
    seconds = "netio_netstack_cpu_seconds_total"
    assert _sum(after, seconds, entry="net_rx_softirq") > _sum(before, seconds, entry="net_rx_softirq")
    rx_seconds = _per_cpu(after, seconds, "net_rx_softirq")
    for cpu, count in ours.items():
        if count > 0:
            assert rx_seconds[cpu] > _per_cpu(before, seconds, "net_rx_softirq")[cpu]


def _tx_invocations(collector) -> float:
    return _sum(_scrape(collector), "netio_netstack_invocations_total", entry="tx_syscall")


def _connected_udp_pair(ns: str) -> tuple[socket.socket, socket.socket]:
    with in_netns(ns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.connect(receiver.getsockname())
    return sender, receiver


def test_udp_sendto_counts_and_dev_null_and_unix_do_not(syscall_collector, netns):
    calls = 2000
    sender, receiver = _connected_udp_pair(netns())
    target = receiver.getsockname()
    unix_a, unix_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix_b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    devnull = os.open(os.devnull, os.O_WRONLY)

    def window(action) -> float:
        before = _tx_invocations(syscall_collector)
        action()
        return _tx_invocations(syscall_collector) - before

    def udp():
        for _ in range(calls):
            sender.sendto(b"x", target)

    def dev_null():
        for _ in range(calls):
            os.write(devnull, b"x")

    def unix():
        for _ in range(calls):
            unix_a.send(b"x")
            unix_b.recv(16)

    try:
        baseline = window(lambda: time.sleep(0.05))
        assert window(udp) >= calls
        # the rest of the machine may send meanwhile: allow what a quiet window saw, with room
        assert window(dev_null) <= baseline + calls // 4
        assert window(unix) <= baseline + calls // 4
    finally:
        os.close(devnull)
        for sock in (receiver, sender, unix_a, unix_b):
            sock.close()


# Every way Python has to send or receive on a socket, so each syscall number sys_enter must time
# (netstack/syscalls.py) is used once: a missing number would leave its calls uncounted.
_SENDS = {
    "send (sendto)": lambda sock, _: sock.send(b"x"),
    "write": lambda sock, _: os.write(sock.fileno(), b"x"),
    "writev": lambda sock, _: os.writev(sock.fileno(), [b"x"]),
    "sendmsg": lambda sock, _: sock.sendmsg([b"x"]),
    "sendfile": lambda sock, source: os.sendfile(sock.fileno(), source, 0, 1),
}
_RECEIVES = {
    "recv (recvfrom)": lambda sock: sock.recv(16),
    "read": lambda sock: os.read(sock.fileno(), 16),
    "readv": lambda sock: os.readv(sock.fileno(), [bytearray(16)]),
    "recvmsg": lambda sock: sock.recvmsg(16),
}


@pytest.mark.parametrize("way", sorted(_SENDS))
def test_every_send_syscall_counts(syscall_collector, netns, way, tmp_path):
    calls = 300
    sender, receiver = _connected_udp_pair(netns())
    source_path = tmp_path / "one-byte"
    source_path.write_bytes(b"x")
    source = os.open(source_path, os.O_RDONLY)
    try:
        before = _tx_invocations(syscall_collector)
        for _ in range(calls):
            _SENDS[way](sender, source)
        assert _tx_invocations(syscall_collector) - before >= calls
    finally:
        os.close(source)
        sender.close()
        receiver.close()


@pytest.mark.parametrize("way", sorted(_RECEIVES))
def test_every_receive_syscall_counts(syscall_collector, netns, way):
    calls = 300
    sender, receiver = _connected_udp_pair(netns())
    try:
        for _ in range(calls):
            sender.send(b"x")
        before = _sum(_scrape(syscall_collector), "netio_netstack_invocations_total", entry="rx_syscall")
        for _ in range(calls):
            _RECEIVES[way](receiver)
        after = _sum(_scrape(syscall_collector), "netio_netstack_invocations_total", entry="rx_syscall")
        assert after - before >= calls
    finally:
        sender.close()
        receiver.close()


def _header_numbers(path: str) -> dict[str, int]:
    with open(path) as header:
        text = header.read()
    numbers = {name: int(number) for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)\b", text)}
    numbers.update({name: int(number) for name, number in re.findall(r"#define __NR3264_(\w+)\s+(\d+)\b", text)})
    return numbers


_NETWORK_SYSCALL_NAMES = ("read", "write", "readv", "writev", "sendfile", "sendto", "recvfrom", "sendmsg",
                          "recvmsg", "splice", "recvmmsg", "sendmmsg", "preadv2", "pwritev2", "io_uring_enter")


def test_net_rx_inside_a_send_counts_as_softirq_only(syscall_collector, netns, tmp_path):
    # A datagram sent over loopback is received inline, in NET_RX, before sendto() returns (the
    # softirq runs when the send enables bottom halves again). A prerouting chain of 1,000 rules makes
    # that receive cost several times the send; pinned to one CPU, that CPU's tx_syscall time stays
    # well below its NET_RX time only if the softirq's time is left out of the syscall's.
    ns = netns()
    prerouting_chain(ns, tmp_path)
    sender, receiver = _connected_udp_pair(ns)
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        before = syscall_collector.programs.read_totals()
        for _ in range(2000):
            sender.send(b"x" * 16)
            receiver.recv(64)
        after = syscall_collector.programs.read_totals()
    finally:
        os.sched_setaffinity(0, allowed)
        sender.close()
        receiver.close()
    spent = {ENTRIES[entry]: after[entry][cpu][0] - before[entry][cpu][0] for entry in after}
    assert spent["tx_syscall"] > 0 and spent["tx_syscall"] * 2 < spent["net_rx_softirq"], spent


def test_network_syscall_numbers_match_the_system_headers():
    """The numbers in NETWORK_SYSCALLS, checked against linux-libc-dev's headers where installed."""
    checked = 0
    for machine, native, compat, compat_extra in (
            ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
             ("socketcall", "sendfile64", "recvmmsg_time64")),
            ("aarch64", "/usr/include/asm-generic/unistd.h", None, ())):
        if not os.path.exists(native):
            continue
        numbers = _header_numbers(native)
        expected = {numbers[name] for name in _NETWORK_SYSCALL_NAMES}
        if compat and os.path.exists(compat):
            compat_numbers = _header_numbers(compat)
            expected |= {compat_numbers[name] for name in _NETWORK_SYSCALL_NAMES + compat_extra}
            assert expected == set(NETWORK_SYSCALLS[machine])
        else:
            assert expected <= set(NETWORK_SYSCALLS[machine])
        checked += 1
    if not checked:
        pytest.skip("no kernel UAPI headers (linux-libc-dev) to check the syscall numbers against")


def test_recv_that_fails_with_eagain_counts(syscall_collector, netns):
    calls = 500
    sender, sock = _connected_udp_pair(netns())
    sender.close()
    sock.setblocking(False)
    before = _sum(_scrape(syscall_collector), "netio_netstack_invocations_total", entry="rx_syscall")
    for _ in range(calls):
        with pytest.raises(BlockingIOError):
            sock.recv(16)
    after = _sum(_scrape(syscall_collector), "netio_netstack_invocations_total", entry="rx_syscall")
    sock.close()
    assert after - before >= calls


def test_time_blocked_in_recv_is_not_counted(syscall_collector, netns):
    """A recv that sleeps for a second costs microseconds of CPU: switched-out time is paused out."""
    blocked = 1.0
    ns = netns()
    with in_netns(ns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    timer = threading.Timer(blocked, sender.sendto, (b"wake", receiver.getsockname()))
    name = "netio_netstack_cpu_seconds_total"
    before = _sum(_scrape(syscall_collector), name, entry="rx_syscall")
    timer.start()
    assert receiver.recv(16) == b"wake"
    after = _sum(_scrape(syscall_collector), name, entry="rx_syscall")
    timer.join()
    receiver.close()
    sender.close()
    # Counting the sleep would add a whole second by itself; other processes' receives add far less.
    assert after - before < blocked


def test_rx_breakdown_sums_and_loopback_tcp_is_local_delivery(collector, netns):
    ns = netns()
    before = _scrape(collector)
    _loopback_tcp(ns, 1.5)
    after = _scrape(collector)
    name = "netio_netstack_rx_samples_total"
    moved = {category: value(after, name, category=category) - value(before, name, category=category)
             for category in CATEGORIES}
    assert set(key for key in after if key[0] == name) == {(name, (("category", c),)) for c in CATEGORIES}
    assert all(delta >= 0 for delta in moved.values())
    total = sum(moved.values())
    assert total > 0
    assert max(moved, key=moved.get) == "local_delivery_v4", moved
    # cpu-clock fires every millisecond of CPU time: the sample count follows NET_RX's CPU time
    rx_seconds = (_sum(after, "netio_netstack_cpu_seconds_total", entry="net_rx_softirq")
                  - _sum(before, "netio_netstack_cpu_seconds_total", entry="net_rx_softirq"))
    assert rx_seconds * 1000 / 4 <= total <= rx_seconds * 1000 * 4 + 20, (total, rx_seconds)


def test_samples_wait_in_the_kernel_while_symbols_cannot_be_read(collector, netns, monkeypatch):
    """A scrape that cannot symbolise fails before it drains: the next good scrape counts those samples."""
    from exporter.collectors.netstack import collector as netstack_collector

    ns = netns()
    name = "netio_netstack_rx_samples_total"
    before = _scrape(collector)
    _loopback_tcp(ns, 1.0)
    collector._symbols = None

    def unreadable(*args, **kwargs):
        raise PermissionError("/proc/kallsyms: Permission denied (test)")

    monkeypatch.setattr(netstack_collector, "CurrentSymbols", unreadable)
    with pytest.raises(PermissionError):
        collector.read()
    monkeypatch.undo()
    after = _scrape(collector)
    total = sum(value(after, name, category=c) - value(before, name, category=c) for c in CATEGORIES)
    rx_seconds = (_sum(after, "netio_netstack_cpu_seconds_total", entry="net_rx_softirq")
                  - _sum(before, "netio_netstack_cpu_seconds_total", entry="net_rx_softirq"))
    assert rx_seconds * 1000 / 4 <= total, (total, rx_seconds)


def test_sampling_off_exports_time_but_no_samples(netns):
    collector = loaded_collector(frequency_hz=0)
    try:
        _loopback_tcp(netns(), 0.3)
        parsed = _scrape(collector)
        assert _sum(parsed, "netio_netstack_invocations_total", entry="net_rx_softirq") > 0
        assert not [key for key in parsed if key[0] == "netio_netstack_rx_samples_total"]
    finally:
        collector.close()


_CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from exporter.collectors import Scrape
    from exporter.collectors.link import LinkCollector
    from exporter.collectors.netstack import NetstackCollector
    from exporter.exposition import render_text
    scrape = Scrape([LinkCollector(), NetstackCollector()])
    sys.stdout.write(render_text(scrape.families()).decode())
""")


def test_without_bpf_capabilities_the_scrape_still_answers():
    require_bpf()
    capsh = shutil.which("capsh")
    require(capsh is not None, "capsh not installed (apt-get install libcap2-bin)")
    command = [capsh, "--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--",
               "-c", f'exec "{sys.executable}" -c "$0"', _CHILD]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr
    parsed = samples(result.stdout)
    assert value(parsed, "netio_scrape_collector_success", collector="netstack") == 0
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    assert value(parsed, "netio_network_receive_bytes_total", device="lo") is not None
    assert not [key for key in parsed if key[0].startswith("netio_netstack_")]
    errors = [line for line in result.stderr.splitlines() if "collector netstack failed" in line]
    assert len(errors) == 1 and "CAP_BPF" in errors[0], result.stderr


def _loaded_program_ids() -> set[int]:
    shown = run("bpftool", "prog", "show", "--json")
    return {program["id"] for program in json.loads(shown.stdout or "[]")}


def _program_ids_held_by(pid: int) -> set[int]:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as file:
                for line in file:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def test_sigkill_leaves_no_program_attached():
    require_bpf()
    require(shutil.which("bpftool") is not None, "bpftool not installed (apt-get install bpftool)")
    child = subprocess.Popen(
        [sys.executable, "-c", "from exporter.collectors.netstack import NetstackCollector; import sys, time\n"
                               "c = NetstackCollector(); print(c._error or 'ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    try:
        line = child.stdout.readline().strip()
        require(line == "ready", f"netstack collector cannot load: {line or child.stderr.read()}")
        held = _program_ids_held_by(child.pid)
        assert len(held) >= 3  # softirq entry and exit, and the sampler
        assert held <= _loaded_program_ids()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
    deadline = time.monotonic() + 10
    while held & _loaded_program_ids() and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel frees programs after an RCU grace period
    assert not held & _loaded_program_ids()


def test_scrape_reports_success_and_close_detaches(collector):
    parsed = samples(render_text(Scrape([collector]).families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector="netstack") == 1
    held = _program_ids_held_by(os.getpid())
    collector.close()
    assert not held & _program_ids_held_by(os.getpid())
    parsed = samples(render_text(Scrape([collector]).families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector="netstack") == 0
