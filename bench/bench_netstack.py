"""netstack collector overhead: what its eBPF programs cost a continuous iperf3 stream.

Makes two network namespaces of its own with a veth pair between them and runs an iperf3 server in the
first. For two paths, loopback inside the first namespace and the veth pair between the namespaces, one
long iperf3 TCP stream (client on CPU 0, server on CPU 1) flows while a helper process holding a
netstack collector detaches and attaches its programs in 1 s windows, in ABBA order (bench/interleave.py:
a steady drift of the shared machine cancels; each window's rate is the receiving interface's counters).
Four conditions: the default ("default": softirq time, 1000 Hz NET_RX sampling), the default with
sampling off ("default -f 0"), the opt-in syscall entries ("--collector.netstack.syscalls", at
1000 Hz) and the floor of the default's hooks ("empty programs": hook_cost.bpf.c's empty programs on
softirq_entry and softirq_exit, what their dispatch alone costs). It prints per path and condition the median paired throughput ratio with/without, its 95%
confidence interval, the loss it means (target: <= 3% at the default) and whether the interval holds 1
(within noise); the collector's read() time after each window with the programs on (the first read
after start, which waits for the kallsyms index, is shown apart) and the helper's RSS. Then one more
loopback stream per condition with the kernel's run-time statistics on (bench/bpf_programs.py) shows
what each program costs (calls/s, run time per call, share of one CPU; the statistics add their own
clock reads and leave out the tracepoints' dispatch); a C getppid() loop (syscall_loop.c, pinned to
CPU 1) with each program of hook_cost.bpf.c alone on sys_enter shows what its dispatch, map stores and
clock read cost a syscall; and the same loop, one of write() to /dev/null and one of sched_yield()
between two processes on one CPU show the tax every syscall and context switch pays while the
collector is loaded, without and with the opt-in (target: 0 ns on getppid() by default). The default's
profile stream also compares NET_RX's measured time with what its stack samples estimate (count /
frequency): how far a sampled accounting would be off.

Run as root from the repository root:  python -m bench.bench_netstack [--pairs 40] [--window 1] [--syscalls-only]
[--streams-only] [--conditions default,...] [--paths loopback,veth]
The namespaces, the iperf3 processes and the helpers are removed at exit (processes by their pid). The
run-time statistics are on only while an fd of this process holds them (BPF_ENABLE_STATS).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.bpf_programs import HookCost, enable_bpf_stats, program_names, program_stats
from bench.helper import Helper
from bench.interleave import ReceiveCounter, interleave, paired_ratio, ratio_cells

# condition -> (sampling frequency, syscall entries); FLOOR: empty programs on the default's softirq hooks
FLOOR = -1
CONDITIONS = {"default": (1000, False), "default -f 0": (0, False), "--collector.netstack.syscalls": (1000, True),
              "empty programs": (FLOOR, False)}
PORT = 5201


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True)


def helper(frequency: int, syscalls: bool) -> None:
    """Hold a collector (or, at FLOOR, empty programs on its softirq hooks). Commands on stdin, one answer
    line each: "attach" / "detach" its programs, "scrape" (the read() time in seconds), "rss" (VmRSS in
    kB), "net_rx" (NET_RX seconds, all CPUs, and NET_RX stack samples so far)."""
    if frequency == FLOOR:
        collector = _EmptySoftirqPrograms()
    else:
        from exporter.collectors.netstack import NetstackCollector
        collector = NetstackCollector(frequency, syscalls=syscalls)
    try:
        collector.read()  # waits for the kallsyms index: built before any window is timed
    except Exception as error:
        print(error, flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "attach":
            collector.programs.attach(_online_cpus())
        elif command == "detach":
            collector.programs.detach()
        elif command == "scrape":
            start = time.perf_counter()
            collector.read()
            print(time.perf_counter() - start, flush=True)
            continue
        elif command == "net_rx":
            families = {family.name: family for family in collector.read()}
            seconds = sum(value for _, labels, value in families["netio_netstack_cpu_seconds"].samples
                          if dict(labels)["entry"] == "net_rx_softirq") if families else 0
            samples = sum(sum(values) for _, _, values in families["netio_netstack_rx_samples"].columns) \
                if "netio_netstack_rx_samples" in families else 0
            print(seconds, samples, flush=True)
            continue
        elif command == "rss":
            with open("/proc/self/status") as status:
                print(next(line.split()[1] for line in status if line.startswith("VmRSS:")), flush=True)
            continue
        print("ok", flush=True)
    collector.close()


def _online_cpus():
    from exporter.collectors.netstack.symbols import online_cpus
    return online_cpus()


class _EmptySoftirqPrograms:
    """The floor condition, in the shape helper() drives: hook_cost.bpf.c's empty programs on
    softirq_entry and softirq_exit, attached and detached; nothing to read."""

    def __init__(self):
        self._loaded = HookCost()
        self._attachment = None
        self.programs = self
        self.attach(None)  # attached from the start, as the collector's programs are

    def attach(self, cpus) -> None:
        if self._attachment is None:
            self._attachment = self._loaded.attach("softirq_entry_empty", "softirq_exit_empty")

    def detach(self) -> None:
        if self._attachment is not None:
            self._attachment.close()
            self._attachment = None

    def read(self) -> list:
        return []

    def close(self) -> None:
        self.detach()
        self._loaded.close()


def netstack_helper(frequency: int, syscalls: bool) -> Helper:
    return Helper([sys.executable, "-m", "bench.bench_netstack", "--helper", str(frequency),
                   *(["--helper-syscalls"] if syscalls else [])], "bench_netstack")


class Stream:
    """One long iperf3 TCP stream from namespace ``ns`` to ``address`` until ``stop()``."""

    def __init__(self, ns: str, address: str):
        # -A 0,1: client on CPU 0, server on CPU 1, so windows differ less by where the scheduler put them
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-c", address, "-p", str(PORT),
                                         "-t", "86400", "-A", "0,1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # past slow start
        if self.process.poll() is not None:
            raise RuntimeError(f"iperf3 client failed: {self.process.stderr.read().strip()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # our own child, by pid
            self.process.wait()
        time.sleep(0.5)  # the server takes the next client once it has closed this test


def syscall_nanoseconds(loop: str, call: str) -> float:
    """ns per ``call`` ("getppid", "write" to /dev/null, "yield") from syscall_loop.c, pinned to one CPU."""
    return float(_run("taskset", "-c", "1", loop, call).stdout)


def build_syscall_loop(directory: str) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise SystemExit("bench_netstack: needs a C compiler (cc, gcc or clang) for syscall_loop.c")
    path = os.path.join(directory, "syscall_loop")
    _run(compiler, "-O2", "-o", path, os.path.join(os.path.dirname(os.path.abspath(__file__)), "syscall_loop.c"))
    return path


def hook_costs(loop: str, rounds: int = 5) -> dict[str, float]:
    """Median ns a call gains with each program of hook_cost.bpf.c attached alone."""
    timed_by = {"empty": "getppid", "store": "getppid", "clock": "getppid", "switch_empty": "yield"}
    loaded = HookCost()
    try:
        taxes = {program: [] for program in timed_by}
        for _ in range(rounds):
            for program, values in taxes.items():
                bare = syscall_nanoseconds(loop, timed_by[program])
                attachment = loaded.attach(program)
                try:
                    values.append(syscall_nanoseconds(loop, timed_by[program]) - bare)
                finally:
                    attachment.close()
    finally:
        loaded.close()
    return {program: statistics.median(values) for program, values in taxes.items()}


def bench_streams(args) -> None:
    """The interleaved iperf3 windows, the read() times and RSS, and the per-program profile."""
    server_ns, client_ns = f"netio-bn{os.getpid()}a", f"netio-bn{os.getpid()}b"
    veth_a, veth_b = f"nbv{os.getpid() % 100000}a", f"nbv{os.getpid() % 100000}b"
    server = None
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
        # (namespace of the client, address, the receiving interface in the server's namespace)
        paths = {"loopback": (server_ns, "127.0.0.1", "lo"), "veth": (client_ns, "10.198.0.1", "eth1")}
        paths = {path: paths[path] for path in args.paths}
        conditions = {condition: CONDITIONS[condition] for condition in args.conditions}
        results, latencies, first_reads, rss = {}, {}, {}, {}
        for condition, (frequency, syscalls) in conditions.items():
            start = time.perf_counter()
            held = netstack_helper(frequency, syscalls)  # "ready" after its first read: the kallsyms index is built
            first_reads[condition] = time.perf_counter() - start
            latencies[condition] = []
            try:
                held.ask("detach")
                for path, (ns, address, device) in paths.items():
                    counter = ReceiveCounter(server_ns, device)
                    stream = Stream(ns, address)
                    try:
                        results[(path, condition)] = interleave(
                            counter, lambda: held.ask("attach"), lambda: held.ask("detach"), args.pairs,
                            args.window, after_on_window=lambda: latencies[condition].append(float(held.ask("scrape"))))
                    finally:
                        stream.stop()
                        counter.close()
                    print(f"{condition} {path} done", file=sys.stderr, flush=True)
                rss[condition] = int(held.ask("rss"))
            finally:
                held.stop()

        # Where the cost is: one more loopback stream per condition with per-program statistics.
        profile = {}
        stats_fd = enable_bpf_stats()
        try:
            for condition, (frequency, syscalls) in conditions.items():
                held = netstack_helper(frequency, syscalls)
                stream = Stream(server_ns, "127.0.0.1")
                try:
                    before, rx_before = program_stats(held.process.pid), held.ask("net_rx").split()
                    start = time.monotonic()
                    time.sleep(args.profile_seconds)
                    elapsed = time.monotonic() - start
                    after, rx_after = program_stats(held.process.pid), held.ask("net_rx").split()
                    names = program_names(after)  # while the helper still holds them
                    if condition == "default":  # NET_RX time as the samples estimate it, against the measured time
                        measured = float(rx_after[0]) - float(rx_before[0])
                        estimated = (float(rx_after[1]) - float(rx_before[1])) / frequency
                        sampled_net_rx = (measured, estimated)
                finally:
                    stream.stop()
                    held.stop()
                profile[condition] = {names[prog_id]: (run_ns - before.get(prog_id, (0, 0))[0],
                                                       calls - before.get(prog_id, (0, 0))[1], elapsed)
                                      for prog_id, (run_ns, calls) in after.items()}
        finally:
            os.close(stats_fd)

    finally:
        if server is not None and server.poll() is None:
            server.terminate()  # our own child, by pid
            server.wait()
        for ns in (server_ns, client_ns):
            _run("ip", "netns", "del", ns, check=False)

    print(f"\niperf3, one TCP stream, {args.pairs} pairs of {args.window:g} s windows without/with the programs, "
          f"kernel {os.uname().release}, {os.cpu_count()} CPUs\n")
    print("| path | condition | Gbit/s without, median | with/without, median of pairs | 95% interval | loss (95% interval) "
          "| within noise |")
    print("|---|---|---:|---:|---:|---|---|")
    for (path, condition), pairs in results.items():
        without = statistics.median(pair.off_bps for pair in pairs)
        ratio = paired_ratio(pairs)
        noise = "yes" if ratio.low <= 1 <= ratio.high else "no"
        print(f"| {path} | {condition} | {without / 1e9:.2f} | {ratio_cells(ratio)} | {noise} |")
    print("\n| condition | read() after a window, median ms | max ms | start to first read, ms | helper RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for condition in conditions:
        values = latencies[condition]
        print(f"| {condition} | {statistics.median(values) * 1e3:.2f} | {max(values) * 1e3:.2f} "
              f"| {first_reads[condition] * 1e3:.2f} | {rss[condition] / 1024:.1f} |")
    if "default" in conditions:
        measured, estimated = sampled_net_rx
        print(f"\nNET_RX time during the default's profile stream: measured {measured:.3f} s, estimated from the stack "
              f"samples (count / 1000 Hz) {estimated:.3f} s, ratio {estimated / measured if measured else float('nan'):.3f}")
    print("\n| condition | program | calls/s | ns/call | CPU share of one core |")
    print("|---|---|---:|---:|---:|")
    for condition, programs in profile.items():
        for name, (run_ns, calls, elapsed) in sorted(programs.items(), key=lambda item: -item[1][0]):
            if not calls:
                continue  # loaded, not attached (hook_cost.bpf.c's other programs)
            per_call = run_ns / calls if calls else 0
            print(f"| {condition} | {name} | {calls / elapsed:,.0f} | {per_call:.0f} | {run_ns / elapsed / 1e9 * 100:.2f}% |")


def bench_syscalls() -> None:
    """What a sys_enter program costs every syscall, and the tax while the collector is loaded."""
    # getppid() cannot reach a socket: sys_enter only stops the clock; write() can: it reads it.
    # sched_yield() to another process on the CPU: a context switch each, through sched_switch.
    loaded_conditions = {"default -f 0": False, "--collector.netstack.syscalls -f 0": True}
    with tempfile.TemporaryDirectory() as directory:
        loop = build_syscall_loop(directory)
        hooks = hook_costs(loop)
        syscalls = {"getppid()": "getppid", "write() to /dev/null": "write",
                    "sched_yield() between two processes on one CPU": "yield"}
        syscall_cost = {(name, loaded): [] for name in syscalls for loaded in (None, *loaded_conditions)}
        order = [None, *loaded_conditions]
        for round_number in range(6):  # each round in another order, so a drift favours no condition
            for condition in order[round_number % 3:] + order[:round_number % 3]:
                held = netstack_helper(0, loaded_conditions[condition]) if condition else None
                try:
                    for name, call in syscalls.items():
                        syscall_cost[(name, condition)].append(syscall_nanoseconds(loop, call))
                finally:
                    if held:
                        held.stop()
    print("\n| one program alone (bench/hook_cost.bpf.c) | what each call gains, ns |\n|---|---:|")
    for program, tax in hooks.items():
        hook = "sched_switch, per sched_yield() switch" if program.startswith("switch") else "sys_enter, per getppid()"
        print(f"| {program} ({hook}) | {tax:+.0f} |")
    print("\n| syscall (syscall_loop.c, median of 6) | nothing loaded, ns | "
          + " | ".join(f"{condition}: ns, tax" for condition in loaded_conditions) + " |")
    print("|---|---:|" + "---:|" * len(loaded_conditions))
    for name in syscalls:
        off = statistics.median(syscall_cost[(name, None)])
        cells = []
        for condition in loaded_conditions:
            loaded = statistics.median(syscall_cost[(name, condition)])
            cells.append(f"{loaded:.0f}, {loaded - off:+.0f}")
        print(f"| {name} | {off:.0f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40, help="off/on window pairs per path and condition (default 40)")
    parser.add_argument("--window", type=float, default=1, help="seconds per window (default 1)")
    parser.add_argument("--profile-seconds", type=float, default=3, help="stream seconds per profile run")
    parser.add_argument("--syscalls-only", action="store_true",
                        help="only the syscall costs (no namespaces, no iperf3; about a minute)")
    parser.add_argument("--conditions", type=lambda text: text.split(","), default=list(CONDITIONS),
                        help="comma-separated conditions to run (default: " + ",".join(CONDITIONS) + ")")
    parser.add_argument("--paths", type=lambda text: text.split(","), default=["loopback", "veth"],
                        help="comma-separated paths to run (default: loopback,veth)")
    parser.add_argument("--streams-only", action="store_true", help="skip the syscall costs")
    parser.add_argument("--helper", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--helper-syscalls", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 1 or args.window <= 0 or args.profile_seconds <= 0:
        parser.error("--pairs must be positive, --window and --profile-seconds above 0")
    unknown = [name for name in args.conditions if name not in CONDITIONS] + \
        [name for name in args.paths if name not in ("loopback", "veth")]
    if unknown:
        parser.error(f"unknown condition or path: {', '.join(unknown)}")
    if args.helper is not None:
        helper(args.helper, args.helper_syscalls)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_netstack: run as root (namespaces and eBPF)")
    if not args.syscalls_only:
        bench_streams(args)
    if not args.streams_only:
        bench_syscalls()


if __name__ == "__main__":
    main()
