"""TCP collector benchmark: a netio scrape against `ss -tinH` and the bare sock_diag dump.

Holds 2k, 10k and 20k TCP sockets (established loopback connections, both ends in the dump, each
after one request/response so the counters are real) in a network namespace of its own, so the
host's sockets do not count. The connections live in child processes, at most 8,000 sockets each
(the open-file limit here is 20,000 per process). For each size it alternates, round after round:

  floor   the kernel: the two SOCK_DIAG_BY_FAMILY dumps (AF_INET, AF_INET6, INET_DIAG_INFO) received
          into a buffer, no per-message work at all
  netio   a full scrape with the TCP collector, Scrape([TcpCollector()]) rendered to text: steady state,
          where the sockets were idle since the previous scrape
  moved   the same after every connection moved one byte each way, so every socket's counters changed
          (the delta path for every socket; the exchange itself is not timed)
  ss      `ss -tinH` run to completion, output discarded

and prints medians, ratios and this process's RSS (VmRSS) as a markdown table.
Run as root:  /opt/netio-venv/bin/python bench/bench_tcp.py [--sizes 2000,10000,20000] [--rounds 11]
The namespace and the child processes are removed at exit, the children by their pid.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.support.netns import enter_netns

SOCKETS_PER_CHILD = 8000


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

    def add(self, connections: int) -> None:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "bench.bench_tcp",
             "--child", str(connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"child {process.pid} did not get ready (exit {process.poll()})")

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
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def _time(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), _cpu()
    function()
    return time.perf_counter() - wall, _cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,20000", help="sockets to hold, comma-separated")
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds per size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    if os.geteuid() != 0:
        print("bench_tcp: needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.sizes.split(",")]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on a kill too (the finally below)
    namespace = f"netio-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    children = Children(namespace)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        enter_netns(namespace)  # this process (single-threaded) and its `ss` runs now see only the bench's sockets
        from exporter.collectors import Scrape
        from exporter.collectors.tcp import TcpCollector
        from exporter.exposition import render_text

        floor = KernelFloor()
        collector = TcpCollector()
        scrape = Scrape([collector])
        render_text(scrape.families())  # imports and first allocations happen before the baseline
        gc.collect()
        rss_before = _rss_mib()

        def netio():
            render_text(scrape.families())

        def ss():
            subprocess.run(["ss", "-tinH"], stdout=subprocess.DEVNULL, check=True)

        rows = []
        held = 0
        for size in sizes:
            while held < size:
                sockets = min(SOCKETS_PER_CHILD, size - held)
                children.add(sockets // 2)
                held += sockets // 2 * 2
            in_dump = floor.count()
            netio()  # the new sockets are first seen here; the timed rounds follow
            netio()
            gc.collect()
            rss = _rss_mib()  # the exporter's own memory
            timings: dict[str, list[tuple[float, float]]] = {"floor": [], "netio": [], "moved": [], "ss": []}
            for _ in range(args.rounds):
                timings["floor"].append(_time(floor))
                timings["netio"].append(_time(netio))
                timings["ss"].append(_time(ss))
                children.poke()
                timings["moved"].append(_time(netio))
            rss = max(rss, _rss_mib())
            wall = {name: statistics.median(wall for wall, _ in values) * 1e3 for name, values in timings.items()}
            cpu = {name: statistics.median(cpu for _, cpu in values) * 1e3 for name, values in timings.items()}
            rows.append((in_dump, wall, cpu, rss))

        print(f"TCP collector, {args.rounds} alternating rounds per size, medians; "
              f"kernel {os.uname().release}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f} at the end\n")
        for title, key in (("Wall-clock time", 1), ("CPU time (user + system; for ss, of the ss process)", 2)):
            print(f"{title}:\n")
            print("| sockets in dump | kernel floor | netio scrape | per socket | every socket moved | per socket "
                  "| `ss -tinH` | netio / ss | netio / floor |" + (" netio RSS |" if key == 1 else ""))
            print("|---:" * (10 if key == 1 else 9) + "|")
            for row in rows:
                in_dump, medians, rss = row[0], row[key], row[3]
                per = 1e3 / max(in_dump, 1)
                print(f"| {in_dump:,} | {medians['floor']:.1f} ms | {medians['netio']:.1f} ms "
                      f"| {medians['netio'] * per:.2f} µs | {medians['moved']:.1f} ms "
                      f"| {medians['moved'] * per:.2f} µs | {medians['ss']:.1f} ms "
                      f"| {medians['netio'] / medians['ss']:.2f} | {medians['netio'] / medians['floor']:.1f} |"
                      + (f" {rss:.1f} MiB (+{rss - rss_before:.1f}) |" if key == 1 else ""))
            print()
        print(f"netio RSS before the first socket: {rss_before:.1f} MiB; 'netio RSS' is the largest seen at that size.")
        collector.close()
    finally:
        children.stop()
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
