"""netns benchmark: what --collector.netns costs a scrape with 50 namespaces of 4 interfaces and 100 TCP sockets.

Makes a namespace of its own for the exporters ("home") and N others named PREFIX0.. (default 50), each
with 4 interfaces: lo, a veth pair inside it, and one end of a veth pair to its neighbour namespace; and
100 TCP sockets (50 established loopback connections) held by a child process forked into it. Two
exporters run in home: one with ``--collector.netns --collector.netns.include 'PREFIX.*'``, one without
``--collector.netns``. Each round scrapes both, in alternating order, fresh (a new HTTP connection per
scrape) and kept alive (one HTTP/1.1 connection reused). It prints a markdown table: wall time median and
p90 of each, the per-namespace cost ((with - without) / N, of the medians), the series count, the
exporters' RSS (VmRSS, and the peak VmHWM), and the issue's target (N namespaces <= 25 ms + 1 ms each).

It measures what main's netns collector reads (link and netstat loss counters per namespace, and any
family added later) and prints it; nothing is asserted but the body: one netio_netns_info per namespace.

Run as root from the repository root:  python -m bench.bench_netns [--namespaces 50] [--rounds 200]
Every namespace and child is removed at exit (the children and exporters by their pid), on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from bench.bench_link import Client, Exporter
from tests.support import enter_netns, in_netns, samples

PORTS = {"with": 7080, "without": 7081}  # in the home namespace, which is ours alone
CONNECTIONS = 50  # per namespace: 100 sockets, both ends counted


def ip_batch(commands: list[str], ns: str | None = None) -> None:
    prefix = ["-n", ns] if ns else []
    subprocess.run(["ip", *prefix, "-batch", "-"], input="\n".join(commands) + "\n", text=True, check=True,
                   capture_output=True)


class Namespaces:
    """The home namespace and the measured ones; the children holding connections, ended by their pid."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.home = f"{prefix}home"
        self.made: list[str] = []
        self.children: dict[int, int] = {}  # pid -> write end of its pipe (closing it ends the child)

    def add(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.made.append(name)
        ip_batch(["link set lo up"], name)

    def make(self, count: int) -> list[str]:
        self.add(self.home)
        names = [f"{self.prefix}{index}" for index in range(count)]
        for name in names:
            self.add(name)
        links = []
        for index, name in enumerate(names):  # a veth pair inside each namespace
            links.append(f"link add i{index}a netns {name} type veth peer name i{index}b netns {name}")
        for index in range(0, count - 1, 2):  # and one end of a pair between neighbours
            links.append(f"link add x{index} netns {names[index]} type veth peer name x{index} netns {names[index + 1]}")
        ip_batch(links)
        if count % 2:  # the odd one out: one end of a pair to home
            ip_batch([f"link add x{count - 1} netns {names[-1]} type veth peer name x{count - 1} netns {self.home}"])
        for name in names:
            ip_batch([f"link set {device} up" for device in self.devices(name)], name)
        return names

    @staticmethod
    def devices(ns: str) -> list[str]:
        found = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], check=True, capture_output=True,
                               text=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in found.splitlines()]

    def hold_connections(self, ns: str, connections: int) -> None:
        """Fork a child into ``ns`` that holds ``connections`` established loopback connections until its
        pipe closes; return once they are up."""
        ready_read, ready_write = os.pipe()
        stop_read, stop_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only its own pipe ends, Ctrl-C left to the parent
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(ready_read)
                os.close(stop_write)
                for write_end in self.children.values():
                    os.close(write_end)
                enter_netns(ns)
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen(connections)
                held = []
                for _ in range(connections):
                    held.append(socket.create_connection(listener.getsockname()))
                    held.append(listener.accept()[0])
                listener.close()
                os.write(ready_write, b"r")
                os.read(stop_read, 1)  # b"" when the parent closes its end or exits
            finally:
                os._exit(0)
        os.close(ready_write)
        os.close(stop_read)
        self.children[pid] = stop_write
        answer = os.read(ready_read, 1)
        os.close(ready_read)
        if answer != b"r":
            raise RuntimeError(f"child {pid} in {ns} did not get its connections up")

    def tcp_sockets(self, ns: str) -> int:
        found = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established"],
                               check=True, capture_output=True, text=True).stdout
        return len(found.splitlines())

    def delete(self) -> None:
        for pid, write_end in self.children.items():
            os.close(write_end)
        deadline = time.monotonic() + 10
        for pid in self.children:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
        self.children.clear()
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()


def exporter(label: str, home: str, prefix: str) -> Exporter:
    port = PORTS[label]
    netns = ["--collector.netns", "--collector.netns.include", f"{prefix}.*"] if label == "with" else []
    return Exporter(label, home, port, [sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(port),
                                        *netns], "-m exporter")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def check(body: bytes, names: list[str]) -> int:
    """The series count of a scrape of the ``with`` exporter, after checking it covers every namespace."""
    parsed = samples(body.decode())
    seen = {dict(labels)["netns"] for name, labels in parsed if name == "netio_netns_info"}
    if seen != set(names):
        raise RuntimeError(f"netio_netns_info covers {len(seen)} namespaces, not the {len(names)} made")
    if parsed[("netio_scrape_collector_success", (("collector", "netns"),))] != 1:
        raise RuntimeError("the netns collector failed")
    return len(parsed)


def bench(home: str, names: list[str], exporters: dict[str, Exporter], rounds: int, warmup: int) -> dict:
    cases = (("fresh", False), ("keep-alive", True))
    times = {(case, label): [] for case, _ in cases for label in PORTS}
    with in_netns(home):
        clients = {(case, label): Client(PORTS[label], keep_alive, False) for case, keep_alive in cases
                   for label in PORTS}
        try:
            bodies = {label: clients["fresh", label].get()[1] for label in PORTS}
            for round_ in range(warmup + rounds):
                order = list(PORTS) if round_ % 2 == 0 else list(PORTS)[::-1]
                for case, _ in cases:
                    for label in order:
                        elapsed, _, _ = clients[case, label].get()
                        if round_ >= warmup:
                            times[case, label].append(elapsed)
        finally:
            for client in clients.values():
                client.close()
    return {"times": times, "cases": [case for case, _ in cases],
            "series": {"with": check(bodies["with"], names), "without": len(samples(bodies["without"].decode()))},
            "memory": {label: process.memory_mib() for label, process in exporters.items()}}


def report(result: dict, count: int, interfaces: list[int], sockets: list[int]) -> None:
    target = 25 + count
    print(f"{count} namespaces, {min(interfaces)}-{max(interfaces)} interfaces and {min(sockets)}-{max(sockets)} "
          f"established TCP sockets each; target with netns <= {target} ms (25 ms + 1 ms per namespace)\n")
    print("| case | without netns median / p90 ms | with netns median / p90 ms | per namespace ms | target |")
    print("|---|---:|---:|---:|---|")
    for case in result["cases"]:
        without, with_ = result["times"][case, "without"], result["times"][case, "with"]
        per = (statistics.median(with_) - statistics.median(without)) / count
        verdict = "met" if statistics.median(with_) * 1e3 <= target else "missed"
        print(f"| {case} | {statistics.median(without) * 1e3:.2f} / {percentile(without, 0.9) * 1e3:.2f} | "
              f"{statistics.median(with_) * 1e3:.2f} / {percentile(with_, 0.9) * 1e3:.2f} | {per * 1e3:.3f} | "
              f"{verdict} |")
    print("\n| exporter | series | RSS MiB (peak) |")
    print("|---|---:|---:|")
    for label in ("without", "with"):
        rss, hwm = result["memory"][label]
        print(f"| {label} netns | {result['series'][label]:,} | {rss:.1f} ({hwm:.1f}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=50, help="measured namespaces (default 50)")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds (default 200); a round scrapes "
                        "both exporters fresh and kept alive")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.exit(2, "bench_netns.py: needs root (network namespaces)\n")

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background

    prefix = f"nbns{os.getpid()}x"
    namespaces = Namespaces(prefix)
    exporters: dict[str, Exporter] = {}
    try:
        names = namespaces.make(args.namespaces)
        for name in names:
            namespaces.hold_connections(name, CONNECTIONS)
        interfaces = [len(namespaces.devices(name)) for name in names]
        sockets = [namespaces.tcp_sockets(name) for name in names]
        for label in ("without", "with"):
            exporters[label] = exporter(label, namespaces.home, prefix)
        print(f"exporters: with netns pid {exporters['with'].pid}, without pid {exporters['without'].pid}; "
              f"{args.rounds} rounds", file=sys.stderr, flush=True)
        result = bench(namespaces.home, names, exporters, args.rounds, args.warmup)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for process in exporters.values():
            process.stop()
        namespaces.delete()
    report(result, args.namespaces, interfaces, sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
