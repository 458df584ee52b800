"""tcp's kernel method against the real kernel: connections that open and close between two scrapes count
exactly (IPv4 and IPv6, FIN and RST; with sockops on the cgroup root, below it, or the tracepoint alone),
long-lived sockets count once at their close, a socket that disconnects and connects again counts each
life once, totals stay monotonic while connections churn during scrapes, other namespaces stay out, every
close counts exactly once under load (cross-checked with the namespace's own Tcp ActiveOpens +
PassiveOpens), and without BPF the collector falls back to polling.

Each test runs in namespaces it creates; the collector is created and read inside ``in_netns`` (the socket
iterator walks the namespace of the thread that runs a pass). Expected bytes follow the kernel's SYN/FIN
rule: the connecting side has its SYN and its FIN in bytes_acked, each side's bytes_received has the
peer's FIN but not its SYN, an RST sender has no FIN, bytes_sent is data only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.support import close_after_test, in_netns, require, run, samples, value
from tests.support.netns import enter_netns
from exporter.bpf import libbpf
from exporter.bpf import tcp_accounting
from exporter.bpf.tcp_accounting import PROGRAMS, cgroup2_root, netns_cookie
from exporter.collectors import Scrape
from exporter.collectors.tcp import TcpCollector
from exporter.exposition import render_text
from exporter.netlink.sock_diag import TCP_INFO_COUNTERS, SockDiagReader

PORT = 5001
UP, DOWN = 20_000, 1_000  # bytes each connection sends from the client, from the server
BYTES = ("netio_tcp_received_bytes_total", "netio_tcp_acked_bytes_total", "netio_tcp_sent_bytes_total")
COUNTERS = BYTES + ("netio_tcp_received_segments_total", "netio_tcp_sent_segments_total",
                    "netio_tcp_retransmitted_segments_total", "netio_tcp_retransmitted_bytes_total",
                    "netio_tcp_busy_seconds_total", "netio_tcp_connections_closed_total")


def _kernel_collector(ns: str, ports=frozenset({PORT})) -> TcpCollector:
    with in_netns(ns):
        collector = TcpCollector(ports)
    close_after_test(collector)
    require(collector.method == "kernel", "the kernel method did not start (eBPF needs root and BTF)")
    return collector


def _scrape(collector: TcpCollector, ns: str) -> dict:
    with in_netns(ns):
        return samples(render_text(Scrape([collector]).families()).decode())


def _moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _listener(family=socket.AF_INET, host="127.0.0.1", port=PORT) -> socket.socket:
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(512)
    return listener


def _connection(listener: socket.socket, up: int = UP, down: int = DOWN, reset: bool = False) -> None:
    """One whole connection: ``up`` bytes to the server, ``down`` back, then closed by the client
    (with an RST if ``reset``: SO_LINGER 0), then by the server. Call in the namespace."""
    host, port = listener.getsockname()[:2]
    client = socket.create_connection((host, port))
    server, _ = listener.accept()
    client.sendall(b"u" * up)
    assert len(server.recv(up, socket.MSG_WAITALL)) == up
    server.sendall(b"d" * down)
    assert len(client.recv(down, socket.MSG_WAITALL)) == down
    if reset:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    if not reset:
        assert server.recv(1) == b""  # the client's FIN has arrived
    server.close()


def _settle(ns: str, timeout: float = 20.0, states: tuple = (6, 10)) -> None:
    """Until every TCP socket of the namespace is listening or in TIME_WAIT (every close has happened),
    or in one of ``states``."""
    with in_netns(ns):
        reader = SockDiagReader()
    try:
        deadline = time.monotonic() + timeout
        while any(sock.state not in states for sock in reader.dump_tcp_sockets()):
            assert time.monotonic() < deadline, "sockets did not settle"
            time.sleep(0.02)
    finally:
        reader.close()


@pytest.fixture
def cgroup_below_root():
    """A cgroup v2 directory below the root, removed after the test."""
    root = cgroup2_root()
    require(root is not None, "no cgroup v2 hierarchy mounted")
    path = os.path.join(root, f"netio-test-{os.getpid()}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


@contextlib.contextmanager
def _member_of(cgroup: str):
    """This process in ``cgroup`` meanwhile (its new sockets are that cgroup's), then back in the root."""
    for path in (cgroup, cgroup2_root()):
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        if path == cgroup:
            yield


@pytest.mark.parametrize("hooks", ["sockops", "tracepoint only", "below the cgroup root"])
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_short_lived_connections_between_two_scrapes_count_exactly(netns, monkeypatch, request, family, host, hooks):
    """Also with the tracepoint alone, as where no cgroup v2 hierarchy is mounted (simulated), and with
    tcp_sockops on a cgroup below the root, as from a cgroup namespace's: there the clients are made in
    that cgroup (tcp_sockops counts their closes) and the listener, so the server ends, outside it: the
    iterator has enrolled the listener, so they have the flag, but tcp_sockops does not run for them (the
    tracepoint counts theirs)."""
    ns = netns()
    below = request.getfixturevalue("cgroup_below_root") if hooks == "below the cgroup root" else None
    if hooks != "sockops":
        monkeypatch.setattr(tcp_accounting, "cgroup2_root", lambda: below)
    with in_netns(ns):
        listener = _listener(family, host)  # before the collector: its iterator enrols it
    collector = _kernel_collector(ns)
    accounting = collector._accounting._accounting
    assert accounting.cgroup == {"sockops": cgroup2_root(), "tracepoint only": None}.get(hooks, below)
    before = _scrape(collector, ns)
    count, resets = 50, 10
    with in_netns(ns), (_member_of(below) if below else contextlib.nullcontext()):
        for index in range(count):
            _connection(listener, reset=index < resets)
    _settle(ns)
    after = _scrape(collector, ns)
    if below:  # the clients' closes were tcp_sockops's, the server ends' the tracepoint's
        followed = accounting._object.map("followed_cgroups", key_size=8, value_size=1)
        assert followed.lookup(struct.pack("=Q", os.stat(below).st_ino)) is not None
        assert followed.lookup(struct.pack("=Q", os.stat(cgroup2_root()).st_ino)) is None
    port, other = str(PORT), "other"
    fins = count - resets  # connections the client closed with a FIN
    assert _moved(before, after, "netio_tcp_received_bytes_total", local_port=port) == count * UP + fins
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port=port) == count * DOWN
    assert _moved(before, after, "netio_tcp_received_bytes_total", local_port=other) == count * DOWN + fins
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port=other) == count * UP
    assert _moved(before, after, "netio_tcp_acked_bytes_total", local_port=other) == count * (UP + 1) + fins
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port=port) == count
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port=other) == count
    assert _moved(before, after, "netio_tcp_retransmitted_segments_total", local_port=port) == 0
    # Closed with a FIN by both: each server end also has its own FIN acknowledged.
    with in_netns(ns):
        _connection(listener)
    _settle(ns)
    last = _scrape(collector, ns)
    assert _moved(after, last, "netio_tcp_acked_bytes_total", local_port=port) == DOWN + 1
    listener.close()


def test_long_lived_and_pre_existing_sockets_count_once_at_close(netns):
    ns = netns()
    with in_netns(ns):
        listener = _listener()
        old = socket.create_connection(("127.0.0.1", PORT))
        old_server, _ = listener.accept()
        old.sendall(b"o" * 5000)  # before the exporter: not counted
        assert len(old_server.recv(5000, socket.MSG_WAITALL)) == 5000
    collector = _kernel_collector(ns)
    with in_netns(ns):
        client = socket.create_connection(("127.0.0.1", PORT))
        server, _ = listener.accept()
    scrapes = [_scrape(collector, ns)]
    for round_ in range(3):  # live across scrapes, with short-lived connections in between
        for sender, receiver in ((client, server), (old, old_server)):
            sender.sendall(b"x" * 3000)
            assert len(receiver.recv(3000, socket.MSG_WAITALL)) == 3000
        with in_netns(ns):
            _connection(listener)
        scrapes.append(_scrape(collector, ns))
    for sock in (client, old):
        sock.close()
    for sock in (server, old_server):
        assert sock.recv(1) == b""
        sock.close()
    _settle(ns)
    scrapes.append(_scrape(collector, ns))
    first, last = scrapes[0], scrapes[-1]
    port = str(PORT)
    # Port side: 2 long-lived ends (3 x 3000 each + the client's FIN), 3 short ones (UP + FIN each).
    assert _moved(first, last, "netio_tcp_received_bytes_total", local_port=port) == 2 * (9000 + 1) + 3 * (UP + 1)
    assert _moved(first, last, "netio_tcp_connections_closed_total", local_port=port) == 2 + 3
    # Client side: the long-lived clients' SYNs were acknowledged before the first scrape.
    assert _moved(first, last, "netio_tcp_sent_bytes_total", local_port="other") == 2 * 9000 + 3 * UP
    assert _moved(first, last, "netio_tcp_acked_bytes_total", local_port="other") == 2 * (9000 + 1) + 3 * (UP + 2)
    again = _scrape(collector, ns)
    assert all(value(again, name, local_port=port) == value(last, name, local_port=port) for name in COUNTERS)
    listener.close()


def _disconnect(sock: socket.socket) -> None:
    """connect(AF_UNSPEC): tcp_disconnect(), which closes the socket and leaves it free to connect again."""
    libc = ctypes.CDLL(None, use_errno=True)
    unspecified = ctypes.create_string_buffer(16)  # a struct sockaddr of family AF_UNSPEC (0)
    if libc.connect(sock.fileno(), unspecified, len(unspecified)) != 0:
        raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")


def test_a_socket_that_disconnects_and_connects_again_counts_each_life_once(netns):
    """The client's first life stalls on a peer that does not read, so its busy time runs; tcp_disconnect()
    zeroes the byte counters but keeps that time: its second life counts its own bytes and not the first
    life's time again."""
    ns = netns()
    collector = _kernel_collector(ns, frozenset({PORT, PORT + 1}))
    with in_netns(ns):
        first_listener, second_listener = _listener(), _listener(port=PORT + 1)
        client = socket.create_connection(("127.0.0.1", PORT))
    stalled, _ = first_listener.accept()
    before = _scrape(collector, ns)
    client.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            client.send(b"s" * 65536)
    stall = 0.6
    time.sleep(stall)
    offset = {name: offset for name, offset, _ in TCP_INFO_COUNTERS}["bytes_sent"]
    first_sent, = struct.unpack_from("=Q", client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), offset)
    client.setblocking(True)
    _disconnect(client)  # an RST to the stalled peer
    client.connect(("127.0.0.1", PORT + 1))
    server, _ = second_listener.accept()
    client.sendall(b"u" * UP)
    assert len(server.recv(UP, socket.MSG_WAITALL)) == UP
    server.sendall(b"d" * DOWN)
    assert len(client.recv(DOWN, socket.MSG_WAITALL)) == DOWN
    client.close()
    assert server.recv(1) == b""
    for sock in (server, stalled):
        sock.close()
    _settle(ns)
    after = _scrape(collector, ns)
    second = str(PORT + 1)
    assert _moved(before, after, "netio_tcp_received_bytes_total", local_port=second) == UP + 1
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port=second) == DOWN
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port=second) == 1
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 1
    assert _moved(before, after, "netio_tcp_sent_bytes_total", local_port="other") == first_sent + UP
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port="other") == 2  # two lives
    busy = _moved(before, after, "netio_tcp_busy_seconds_total", local_port="other")
    assert 0.9 * stall <= busy < 1.5 * stall, busy  # the first life's stall once (twice: ~2 x stall)
    for listener in (first_listener, second_listener):
        listener.close()


def _churn(ns: str, connections: int, stop: threading.Event) -> None:
    with in_netns(ns):
        listener = _listener(port=PORT + 1)
        try:
            for _ in range(connections):
                _connection(listener, 2000, 100)
        finally:
            listener.close()
            stop.set()


def test_totals_are_monotonic_while_connections_churn_during_scrapes(netns):
    ns = netns()
    collector = _kernel_collector(ns, frozenset({PORT + 1}))
    first = _scrape(collector, ns)
    done = threading.Event()
    connections = 2000
    churn = threading.Thread(target=_churn, args=(ns, connections, done))
    churn.start()
    readings = [first]
    while len(readings) < 21:
        readings.append(_scrape(collector, ns))
        if done.is_set() and len(readings) < 21:
            time.sleep(0.01)
    churn.join(timeout=120)
    assert done.is_set()
    for previous, current in zip(readings, readings[1:]):
        for name in COUNTERS:
            for port in (str(PORT + 1), "other"):
                assert value(current, name, local_port=port) >= value(previous, name, local_port=port), name
    _settle(ns)
    last = _scrape(collector, ns)
    assert _moved(first, last, "netio_tcp_received_bytes_total", local_port=str(PORT + 1)) == connections * (2000 + 1)
    assert _moved(first, last, "netio_tcp_received_bytes_total", local_port="other") == connections * (100 + 1)
    assert _moved(first, last, "netio_tcp_connections_closed_total", local_port=str(PORT + 1)) == connections + 1
    assert _moved(first, last, "netio_tcp_connections_closed_total", local_port="other") == connections


def test_another_namespaces_closes_stay_out(netns):
    ours, theirs = netns(), netns()
    collector = _kernel_collector(ours)
    with in_netns(theirs):
        their_cookie = netns_cookie()
        listener = _listener()
    before = _scrape(collector, ours)
    with in_netns(theirs):
        for _ in range(20):
            _connection(listener)
    _settle(theirs)
    after = _scrape(collector, ours)
    for name in COUNTERS:
        for port in (str(PORT), "other"):
            assert value(after, name, local_port=port) == value(before, name, local_port=port), name
    # The close hook saw them, under their namespace's cookie: what a per-namespace view can read.
    theirs_totals = collector._accounting._accounting.totals(their_cookie)
    assert theirs_totals[1].closed == 20 and theirs_totals[0].closed == 20
    assert theirs_totals[1].counters[2] == 20 * (UP + 1)  # bytes_received on the listed port
    listener.close()


def test_without_bpf_it_falls_back_to_polling(netns, monkeypatch, caplog):
    """BPF unavailable is simulated: the object loader raises EPERM as it does without privileges."""
    ns = netns()

    def refuse(*args, **kwargs):
        raise libbpf.BpfError(1, "loading tcp_accounting.bpf.o into the kernel: Operation not permitted")

    monkeypatch.setattr(libbpf, "BpfObject", refuse)
    with caplog.at_level(logging.WARNING, logger="netio_exporter"), in_netns(ns):
        collector = TcpCollector(frozenset({PORT}))
        close_after_test(collector)
        listener = _listener()
        client = socket.create_connection(("127.0.0.1", PORT))
        server, _ = listener.accept()
    assert collector.method == "polling"
    assert [record.getMessage() for record in caplog.records] == [
        "tcp: eBPF accounting unavailable (loading tcp_accounting.bpf.o into the kernel: Operation not "
        "permitted): counting by sock_diag polling, whose totals miss connections that open and close "
        "between two scrapes"]
    before = _scrape(collector, ns)
    assert value(before, "netio_tcp_accounting_info", method="polling") == 1
    client.sendall(b"p" * 4000)
    assert len(server.recv(4000, socket.MSG_WAITALL)) == 4000
    with in_netns(ns):
        _connection(listener)  # opened and closed between two scrapes: polling does not see its bytes
    _settle(ns, states=(1, 6, 10))  # the long-lived pair stays established
    after = _scrape(collector, ns)
    assert _moved(before, after, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 4000
    assert _moved(before, after, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 0
    assert value(after, "netio_tcp_accounting_info", method="polling") == 1
    for sock in (client, server, listener):
        sock.close()


def _opens(ns: str) -> int:
    """Tcp ActiveOpens + PassiveOpens of namespace ``ns``, from its own /proc/net/snmp."""
    lines = [line.split() for line in run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Tcp:")]
    fields = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return fields["ActiveOpens"] + fields["PassiveOpens"]


def _load_worker(ns: str, cpu: int, port: int, connections: int, ready, go) -> None:
    os.sched_setaffinity(0, {cpu})
    enter_netns(ns)
    listener = _listener(port=port)
    ready.put(cpu)
    go.wait()
    for _ in range(connections):
        _connection(listener, 100, 100)
    listener.close()


def test_every_close_counts_exactly_once_under_load(netns):
    ns = netns()
    # RPS on loopback: a packet's receive softirq runs on the CPU its flow hashes to, raised there by an
    # IPI, so it interrupts whatever that CPU runs, close programs included (the nesting the kernel skips).
    mask = sum(1 << cpu for cpu in os.sched_getaffinity(0))
    run("ip", "netns", "exec", ns, "sh", "-c", f"echo {mask:x} > /sys/class/net/lo/queues/rx-0/rps_cpus")
    collector = _kernel_collector(ns, frozenset())
    programs = collector._accounting._accounting._object.program_fds()
    misses_before = {name: libbpf.program_info(programs[name])["recursion_misses"] for name in PROGRAMS}
    cpus = sorted(os.sched_getaffinity(0))[:2]
    per_worker, rounds, counted, opened = 10_000, 0, 0, 0
    context = multiprocessing.get_context("fork")
    before = _scrape(collector, ns)
    opens_before = _opens(ns)
    misses = {name: 0 for name in misses_before}
    # One round: 20,000 connections on both CPUs. Repeated (at most three times) until the kernel has
    # skipped the plain tracepoint program (tcp_close) at least once: the case a design on the
    # tracepoint alone loses, which tcp_sockops (a cgroup program, never skipped) covers.
    while rounds < 3 and not misses["tcp_close"]:
        ready, go = context.Queue(), context.Event()
        workers = [context.Process(target=_load_worker,
                                   args=(ns, cpu, PORT + 10 * rounds + index, per_worker, ready, go))
                   for index, cpu in enumerate(cpus * (2 // len(cpus)))]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=30)
        go.set()
        for worker in workers:
            worker.join(timeout=300)
            assert worker.exitcode == 0
        rounds += 1
        _settle(ns, timeout=60)
        after = _scrape(collector, ns)
        counted = _moved(before, after, "netio_tcp_connections_closed_total")
        opened = _opens(ns) - opens_before
        misses = {name: libbpf.program_info(programs[name])["recursion_misses"] - misses_before[name]
                  for name in misses_before}
        made = rounds * 2 * per_worker
        assert opened == 2 * made  # each connection is two sockets: one active, one passive open
        assert counted == opened + 2 * rounds, (counted, opened, misses)  # + each round's two listeners
        assert _moved(before, after, "netio_tcp_received_bytes_total") == made * 2 * (100 + 1)
    print(f"{rounds} round(s), {counted:.0f} closes counted, recursion misses {misses}")
    assert misses["tcp_close"] > 0, f"no recursion miss in {rounds} rounds: the run did not exercise the case"
    assert misses["tcp_sockops"] == 0


def _programs_held(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (its program and link fds, from /proc/PID/fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                ids.update(int(line.split()[1]) for line in info if line.startswith("prog_id:"))
        except OSError:
            pass
    return ids


def _loaded(prog_id: int) -> bool:
    return run("bpftool", "prog", "show", "id", str(prog_id), check=False).returncode == 0


def test_the_exporter_counts_with_the_kernel_method_and_a_kill_leaves_nothing_loaded(netns, exporter):
    """`ip netns exec` mounts a sysfs of the namespace over /sys, hiding the cgroup v2 mount: the exporter
    runs with the tracepoint alone here (and says so)."""
    ns = netns()
    process = exporter(ns, "--collector.tcp.local-ports", str(PORT))
    first = process.scrape()
    assert value(first, "netio_tcp_accounting_info", method="kernel") == 1
    for program in PROGRAMS[1:]:
        assert value(first, "netio_bpf_program_missed_runs_total", program=program) is not None, program
    held = _programs_held(process.process.pid)
    names = {json.loads(run("bpftool", "prog", "show", "id", str(prog_id), "--json").stdout)["name"]
             for prog_id in held}
    assert {"tcp_close", "tcp_live"} <= names
    with in_netns(ns):
        listener = _listener()
        for _ in range(5):
            _connection(listener)
    _settle(ns)
    after = process.scrape()
    assert _moved(first, after, "netio_tcp_received_bytes_total", local_port=str(PORT)) == 5 * (UP + 1)
    assert _moved(first, after, "netio_tcp_connections_closed_total", local_port=str(PORT)) == 5
    process.process.kill()  # kill -9: programs and links go with the process's fds
    process.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_loaded(prog_id) for prog_id in held):  # freed after an RCU grace period
        assert time.monotonic() < deadline, "the exporter's programs are still loaded after it died"
        time.sleep(0.1)
    listener.close()


def _sockops_on_root() -> int:
    shown = run("bpftool", "cgroup", "show", cgroup2_root(), "--json").stdout
    return sum(1 for entry in json.loads(shown.strip() or "[]") if entry.get("name") == "tcp_sockops")


def test_a_killed_process_leaves_no_sockops_on_the_cgroup():
    require(cgroup2_root() is not None, "no cgroup v2 hierarchy mounted")
    before = _sockops_on_root()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from exporter.bpf.tcp_accounting import TcpAccounting; "
         "accounting = TcpAccounting({}); print(accounting.cgroup, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == cgroup2_root()
        assert _sockops_on_root() == before + 1
    finally:
        holder.kill()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _sockops_on_root() != before:
        assert time.monotonic() < deadline, "tcp_sockops still attached after its process died"
        time.sleep(0.1)
