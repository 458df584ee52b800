"""Link benchmark: netio-exporter against Debian's prometheus-node-exporter (netdev collector only).

For each size (default 3 and 500 interfaces, counting lo) it makes a network namespace of its own
holding lo and N-1 veth ends (their peers sit in a second namespace, so only the N interfaces are
seen), starts in it

  netio          netio-exporter -P -a 127.0.0.1 -p 7070
  node_exporter  prometheus-node-exporter --collector.disable-defaults --collector.netdev (127.0.0.1:9100)
                 and --collector.netdev.device-exclude=^$: Debian's build excludes lo by default, and
                 both should export the same interfaces

and a second pair serving HTTPS only (--web.config.file with the same certificate, made by openssl for
this run), and scrapes /metrics from inside the namespace, alternating between the two, in six cases:

  fresh            a new TCP connection per request
  keep-alive       one HTTP/1.1 connection per exporter, reused for every request
  fresh gzip       as fresh, with Accept-Encoding: gzip (the body is read, not decompressed)
  keep-alive gzip  as keep-alive, with Accept-Encoding: gzip
  fresh tls        as fresh, over TLS (a full handshake per request: no session resumption)
  keep-alive tls   as keep-alive, over TLS

Then it opens 1,000 connections to each plain exporter, each sending one request and then staying idle
(kept alive, as a crowd of clients would leave them), and times keep-alive scrapes again beside them.

Each timing covers request, response and the whole body. Rounds interleave the cases and swap which
exporter goes first. It prints a markdown table of medians and the ratio netio/node_exporter, the
idle-connections table (each exporter against its own quiet keep-alive median), then the resident memory
(VmRSS, and the peak VmHWM) of the processes after the runs.
With --breakdown it also times the pieces of a netio scrape in this process, in each namespace.

Run as root from the repository root:  .venv/bin/python -m bench.bench_link [--sizes 3,500] [--rounds 300,100] [--breakdown]
netio runs with its default collectors; to compare like with like once more are on by default, add
e.g. --netio-arg=--no-collector.tcp.
Namespaces are named netio-bench-*, and are deleted at exit (also on errors and Ctrl-C); the exporters
are ended by their pid (SIGTERM, then wait).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.netns import NetnsProcess, in_netns
from tests.support.pki import make_authority

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PORTS = {("netio", False): 7070, ("netio", True): 7071,  # the namespaces are our own: nothing else listens there
         ("node_exporter", False): 9100, ("node_exporter", True): 9101}
CASES = (("fresh", False, False, False), ("keep-alive", True, False, False),  # (name, keep-alive, gzip, tls)
         ("fresh gzip", False, True, False), ("keep-alive gzip", True, True, False),
         ("fresh tls", False, False, True), ("keep-alive tls", True, False, True))
TARGETS = ("netio", "node_exporter")
IDLE_CONNECTIONS = 1000


def run(*command: str, input: str | None = None) -> None:
    result = subprocess.run(command, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])}... failed: {result.stderr.strip()}")


class Namespaces:
    """The namespaces this run made; all deleted by ``delete()``."""

    def __init__(self):
        self.made: list[str] = []

    def add(self, name: str) -> str:
        run("ip", "netns", "add", name)
        self.made.append(name)
        for key in ("all", "default"):  # no IPv6 link-local addresses, DAD or router solicitations
            run("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def make(self, interfaces: int) -> str:
        """A namespace with ``interfaces`` interfaces, all up: lo and veth ends v1..v(N-1)."""
        base = f"netio-bench-{os.getpid()}-{interfaces}"
        ns, peers = self.add(base), self.add(base + "p")
        lines = [f"link add v{i} up type veth peer name p{i} netns {peers}" for i in range(1, interfaces)]
        if lines:
            run("ip", "-n", ns, "-batch", "-", input="\n".join(lines) + "\n")
            run("ip", "-n", peers, "-batch", "-",
                input="".join(f"link set p{i} up\n" for i in range(1, interfaces)))
        return ns

    def delete(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()


class Exporter(NetnsProcess):
    """One exporter listening on ``port`` in a namespace; its pid checked to be the exporter's own."""

    def __init__(self, label: str, ns: str, port: int, command: list[str], expect_in_cmdline: str):
        super().__init__(ns, command)
        self.label, self.port = label, port
        try:
            self.wait_listening(port)
            self.expect_command(expect_in_cmdline)
        except BaseException:
            self.stop()
            raise


class Client:
    """Scrapes one exporter; with keep-alive, over one connection it counts reconnections of."""

    def __init__(self, port: int, keep_alive: bool, gzip_wanted: bool, context: ssl.SSLContext | None = None):
        self.port, self.keep_alive, self.context = port, keep_alive, context
        self.headers = {"Accept-Encoding": "gzip"} if gzip_wanted else {"Accept-Encoding": "identity"}
        self.connection: http.client.HTTPConnection | None = None
        self.connects = 0

    def get(self) -> tuple[float, bytes, str | None]:
        """One scrape: (seconds, body as sent, Content-Encoding)."""
        start = time.perf_counter()
        connection = self.connection
        if connection is None and self.context is not None:
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=self.context)
        elif connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if connection.sock is None:
            self.connects += 1
        connection.request("GET", "/metrics", headers=self.headers)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"port {self.port}: HTTP {response.status}")
        if self.keep_alive:
            self.connection = connection
        else:
            connection.close()
        return elapsed, body, response.getheader("Content-Encoding")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def check_body(label: str, body: bytes, encoding: str | None, gzip_wanted: bool, interfaces: int) -> None:
    """The scrape is what it should be: gzip when asked, one receive_bytes sample per interface."""
    if gzip_wanted != (encoding == "gzip"):
        raise RuntimeError(f"{label}: Content-Encoding {encoding!r} with gzip {'' if gzip_wanted else 'not '}asked")
    text = (gzip.decompress(body) if encoding == "gzip" else body).decode()
    prefix = "netio_network_receive_bytes_total{" if label == "netio" else "node_network_receive_bytes_total{"
    seen = sum(1 for line in text.splitlines() if line.startswith(prefix))
    if seen != interfaces:
        raise RuntimeError(f"{label}: {seen} interfaces in the scrape, expected {interfaces}")


def bench_size(ns: str, interfaces: int, rounds: int, warmup: int, exporters: dict, context: ssl.SSLContext) -> dict:
    """Median seconds per (case, target), and the bodies' sizes and reconnection counts."""
    times = {(case, target): [] for case, *_ in CASES for target in TARGETS}
    sizes, connects = {}, {}
    with in_netns(ns):
        clients = {(case, target): Client(exporters[target, tls].port, keep_alive, gzip_wanted, context if tls else None)
                   for case, keep_alive, gzip_wanted, tls in CASES for target in TARGETS}
        try:
            for case, _, gzip_wanted, _ in CASES:  # check each case's output once, untimed
                for target in TARGETS:
                    _, body, encoding = clients[case, target].get()
                    check_body(target, body, encoding, gzip_wanted, interfaces)
                    sizes[case, target] = len(body)
            for round_ in range(warmup + rounds):
                order = TARGETS if round_ % 2 == 0 else TARGETS[::-1]
                for case, *_ in CASES:
                    for target in order:
                        elapsed, _, _ = clients[case, target].get()
                        if round_ >= warmup:
                            times[case, target].append(elapsed)
        finally:
            for key, client in clients.items():
                connects[key] = client.connects
                client.close()
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {"medians": medians, "sizes": sizes, "connects": connects}


def bench_idle(ns: str, rounds: int, exporters: dict) -> dict:
    """Median keep-alive scrape seconds per target while IDLE_CONNECTIONS kept-alive idle connections are open
    to it (each has sent one request), and the exporters' memory with them open."""
    times, memory = {target: [] for target in TARGETS}, {}
    idle: list[socket.socket] = []
    with in_netns(ns):
        clients = {target: Client(exporters[target, False].port, True, False) for target in TARGETS}
        try:
            for target in TARGETS:
                port = exporters[target, False].port
                for _ in range(IDLE_CONNECTIONS):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    sock.recv(65536)  # the answer's first bytes: enough for a kept-alive idle connection
                    idle.append(sock)
            for target in TARGETS:
                clients[target].get()
            for round_ in range(rounds):
                for target in TARGETS if round_ % 2 == 0 else TARGETS[::-1]:
                    times[target].append(clients[target].get()[0])
            memory = {target: exporters[target, False].memory_mib() for target in TARGETS}
        finally:
            for client in clients.values():
                client.close()
            for sock in idle:
                sock.close()
    return {"medians": {target: statistics.median(values) for target, values in times.items()}, "memory": memory}


def web_configs(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A TLS-only web config both exporters read, and a client context trusting its CA."""
    pki = make_authority(directory / "pki")
    config = directory / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n")
    return config, ssl.create_default_context(cafile=str(pki / "ca.crt"))


def breakdown(ns: str, repeat: int) -> list[tuple[str, float]]:
    """Median ms of each piece of a netio scrape, timed in this process inside ``ns``."""
    from prometheus_client import generate_latest

    from exporter.collectors import Scrape
    from exporter.collectors.link import LinkCollector
    from exporter.collectors.process import ProcessCollector
    from exporter.exposition import render_text
    from exporter.server import MetricsApp

    def medians_ms(pieces: list[tuple[str, object]], times: int) -> list[tuple[str, float]]:
        """Round-robin over the pieces, so that load from elsewhere hits them alike."""
        samples = {label: [] for label, _ in pieces}
        for round_ in range(times + 1):
            for label, function in pieces:
                begin = time.perf_counter()
                function()
                if round_:  # the first round warms up
                    samples[label].append(time.perf_counter() - begin)
        return [(label, statistics.median(values) * 1e3) for label, values in samples.items()]

    with in_netns(ns):
        collector = LinkCollector()
        process = ProcessCollector()
        app = MetricsApp(Scrape([collector], [process]))
        try:
            families = app.scrape.families()
            text = app.metrics()
            return medians_ms([
                ("LinkReader.read() (RTM_GETSTATS dump + cached links)", collector._reader.read),
                ("LinkCollector.read() (reader + building families)", collector.read),
                ("Scrape.families() (collectors + self metrics)", app.scrape.families),
                ("render_text() of those families", lambda: render_text(families)),
                ("ProcessCollector.read() (process_* from /proc)", process.read),
                ("MetricsApp.metrics() (the whole /metrics body)", app.metrics),
                ("gzip.compress(body, 1)", lambda: gzip.compress(text, 1)),
            ], repeat) + medians_ms([
                ("for comparison: generate_latest(app.registry)", lambda: generate_latest(app.registry)),
            ], 11)
        finally:
            app.scrape.close()


def _counts(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_counts, default=[3, 500],
                        help="interface counts including lo, comma-separated (default 3,500)")
    parser.add_argument("--rounds", type=_counts, default=[300, 100],
                        help="timed rounds per size, one value or one per size (default 300,100); "
                             "a round scrapes each exporter once in each of the four cases")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--netio-arg", action="append", default=[], metavar="ARG",
                        help="extra netio-exporter flag, repeatable (e.g. --netio-arg=--no-collector.tcp)")
    parser.add_argument("--node-exporter", default=NODE_EXPORTER, help=f"node_exporter binary ({NODE_EXPORTER})")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the pieces of a netio scrape in this process, at each size")
    args = parser.parse_args()
    if len(args.rounds) == 1:
        args.rounds *= len(args.sizes)
    if len(args.rounds) != len(args.sizes):
        parser.error("--rounds: give one value, or one per size")
    if os.geteuid() != 0:
        parser.exit(2, "bench_link.py: needs root (network namespaces)\n")

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)

    namespaces = Namespaces()
    results, memory, idle, pieces = {}, {}, {}, {}
    started = time.monotonic()
    workdir = tempfile.TemporaryDirectory(prefix="netio-bench-")
    web_config, context = web_configs(Path(workdir.name))
    try:
        for interfaces, rounds in zip(args.sizes, args.rounds):
            ns = namespaces.make(interfaces)
            exporters: dict[tuple[str, bool], Exporter] = {}
            try:
                for tls in (False, True):
                    port = PORTS["netio", tls]
                    exporters["netio", tls] = Exporter(
                        "netio", ns, port,
                        [sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(port),
                         *(["--web.config.file", str(web_config)] if tls else []), *args.netio_arg], "-m exporter")
                    port = PORTS["node_exporter", tls]
                    exporters["node_exporter", tls] = Exporter(
                        "node_exporter", ns, port,
                        [args.node_exporter, "--collector.disable-defaults", "--collector.netdev",
                         "--collector.netdev.device-exclude=^$",  # Debian's build leaves lo out by default
                         f"--web.listen-address=127.0.0.1:{port}",
                         *([f"--web.config.file={web_config}"] if tls else [])], "node")
                print(f"{interfaces} interfaces: netio pid {exporters['netio', False].pid}, node_exporter pid "
                      f"{exporters['node_exporter', False].pid}; {rounds} rounds", file=sys.stderr, flush=True)
                results[interfaces] = bench_size(ns, interfaces, rounds, args.warmup, exporters, context)
                memory[interfaces] = {key: exporter.memory_mib() for key, exporter in exporters.items()}
                idle[interfaces] = bench_idle(ns, rounds, exporters)
                if args.breakdown:
                    pieces[interfaces] = breakdown(ns, repeat=max(rounds, 50))
            finally:
                for exporter in exporters.values():
                    exporter.stop()
                namespaces.delete()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        namespaces.delete()
        workdir.cleanup()

    print("| case | interfaces | median ms netio | median ms node_exporter | ratio netio/node_exporter |")
    print("|---|---:|---:|---:|---:|")
    for case, *_ in CASES:
        for interfaces in args.sizes:
            medians = results[interfaces]["medians"]
            netio, node = medians[case, "netio"] * 1e3, medians[case, "node_exporter"] * 1e3
            print(f"| {case} | {interfaces} | {netio:.2f} | {node:.2f} | {netio / node:.2f} |")
    print()
    print(f"| keep-alive with {IDLE_CONNECTIONS:,} idle connections | interfaces | netio ms (quiet ms, ratio) | "
          "node_exporter ms (quiet ms, ratio) | netio RSS MiB with them |")
    print("|---|---:|---:|---:|---:|")
    for interfaces in args.sizes:
        quiet, busy = results[interfaces]["medians"], idle[interfaces]["medians"]
        cells = [f"{busy[target] * 1e3:.2f} ({quiet['keep-alive', target] * 1e3:.2f}, "
                 f"{busy[target] / quiet['keep-alive', target]:.2f})" for target in TARGETS]
        print(f"| | {interfaces} | {cells[0]} | {cells[1]} | {idle[interfaces]['memory']['netio'][0]:.1f} |")
    print()
    print("| interfaces | netio RSS MiB (peak) | netio with TLS | node_exporter RSS MiB (peak) | node_exporter with TLS "
          "| body bytes netio / node_exporter (plain; gzip) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for interfaces in args.sizes:
        cells = [f"{rss:.1f} ({hwm:.1f})" for rss, hwm in (memory[interfaces][key] for key in (
            ("netio", False), ("netio", True), ("node_exporter", False), ("node_exporter", True)))]
        sizes = results[interfaces]["sizes"]
        print(f"| {interfaces} | {' | '.join(cells)} | "
              f"{sizes['fresh', 'netio']} / {sizes['fresh', 'node_exporter']}; "
              f"{sizes['fresh gzip', 'netio']} / {sizes['fresh gzip', 'node_exporter']} |")
    notes = []
    for interfaces in args.sizes:
        result = results[interfaces]
        for case, keep_alive, *_ in CASES:
            for target in TARGETS:
                if keep_alive and result["connects"][case, target] != 1:
                    notes.append(f"{target} {case} at {interfaces} interfaces: {result['connects'][case, target]} "
                                 f"connections instead of one (the server closed the kept-alive connection)")
            fresh_case = case.replace("keep-alive", "fresh")
            if keep_alive and result["medians"][case, "netio"] > 5 * result["medians"][fresh_case, "netio"]:
                notes.append(f"netio {case} at {interfaces} interfaces is over 5x slower than {fresh_case}: "
                             f"a server bug (Nagle and delayed ACK?)")
    for note in notes:
        print(f"\nWARNING: {note}")
    if pieces:
        print("\nnetio scrape pieces, timed in this process (median ms):\n")
        print("| piece | " + " | ".join(f"{n} interfaces" for n in pieces) + " |")
        print("|---|" + "---:|" * len(pieces))
        rows = list(pieces.values())
        for i, (label, _) in enumerate(rows[0]):
            print(f"| {label} | " + " | ".join(f"{row[i][1]:.3f}" for row in rows) + " |")
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
