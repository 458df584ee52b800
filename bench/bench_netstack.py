"""netstack collector overhead: iperf3 throughput without and with the eBPF programs loaded.

Makes two network namespaces of its own with a veth pair between them, and runs an iperf3 server
in the first. Round after round it alternates (rotating the order each round) three conditions:

  off       nothing loaded
  f1000     a netstack collector at the default 1000 Hz NET_RX sampling, in a helper process
  f0        the same with sampling off (-f 0): softirq and syscall accounting only

for two paths: loopback inside the first namespace, and the veth pair between the namespaces.
Each run is one iperf3 TCP stream of --seconds. It prints, per condition: the median throughput,
its spread and its ratio to "off" (ratio of medians, and the median of per-round ratios: a round's
runs are seconds apart, so pairing cancels slow drifts of a shared machine's load); the CPU time
both iperf3 ends used per GB moved (loopback softirqs run inline and are charged to them, and so
are our programs); the helper's scrape latency (read() after a run; the first read after traffic
also builds the kallsyms index, so it is shown apart) and its RSS. Then one extra loopback run of
each loaded condition with kernel.bpf_stats_enabled=1 shows what each program costs (calls, run
time per call, share of one CPU, CPU time per GB against iperf3's own; the statistics overstate a
little and leave out the tracepoints' dispatch), and a getppid() loop shows the tax every syscall
of every process pays while the collector is loaded (the sys_enter hook).

Run as root:  /opt/netio-venv/bin/python bench/bench_netstack.py [--rounds 15] [--seconds 2]
The namespaces, the iperf3 server and the helpers are removed at exit (processes by their pid);
bpf_stats_enabled is restored to its previous value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONDITIONS = ("off", "f1000", "f0")
PORT = 5201


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True)


def helper(frequency: int) -> None:
    """Hold a collector; answer "scrape" with the read() time in seconds and "rss" with VmRSS kB."""
    sys.path.insert(0, REPO)
    from exporter.collectors.netstack import NetstackCollector
    collector = NetstackCollector(frequency)
    print(collector._error or "ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "scrape":
            start = time.perf_counter()
            collector.read()
            print(time.perf_counter() - start, flush=True)
        elif line.strip() == "rss":
            with open("/proc/self/status") as status:
                rss = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
            print(rss, flush=True)
    collector.close()


class Helper:
    def __init__(self, frequency: int):
        self.process = subprocess.Popen([sys.executable, __file__, "--helper", str(frequency)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        answer = self.process.stdout.readline().strip()
        if answer != "ready":
            self.stop()
            raise SystemExit(f"bench_netstack: the collector cannot load: {answer}")

    def ask(self, what: str) -> str:
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child, by its Popen handle (pid)
                self.process.wait()


def iperf(ns: str, address: str, seconds: float) -> tuple[float, float]:
    """(bits per second received, CPU seconds both iperf3 ends spent per GB)."""
    # -A 0,1: client on CPU 0, server on CPU 1, so runs differ less by where the scheduler put them
    result = _run("ip", "netns", "exec", ns, "iperf3", "-c", address, "-p", str(PORT), "-t", str(seconds),
                  "-A", "0,1", "-J")
    report = json.loads(result.stdout)
    received = report["end"]["sum_received"]
    cpu = report["end"]["cpu_utilization_percent"]
    cpu_seconds = (cpu["host_total"] + cpu["remote_total"]) / 100 * received["seconds"]
    return received["bits_per_second"], cpu_seconds / (received["bytes"] / 1e9)


def bpf_program_stats(pid: int) -> dict[str, tuple[int, int]]:
    """run_time_ns and run_cnt of the programs ``pid`` holds (others may load the same names)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as file:
                held.update(int(line.split()[1]) for line in file if line.startswith("prog_id:"))
        except OSError:
            pass
    shown = json.loads(_run("bpftool", "prog", "show", "--json").stdout or "[]")
    return {program["name"]: (program.get("run_time_ns", 0), program.get("run_cnt", 0))
            for program in shown if program["id"] in held}


def syscall_nanoseconds(calls: int = 300_000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        os.getppid()
    return (time.perf_counter() - start) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--helper", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper is not None:
        helper(args.helper)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_netstack: run as root (namespaces and eBPF)")

    server_ns, client_ns = f"netio-bn{os.getpid()}a", f"netio-bn{os.getpid()}b"
    veth_a, veth_b = f"nbv{os.getpid() % 100000}a", f"nbv{os.getpid() % 100000}b"
    server = None
    stats_before = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    try:
        for ns in (server_ns, client_ns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        _run("ip", "link", "set", veth_a, "netns", server_ns, "name", "eth1")
        _run("ip", "link", "set", veth_b, "netns", client_ns, "name", "eth1")
        for ns, ip in ((server_ns, "10.198.0.1"), (client_ns, "10.198.0.2")):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth1")
            _run("ip", "-n", ns, "link", "set", "eth1", "up")
        server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        paths = {"loopback": (server_ns, "127.0.0.1"), "veth": (client_ns, "10.198.0.1")}
        throughput = {(path, condition): [] for path in paths for condition in CONDITIONS}
        cpu_per_gb = {(path, condition): [] for path in paths for condition in CONDITIONS}
        latencies = {condition: [] for condition in CONDITIONS[1:]}
        first_reads = {condition: [] for condition in CONDITIONS[1:]}
        rss = {}
        for round_index in range(args.rounds):
            order = CONDITIONS[round_index % 3:] + CONDITIONS[:round_index % 3]
            for condition in order:
                held = None if condition == "off" else Helper(1000 if condition == "f1000" else 0)
                try:
                    for index, (path, (ns, address)) in enumerate(paths.items()):
                        bits, cpu = iperf(ns, address, args.seconds)
                        throughput[(path, condition)].append(bits)
                        cpu_per_gb[(path, condition)].append(cpu)
                        if held:  # the helper's first read after traffic builds the kallsyms index
                            (first_reads if index == 0 else latencies)[condition].append(float(held.ask("scrape")))
                    if held:
                        rss[condition] = max(rss.get(condition, 0), int(held.ask("rss")))
                finally:
                    if held:
                        held.stop()
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)

        # Where the cost is: one more run per loaded condition with per-program statistics.
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as file:
            file.write("1")
        profile, profile_cost = {}, {}
        for condition in CONDITIONS[1:]:
            held = Helper(1000 if condition == "f1000" else 0)
            try:
                before = bpf_program_stats(held.process.pid)
                start = time.monotonic()
                bits, cpu_per_gigabyte = iperf(*paths["loopback"], args.seconds)
                elapsed = time.monotonic() - start
                after = bpf_program_stats(held.process.pid)
            finally:
                held.stop()
            profile[condition] = {name: (after[name][0] - before.get(name, (0, 0))[0],
                                         after[name][1] - before.get(name, (0, 0))[1], elapsed) for name in after}
            gigabytes = bits / 8 * args.seconds / 1e9
            bpf_seconds = sum(run_ns for run_ns, _, _ in profile[condition].values()) / 1e9
            profile_cost[condition] = (bpf_seconds / gigabytes, cpu_per_gigabyte)

        syscall_cost = {"off": [], "f0": []}
        for _ in range(8):
            syscall_cost["off"].append(syscall_nanoseconds())
            held = Helper(0)
            try:
                syscall_cost["f0"].append(syscall_nanoseconds())
            finally:
                held.stop()
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as file:
            file.write(stats_before)
        if server is not None and server.poll() is None:
            server.terminate()  # our own child, by pid
            server.wait()
        for ns in (server_ns, client_ns):
            _run("ip", "netns", "del", ns, check=False)

    print(f"\niperf3, one TCP stream, {args.seconds:g} s per run, {args.rounds} rounds, "
          f"kernel {os.uname().release}, {os.cpu_count()} CPUs\n")
    print("| path | condition | median Gbit/s | p25-p75 Gbit/s | ratio of medians | median of paired ratios "
          "| CPU s per GB (iperf3, both ends) | CPU ratio, median of paired |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        off_runs = throughput[(path, "off")]
        off = statistics.median(off_runs)
        for condition in CONDITIONS:
            runs = throughput[(path, condition)]
            median = statistics.median(runs)
            quartiles = statistics.quantiles(runs, n=4) if len(runs) > 1 else [median, median, median]
            paired = statistics.median(run / base for run, base in zip(runs, off_runs))
            cpu = cpu_per_gb[(path, condition)]
            cpu_paired = statistics.median(c / base for c, base in zip(cpu, cpu_per_gb[(path, "off")]))
            print(f"| {path} | {condition} | {median / 1e9:.2f} | {quartiles[0] / 1e9:.2f}-{quartiles[2] / 1e9:.2f} "
                  f"| {median / off:.3f} | {paired:.3f} | {statistics.median(cpu):.3f} | {cpu_paired:.3f} |")
    print("\n| condition | scrape after a run, median ms | max ms | first scrape after traffic, median ms "
          "| helper RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for condition in CONDITIONS[1:]:
        values = latencies[condition]
        print(f"| {condition} | {statistics.median(values) * 1e3:.2f} | {max(values) * 1e3:.2f} "
              f"| {statistics.median(first_reads[condition]) * 1e3:.2f} | {rss[condition] / 1024:.1f} |")
    print("\n| condition | program | calls/s | ns/call | CPU share of one core |")
    print("|---|---|---:|---:|---:|")
    for condition, programs in profile.items():
        for name, (run_ns, calls, elapsed) in sorted(programs.items(), key=lambda item: -item[1][0]):
            per_call = run_ns / calls if calls else 0
            print(f"| {condition} | {name} | {calls / elapsed:,.0f} | {per_call:.0f} | {run_ns / elapsed / 1e9 * 100:.2f}% |")
    print("\n| condition | BPF CPU s per GB (loopback) | iperf3 CPU s per GB, same run | programs' share |")
    print("|---|---:|---:|---:|")
    for condition, (bpf, iperf_cpu) in profile_cost.items():
        print(f"| {condition} | {bpf:.4f} | {iperf_cpu:.3f} | {bpf / iperf_cpu * 100:.1f}% |")
    off, loaded = (statistics.median(syscall_cost[key]) for key in ("off", "f0"))
    print("\n| getppid() from Python, median of 8 | ns per call |\n|---|---:|")
    print(f"| nothing loaded | {off:.0f} |\n| netstack loaded | {loaded:.0f} |\n| tax per syscall | {loaded - off:+.0f} |")


if __name__ == "__main__":
    main()
