"""Host benchmark: the netstat, softnet and sockstat collectors against Debian's prometheus-node-exporter
(its netstat, sockstat and softnet collectors only), side by side in a network namespace of their own.

Started in the namespace (bench_link.py's harness):

  netio          netio-exporter -P -a 127.0.0.1 -p 7070 with only netstat, softnet and sockstat on
  node_exporter  prometheus-node-exporter --collector.disable-defaults --collector.netstat
                 --collector.sockstat --collector.softnet (127.0.0.1:9100)

Two field sets: each exporter's default netstat fields, and every field (``--collector.netstat.fields
.*`` on both). Each round scrapes /metrics of both, alternating which goes first, over a fresh
connection and over a kept-alive one; a timing covers request, response and the whole body. It prints
medians and the ratio netio/node_exporter, the collectors' own durations as each exporter reports them
(``*_scrape_collector_duration_seconds``, median over the rounds), series counts, and resident memory.

Run as root from the repository root:  .venv/bin/python -m bench.bench_host [--rounds 300]
Namespaces are named netio-bench-*, deleted at exit; the exporters are ended by their pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time

from bench.bench_link import NETIO_PORT, NODE_EXPORTER, NODE_PORT, Client, Exporter, Namespaces
from tests.support import in_netns, samples

COLLECTORS = ("netstat", "softnet", "sockstat")
FIELD_SETS = (("default fields", None), ("all fields", ".*"))
CASES = (("fresh", False), ("keep-alive", True))
TARGETS = ("netio", "node_exporter")
PREFIXES = {"netio": "netio_", "node_exporter": "node_"}


@contextlib.contextmanager
def running(ns: str, fields: str | None, node_exporter: str):
    """Both exporters, listening in ``ns``; stopped by their pid at the end of the block."""
    netio_fields = ["--collector.netstat.fields", fields] if fields else []
    node_fields = [f"--collector.netstat.fields={fields}"] if fields else []
    exporters: dict[str, Exporter] = {}
    try:
        exporters["netio"] = Exporter(
            "netio", ns, NETIO_PORT,
            [sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(NETIO_PORT),
             "--no-collector.link", "--no-collector.tcp", "--no-collector.netstack", *netio_fields], "-m exporter")
        exporters["node_exporter"] = Exporter(
            "node_exporter", ns, NODE_PORT,
            [node_exporter, "--collector.disable-defaults", *(f"--collector.{name}" for name in COLLECTORS),
             *node_fields, f"--web.listen-address=127.0.0.1:{NODE_PORT}"], "node")
        yield exporters
    finally:
        for exporter in exporters.values():
            exporter.stop()


def series(body: bytes, prefix: str) -> dict[str, int]:
    """Samples per collector in a scrape (the exporters' own metrics left out)."""
    counts = dict.fromkeys(COLLECTORS, 0)
    for line in body.decode().splitlines():
        for name in COLLECTORS:
            if line.startswith(f"{prefix}{name}_"):
                counts[name] += 1
    return counts


def collector_seconds(body: bytes, prefix: str) -> dict[str, float]:
    parsed = samples(body.decode())
    seconds = {name: parsed[(f"{prefix}scrape_collector_duration_seconds", (("collector", name),))]
               for name in COLLECTORS}
    for name in COLLECTORS:
        if parsed[(f"{prefix}scrape_collector_success", (("collector", name),))] != 1:
            raise RuntimeError(f"{prefix}: the {name} collector failed")
    return seconds


def bench(ns: str, exporters: dict[str, Exporter], rounds: int, warmup: int) -> dict:
    times = {(case, target): [] for case, _ in CASES for target in TARGETS}
    durations = {target: {name: [] for name in COLLECTORS} for target in TARGETS}
    with in_netns(ns):
        clients = {(case, target): Client(exporters[target].port, keep_alive, False)
                   for case, keep_alive in CASES for target in TARGETS}
        try:
            bodies = {target: clients["fresh", target].get()[1] for target in TARGETS}
            for round_ in range(warmup + rounds):
                order = TARGETS if round_ % 2 == 0 else TARGETS[::-1]
                for case, _ in CASES:
                    for target in order:
                        elapsed, body, _ = clients[case, target].get()
                        if round_ >= warmup:
                            times[case, target].append(elapsed)
                            for name, seconds in collector_seconds(body, PREFIXES[target]).items():
                                durations[target][name].append(seconds)
        finally:
            for client in clients.values():
                client.close()
    return {"medians": {key: statistics.median(values) for key, values in times.items()},
            "durations": {target: {name: statistics.median(values) for name, values in by_name.items()}
                          for target, by_name in durations.items()},
            "series": {target: series(bodies[target], PREFIXES[target]) for target in TARGETS},
            "bytes": {target: len(bodies[target]) for target in TARGETS},
            "memory": {target: exporter.memory_mib() for target, exporter in exporters.items()}}


def report(results: dict) -> None:
    print("| fields | case | median ms netio | median ms node_exporter | ratio netio/node_exporter |")
    print("|---|---|---:|---:|---:|")
    for label, _ in FIELD_SETS:
        medians = results[label]["medians"]
        for case, _ in CASES:
            netio, node = medians[case, "netio"] * 1e3, medians[case, "node_exporter"] * 1e3
            print(f"| {label} | {case} | {netio:.3f} | {node:.3f} | {netio / node:.2f} |")
    print("\nEach collector's read as the exporter reports it (median ms of *_scrape_collector_duration_seconds):\n")
    print("| fields | collector | netio | node_exporter | ratio | series netio / node_exporter |")
    print("|---|---|---:|---:|---:|---:|")
    for label, _ in FIELD_SETS:
        result = results[label]
        for name in COLLECTORS:
            netio, node = result["durations"]["netio"][name] * 1e3, result["durations"]["node_exporter"][name] * 1e3
            print(f"| {label} | {name} | {netio:.3f} | {node:.3f} | {netio / node:.2f} | "
                  f"{result['series']['netio'][name]} / {result['series']['node_exporter'][name]} |")
    print("\n| fields | netio RSS MiB (peak) | node_exporter RSS MiB (peak) | body bytes netio / node_exporter |")
    print("|---|---:|---:|---:|")
    for label, _ in FIELD_SETS:
        result = results[label]
        (n_rss, n_hwm), (e_rss, e_hwm) = result["memory"]["netio"], result["memory"]["node_exporter"]
        print(f"| {label} | {n_rss:.1f} ({n_hwm:.1f}) | {e_rss:.1f} ({e_hwm:.1f}) | "
              f"{result['bytes']['netio']} / {result['bytes']['node_exporter']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="timed rounds per field set (default 300)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    parser.add_argument("--node-exporter", default=NODE_EXPORTER, help=f"node_exporter binary ({NODE_EXPORTER})")
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be positive and --warmup not negative")
    if os.geteuid() != 0:
        parser.exit(2, "bench_host: needs root (network namespaces)\n")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C: namespaces deleted

    namespaces = Namespaces()
    results = {}
    started = time.monotonic()
    try:
        ns = namespaces.add(f"netio-bench-{os.getpid()}-host")
        for label, fields in FIELD_SETS:
            with running(ns, fields, args.node_exporter) as exporters:
                print(f"{label}: netio pid {exporters['netio'].pid}, node_exporter pid "
                      f"{exporters['node_exporter'].pid}; {args.rounds} rounds", file=sys.stderr, flush=True)
                results[label] = bench(ns, exporters, args.rounds, args.warmup)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        namespaces.delete()
    report(results)
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
