"""TCP collector benchmark: the kernel method and the polling method against `ss -tinH` and the floors.

Holds 0, 2k, 20k and 40k TCP sockets (established loopback connections, both ends counted, each after
one request/response so the counters are real) in a network namespace of its own, so the host's sockets
do not count. The connections live in child processes, at most 8,000 sockets each (the open-file limit
here is 20,000 per process). For each size it alternates, round after round:

  iter floor  a pass of the socket iterator with a program that does nothing (tcp_iter_floor.bpf.c)
  dump floor  the two SOCK_DIAG_BY_FAMILY dumps (AF_INET, AF_INET6, INET_DIAG_INFO) received into a
              buffer, no per-message work at all
  kernel      a full scrape with the kernel method (Scrape([TcpCollector()]) rendered to text)
  polling     the same with the polling method (TcpCollector(kernel=False)), after every connection
              moved one byte each way (the delta path for every socket; the exchange is not timed)
  ss          `ss -tinH` run to completion, output discarded

Wall and CPU medians (CPU: user + system of this process, or of `ss` for its row), ratios, and RSS. The
kernel method's scrape is split into its pass (the iterator and the map reads, timed on a second copy of
the programs) and the rest, which is Python. Each method runs in a process and a namespace of its own
(the kernel method in this one, polling in a second), so each RSS column is one method's, and neither sees
the other's TIME_WAIT sockets. Then the cost of the kernel method's programs from the kernel's run-time statistics
(bench/bpf_programs.py): the iterator program per socket, and the close hooks per connection over a loop
of short connections, every state transition included.
Run as root:  .venv/bin/python -m bench.bench_tcp [--sizes 0,2000,20000,40000] [--rounds 11]
              .venv/bin/python -m bench.bench_tcp --programs-only   (the programs' costs alone, seconds)
The namespace and the child processes are removed at exit, the children by their pid.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bpf_programs import enable_bpf_stats, program_names, program_stats
from tests.support.netns import enter_netns

SOCKETS_PER_CHILD = 8000
SHORT_CONNECTIONS = 5000  # for the close hooks' cost


def child(connections: int) -> None:
    """Hold ``connections`` established loopback connections; on each "poke" line from stdin, move
    one byte each way on every connection and answer "done"; exit when stdin closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    address = listener.getsockname()
    pairs = []
    request, response = b"q" * 300, b"r" * 1200
    for _ in range(connections):
        client = socket.create_connection(address)
        server, _ = listener.accept()
        client.sendall(request)
        server.recv(len(request), socket.MSG_WAITALL)
        server.sendall(response)
        client.recv(len(response), socket.MSG_WAITALL)
        pairs.append((client, server))
    listener.close()  # only the established sockets stay in the dump
    print("ready", flush=True)
    for line in sys.stdin:
        for client, server in pairs:
            client.send(b"p")
            server.recv(1)
            server.send(b"p")
            client.recv(1)
        print("done", flush=True)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Children:
    """Child processes holding connections in the namespace; ended by pid."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.processes: list[subprocess.Popen] = []
        self.held = 0

    def add(self, connections: int) -> None:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "bench.bench_tcp",
             "--child", str(connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        self.held += connections * 2
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"child {process.pid} did not get ready (exit {process.poll()})")

    def hold(self, sockets: int) -> None:
        """Grow to at least ``sockets`` sockets (connections of two)."""
        while self.held < sockets:
            self.add(max(min(SOCKETS_PER_CHILD, sockets - self.held) // 2, 1))

    def poke(self) -> None:
        for process in self.processes:
            process.stdin.write("poke\n")
            process.stdin.flush()
        for process in self.processes:
            if process.stdout.readline().strip() != "done":
                raise RuntimeError(f"child {process.pid} did not answer")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


class KernelFloor:
    """The two dumps received into one buffer: what the kernel costs, with no per-message work."""

    def __init__(self):
        from exporter.netlink.sock_diag import ALL_CONNECTION_STATES, INET_DIAG_INFO, SOCK_DIAG_BY_FAMILY
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)  # NETLINK_SOCK_DIAG
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.buffer = bytearray(1 << 16)
        self.requests = []
        for family in (socket.AF_INET, socket.AF_INET6):
            # struct inet_diag_req_v2 (include/uapi/linux/inet_diag.h) after a struct nlmsghdr
            payload = struct.pack("=BBBxI48x", family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1),
                                  ALL_CONNECTION_STATES)
            self.requests.append(struct.pack("=IHHII", 16 + len(payload), SOCK_DIAG_BY_FAMILY, 0x301, family, 0)
                                 + payload)

    def __call__(self) -> int:
        view = memoryview(self.buffer)
        received = 0
        for request, seq in zip(self.requests, (socket.AF_INET, socket.AF_INET6)):
            self.sock.send(request)
            while True:
                size = self.sock.recv_into(view)
                received += size
                if struct.unpack_from("=IH", self.buffer, 0)[1] in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                    break
                # NLMSG_DONE may also close the last batch of sockets: a 20-byte message at the end
                if size >= 36 and struct.unpack_from("=IHHI", self.buffer, size - 20)[::3] == (20, seq) \
                        and struct.unpack_from("=IH", self.buffer, size - 20)[1] == 3:
                    break
        return received

    def count(self) -> int:
        """Messages in the dumps (sockets), counted the slow way."""
        total = 0
        for request in self.requests:
            self.sock.send(request)
            done = False
            while not done:
                size = self.sock.recv_into(self.buffer)
                offset = 0
                while offset < size:
                    length, kind = struct.unpack_from("=IH", self.buffer, offset)
                    if kind in (2, 3):
                        done = True
                        break
                    total += 1
                    offset += (length + 3) & ~3
        return total


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its finished children (the `ss` runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _time(function) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), _cpu()
    function()
    return time.perf_counter() - wall, _cpu() - cpu


class Floors:
    """tcp_floor.bpf.c loaded: called, a pass of the iterator whose program does nothing; ``attach_hooks()``
    puts the empty sockops and tracepoint programs next to the kernel method's."""

    def __init__(self, directory: str):
        from exporter.bpf import build, libbpf
        path = Path(directory) / "tcp_floor.bpf.o"
        build.compile_object(Path(__file__).with_name("tcp_floor.bpf.c"), path)
        self._object = libbpf.BpfObject(str(path))
        self._attachment = libbpf.Attachment()
        self._link = self._attachment.attach(self._object, "iterate_nothing")

    def attach_hooks(self) -> None:
        from exporter.bpf.tcp_accounting import cgroup2_root
        self._attachment.attach_cgroup(self._object, "sockops_nothing", cgroup2_root())
        self._attachment.attach(self._object, "state_nothing")

    def __call__(self) -> None:
        fd = self._attachment.open_iterator(self._link)
        try:
            while os.read(fd, 4096):
                pass
        finally:
            os.close(fd)

    def close(self) -> None:
        self._attachment.close()
        self._object.close()


def measure(method: str, sizes: list[int], rounds: int, children: Children) -> dict:
    """One method over every size: {"rss_before": MiB, "sizes": [{sockets, rss, medians}]}, medians in
    ms as {row: [wall, cpu]}."""
    from exporter.collectors import Scrape
    from exporter.collectors.tcp import TcpCollector
    from exporter.exposition import render_text

    collector = TcpCollector(kernel=method == "kernel")
    if collector.method != method:
        raise SystemExit(f"bench_tcp: the {method} method did not start")
    scrape = Scrape([collector])
    dump_floor = KernelFloor()
    with tempfile.TemporaryDirectory() as directory:
        floors = {"dump floor": dump_floor}
        if method == "kernel":
            from exporter.bpf.tcp_accounting import TcpAccounting
            floors["iter floor"] = Floors(directory)
            accounting = TcpAccounting({})  # a second copy of the kernel side: its pass, timed apart
            floors["pass"] = lambda: (accounting.live_pass(), accounting.totals())
        render_text(scrape.families())  # imports and first allocations happen before the baseline
        gc.collect()
        result = {"rss_before": _rss_mib(), "sizes": []}

        def netio():
            render_text(scrape.families())

        def ss():
            subprocess.run(["ss", "-tinH"], stdout=subprocess.DEVNULL, check=True)

        for size in sizes:
            children.hold(size)
            netio()  # polling: the new sockets are first seen here; the timed rounds follow
            netio()
            timings: dict[str, list] = {name: [] for name in floors}
            timings[method] = []
            if method == "kernel":
                timings["ss"] = []
            for _ in range(rounds):
                for name, floor in floors.items():
                    timings[name].append(_time(floor))
                if method == "polling":
                    children.poke()
                timings[method].append(_time(netio))
                if method == "kernel":
                    timings["ss"].append(_time(ss))
            gc.collect()
            result["sizes"].append({
                "sockets": dump_floor.count(), "rss": _rss_mib(),
                "medians": {name: [statistics.median(sample[index] for sample in samples) * 1e3
                                   for index in range(2)] for name, samples in timings.items()}})
        if method == "kernel":
            floors["iter floor"].close()
            accounting.close()
    collector.close()
    return result


def _program_costs(action) -> dict[str, tuple[int, int]]:
    """{program name: (run time ns, runs)} of this process's tcp_* programs during ``action()``
    (run-time statistics on meanwhile)."""
    stats_fd = enable_bpf_stats()
    try:
        before = program_stats(os.getpid())
        action()
        after = program_stats(os.getpid())
    finally:
        os.close(stats_fd)
    names = program_names(after)
    return {names[prog_id]: (run_ns - before.get(prog_id, (0, 0))[0], runs - before.get(prog_id, (0, 0))[1])
            for prog_id, (run_ns, runs) in after.items()}


def _short_connections(count: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    for _ in range(count):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        client.sendall(b"q" * 100)
        server.recv(100, socket.MSG_WAITALL)
        server.sendall(b"r" * 100)
        client.recv(100, socket.MSG_WAITALL)
        client.close()
        server.recv(1)
        server.close()
    listener.close()
    time.sleep(0.2)  # the last closes


def scrapes(args, sizes: list[int], kernel_namespace: str, polling_namespace: str) -> None:
    """The table of scrapes: the kernel method in this process (moved into ``kernel_namespace``), polling in
    a child process in ``polling_namespace``."""
    enter_netns(kernel_namespace)
    children = Children(kernel_namespace)
    try:
        kernel = measure("kernel", sizes, args.rounds, children)
    finally:
        children.stop()
    polling = json.loads(subprocess.run(
        [sys.executable, "-m", "bench.bench_tcp", "--sizes", args.sizes, "--rounds", str(args.rounds),
         "--polling-in", polling_namespace], capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    print(f"TCP collector, {args.rounds} alternating rounds per size, medians; kernel {os.uname().release}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| sockets | kernel scrape: wall / CPU | its pass: wall / CPU | Python (scrape - pass): wall / CPU "
          "| iterator floor | polling scrape: wall / CPU | dump floor | `ss -tinH`: wall / CPU "
          "| kernel / ss (wall) | kernel RSS | polling RSS |")
    print("|---:" * 11 + "|")
    for k, p in zip(kernel["sizes"], polling["sizes"]):
        km, pm = k["medians"], p["medians"]
        (wall, cpu), (pass_wall, pass_cpu) = km["kernel"], km["pass"]
        print(f"| {k['sockets']:,} | {wall:.1f} / {cpu:.1f} ms | {pass_wall:.1f} / {pass_cpu:.1f} ms "
              f"| {wall - pass_wall:.1f} / {cpu - pass_cpu:.1f} ms | {km['iter floor'][0]:.1f} ms "
              f"| {pm['polling'][0]:.1f} / {pm['polling'][1]:.1f} ms | {km['dump floor'][0]:.1f} ms "
              f"| {km['ss'][0]:.1f} / {km['ss'][1]:.1f} ms | {wall / km['ss'][0]:.3f} "
              f"| {k['rss']:.1f} MiB (+{k['rss'] - kernel['rss_before']:.1f}) "
              f"| {p['rss']:.1f} MiB (+{p['rss'] - polling['rss_before']:.1f}) |")


def programs(namespace: str) -> None:
    """What the kernel method's programs cost, from the run-time statistics, in ``namespace``."""
    from exporter.collectors.tcp import TcpCollector
    from exporter.exposition import render_text
    enter_netns(namespace)
    children = Children(namespace)
    collector = TcpCollector()
    try:
        children.hold(20_000)
        first = _program_costs(lambda: render_text(collector.read())).get("tcp_live", (0, 0))
        live = _program_costs(lambda: render_text(collector.read())).get("tcp_live", (0, 0))
        print(f"\nIterator program (tcp_live) in one scrape at 20,000 sockets: {live[0] / 1e6:.2f} ms, "
              f"{live[0] / max(live[1], 1):.0f} ns per socket over {live[1]:,} runs (the scrape that met "
              f"them first, making their records: {first[0] / max(first[1], 1):.0f} ns per socket).")
        children.stop()
        with tempfile.TemporaryDirectory() as directory:
            floors = Floors(directory)
            floors.attach_hooks()
            try:
                costs = _program_costs(lambda: _short_connections(SHORT_CONNECTIONS))
            finally:
                floors.close()
    finally:
        children.stop()
        collector.close()
    print(f"\nHooks over {SHORT_CONNECTIONS:,} short loopback connections (both ends, every state change), "
          "next to empty programs on the same hooks, whose run time is what the statistics themselves add "
          "(they leave out each hook's dispatch):\n")
    print("| program | runs per connection | ns per connection | minus the empty program's |")
    print("|---|---:|---:|---:|")
    empty = {"tcp_sockops": costs.get("sockops_nothing", (0, 0)), "tcp_close": costs.get("state_nothing", (0, 0))}
    net_total = 0.0
    for name in ("tcp_sockops", "tcp_close", "sockops_nothing", "state_nothing"):
        run_ns, runs = costs.get(name, (0, 0))
        net = (run_ns - empty[name][0]) / SHORT_CONNECTIONS if name in empty else None
        net_total += net or 0
        print(f"| {name} | {runs / SHORT_CONNECTIONS:.1f} | {run_ns / SHORT_CONNECTIONS:.0f} | "
              + (f"{net:.0f} |" if net is not None else "|"))
    print(f"| kernel method, both hooks | | | {net_total:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,2000,20000,40000", help="sockets to hold, comma-separated")
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds per size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--programs-only", action="store_true",
                        help="only the programs' costs (the iterator's per socket, the close hooks' per connection)")
    parser.add_argument("--polling-in", help=argparse.SUPPRESS)  # the polling process, in this namespace
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    if os.geteuid() != 0:
        print("bench_tcp: needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.polling_in:  # its results as one JSON line
        enter_netns(args.polling_in)
        children = Children(args.polling_in)
        try:
            print(json.dumps(measure("polling", sizes, args.rounds, children)), flush=True)
        finally:
            children.stop()
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on a kill too (the finally below)
    parts = ("hooks",) if args.programs_only else ("kernel", "polling", "hooks")
    namespaces = {part: f"netio-bench-{os.getpid()}-{part}" for part in parts}
    try:
        for namespace in namespaces.values():
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        if not args.programs_only:
            scrapes(args, sizes, namespaces["kernel"], namespaces["polling"])
        programs(namespaces["hooks"])
    finally:
        for namespace in namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], check=False)
    return 0

if __name__ == "__main__":
    sys.exit(main())
