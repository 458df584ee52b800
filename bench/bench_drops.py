"""drops collector overhead: what counting every drop costs a flood of drops.

Makes a network namespace of its own and floods a closed UDP port on its loopback with 16-byte datagrams
from a C sender pinned to CPU 0 (udp_flood.c): every datagram is one NO_SOCKET drop, a few hundred
thousand a second. A helper process in the namespace holds a drops collector and detaches and attaches
its program in windows, in ABBA order (bench/interleave.py: a steady drift of the shared machine
cancels; each window's rate is the namespace's Udp NoPorts count of datagrams to closed ports). It prints the median paired ratio of
the sender's throughput with/without the program, its 95% confidence interval and the loss it means
(target: <= 2%); then the same for an empty program on the same tracepoint (bench/hook_cost.bpf.c's
`drop_empty`): the floor any per-drop counter pays, the tracepoint's dispatch alone; then, in one more
stretch of flood per program with the kernel's run-time statistics on (bench/bpf_programs.py), its runs
per second, ns per run (target: <= 100 ns per drop; the statistics add two clock reads of their own per
run and leave out the tracepoint's dispatch) and share of one CPU; and the collector's read() time (its
table and a link dump) after each window.

Run as root from the repository root:  python -m bench.bench_drops [--pairs 30] [--window 1]
The namespace and the processes are removed at exit (processes by their pid). The run-time statistics
are on only while an fd of this process holds them (BPF_ENABLE_STATS).
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

from bench.bpf_programs import HookCost, enable_bpf_stats, program_stats
from bench.helper import Helper
from bench.interleave import interleave, paired_ratio, ratio_cells

CLOSED_PORT = 9
PROGRAMS = {"collector": "drops collector (kfree_skb)",
            "empty": "empty program on kfree_skb (the floor)"}


def helper() -> None:
    """Hold a collector and the empty program. Commands on stdin, one answer line each: "attach PROGRAM" /
    "detach PROGRAM" (PROGRAM: collector or empty), "scrape" (the collector's read() time in seconds),
    "drops" (no_socket drops the collector counted so far)."""
    from exporter.collectors.drops import DropsCollector
    collector = DropsCollector()
    floor, empty = HookCost(), None
    print(collector._error or "ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command == ["attach", "collector"] and collector._attachment is None:
            collector._attachment = collector._attach()
        elif command == ["detach", "collector"] and collector._attachment is not None:
            collector._attachment.close()
            collector._attachment = None
        elif command == ["attach", "empty"] and empty is None:
            empty = floor.attach("drop_empty")
        elif command == ["detach", "empty"] and empty is not None:
            empty.close()
            empty = None
        elif command == ["scrape"]:
            start = time.perf_counter()
            collector.read()
            print(time.perf_counter() - start, flush=True)
            continue
        elif command == ["drops"]:
            family, = collector.read()
            print(sum(number for _, labels, number in family.samples if dict(labels)["reason"] == "no_socket"),
                  flush=True)
            continue
        print("ok", flush=True)
    collector.close()
    floor.close()


class ClosedPortCounter:
    """Datagrams to closed ports so far (Udp NoPorts of /proc/PID/net/snmp, PID a process in the namespace),
    in the (time, bytes, packets) form interleave() reads: the loopback's own packet counter would count each
    datagram twice, the kernel answering every one with an ICMP port unreachable (not rate-limited on lo)."""

    def __init__(self, pid: int):
        self.path = f"/proc/{pid}/net/snmp"

    def read(self) -> tuple[float, int, int]:
        with open(self.path) as file:
            names, values = [line.split() for line in file if line.startswith("Udp:")][:2]
        return time.monotonic(), 0, int(values[names.index("NoPorts")])


def drops_helper(ns: str) -> Helper:
    return Helper(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.bench_drops", "--helper"], "bench_drops")


def build_flood(directory: str) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise SystemExit("bench_drops: needs a C compiler (cc, gcc or clang) for udp_flood.c")
    path = os.path.join(directory, "udp_flood")
    subprocess.run([compiler, "-O2", "-o", path, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "udp_flood.c")], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30, help="off/on window pairs (default 30)")
    parser.add_argument("--window", type=float, default=1, help="seconds per window (default 1)")
    parser.add_argument("--profile-seconds", type=float, default=5, help="flood seconds with run-time statistics")
    parser.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper:
        helper()
        return
    if args.pairs < 1 or args.window <= 0 or args.profile_seconds <= 0:
        parser.error("--pairs must be positive, --window and --profile-seconds above 0")
    if os.geteuid() != 0:
        raise SystemExit("bench_drops: run as root (namespaces and eBPF)")
    ns = f"netio-bd{os.getpid()}"
    flood = held = None
    with tempfile.TemporaryDirectory() as directory:
        sender = build_flood(directory)
        try:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            held = drops_helper(ns)
            counter = ClosedPortCounter(held.process.pid)
            flood = subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0", sender, "127.0.0.1",
                                      str(CLOSED_PORT)], stderr=subprocess.PIPE, text=True)
            time.sleep(1)
            if flood.poll() is not None:
                raise SystemExit(f"bench_drops: udp_flood failed: {flood.stderr.read().strip()}")
            reads = []
            pairs = {program: interleave(counter, lambda: held.ask(f"attach {program}"),
                                         lambda: held.ask(f"detach {program}"), args.pairs, args.window,
                                         after_on_window=(lambda: reads.append(float(held.ask("scrape"))))
                                         if program == "collector" else None)
                     for program in PROGRAMS}
            profiles = {}
            stats_fd = enable_bpf_stats()
            try:
                for program in PROGRAMS:
                    held.ask(f"attach {program}")
                    drops_before = int(held.ask("drops"))
                    stats_before, (_, _, packets_before) = program_stats(held.process.pid), counter.read()
                    start = time.monotonic()
                    time.sleep(args.profile_seconds)
                    elapsed = time.monotonic() - start
                    stats_after, (_, _, packets_after) = program_stats(held.process.pid), counter.read()
                    counted = int(held.ask("drops")) - drops_before  # moves with the collector's program only
                    held.ask(f"detach {program}")
                    profiles[program] = (elapsed, (packets_after - packets_before) / elapsed, counted / elapsed,
                                         _moved(stats_before, stats_after))
            finally:
                os.close(stats_fd)
        finally:
            if flood is not None and flood.poll() is None:
                flood.terminate()  # our own child, by pid
                flood.wait()
            if held is not None:
                held.stop()
            subprocess.run(["ip", "netns", "del", ns], check=False)

    print(f"\nUDP flood to a closed port on a namespace's loopback, sender on CPU 0, {args.pairs} pairs of "
          f"{args.window:g} s windows without/with the program, kernel {os.uname().release}, {os.cpu_count()} CPUs\n")
    print("| program | datagrams/s without, median | with/without, median of pairs | 95% interval | loss (95% interval) |")
    print("|---|---:|---:|---:|---|")
    for program in PROGRAMS:
        without = statistics.median(pair.off_pps for pair in pairs[program])
        print(f"| {PROGRAMS[program]} | {without:,.0f} | {ratio_cells(paired_ratio(pairs[program], packets=True))} |")
    print(f"\n{args.profile_seconds:g} s of flood per program with run-time statistics\n")
    print("| program | datagrams/s | no_socket drops/s counted | runs/s | ns per run | CPU share of one core |")
    print("|---|---:|---:|---:|---:|---:|")
    for program, (elapsed, datagrams, counted, (run_ns, runs)) in profiles.items():
        print(f"| {PROGRAMS[program]} | {datagrams:,.0f} | {counted:,.0f} | {runs / elapsed:,.0f} | "
              f"{run_ns / runs if runs else 0:.1f} | {run_ns / elapsed / 1e9 * 100:.2f}% |")
    print(f"\nread() after a window with the program on: median {statistics.median(reads) * 1e3:.2f} ms, "
          f"max {max(reads) * 1e3:.2f} ms")


def _moved(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) the helper's programs gained (only the attached one runs)."""
    return tuple(sum(value[index] - before.get(prog_id, (0, 0))[index] for prog_id, value in after.items())
                 for index in (0, 1))


if __name__ == "__main__":
    main()
