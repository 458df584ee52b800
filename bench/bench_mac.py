"""mac collector benchmark: iperf3 overhead across a veth pair, and scrape latency with 1,000 clients.

Makes two network namespaces of its own, netio-bm<pid>a (server side) and netio-bm<pid>b (client
side), joined by a veth pair (eth1 in each, 10.196.0.1 and .2/24, IPv6 off, static neighbours, so only
the benchmark's own frames cross it).

1. Throughput. Per attach MODE (tcx, clsact) and protocol (one TCP stream; UDP at a fixed rate,
   ``-u -b 2G -l 1200``), one long iperf3 stream (client on CPU 0, server on CPU 1) flows from the second
   namespace to the first while a MacCollector of this process, on the monitored end (the receiving end
   by default, --side sender for the other), detaches and attaches its programs in 1 s windows in ABBA
   order (bench/interleave.py: a steady drift of the shared machine cancels, each window's rate is the
   receiving veth's counters). Reported: the median paired ratio with/without of throughput and of
   packets/s (TCP packets are GSO/GRO-sized skbs, as the programs see them), its 95% confidence interval
   and the loss it means (target: <= 2%). Then, attached, one iperf3 run whose frames the collector must
   have counted exactly: the peer MAC's packets in the data direction equal the link's.
   Then, per mode, what the programs cost on their own: a BPF_PROG_TEST_RUN of each (bpftool prog run,
   one frame, a million times) and one more TCP and UDP run with the kernel's run-time statistics on
   (BPF_ENABLE_STATS, held by an fd: nothing global to restore): calls/s, ns per call, share of a CPU.

2. Scrape latency. A fresh exporter (tcx) on the receiving end and, in this process, a MacCollector on the
   same interface (created inside the namespace with setns: tests/netns.py's in_netns; TCX links
   run side by side, each with its own table - two clsact instances would remove each other's filters).
   Raw frames (AF_PACKET, from the peer namespace) from CLIENTS distinct source MACs 02:00:00:xx:xx:xx
   reach the receiving end's ingress; a scrape must show exactly CLIENTS clients. Then many scrapes of
   /metrics over one keep-alive connection (identity and gzip), median and p90 (target: median <= 5 ms),
   against the same with no client in the table; the in-process timing of the map dump, of
   MacCollector.read() and of read() plus rendering; and the exporter's RSS (and peak).

Run as root:  /opt/netio-venv/bin/python bench/bench_mac.py [--pairs 40] [--window 1] [--seconds 3] [--clients 1000]
             [--modes tcx,clsact] [--protocols tcp,udp] [--side receiver|sender] [--udp-rate 2G]
             [--udp-length 1200] [--no-profile] [--skip-throughput | --skip-scrape]
Default runtime is about 7 minutes. The namespaces (and with them the veth pair and any qdisc on it)
are deleted at exit, also on errors and Ctrl-C; every process started here (exporters, iperf3) runs in
its own session and is ended by its pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from bench.bpf_programs import enable_bpf_stats, program_names, program_stats
from bench.interleave import ReceiveCounter, interleave, paired_ratio, ratio_cells
from tests.support.netns import NetnsProcess, in_netns
from exporter.collectors.mac import CLIENT, CLIENT_KEY

EXPORTER_PORT, IPERF_PORT = 7070, 5201  # the namespaces are our own: nothing else listens there
SERVER_IP, CLIENT_IP = "10.196.0.1", "10.196.0.2"
DEVICE = "eth1"
MODES = ("tcx", "clsact")
PROTOCOLS = ("tcp", "udp")


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:8])}... failed: {result.stderr.strip()}")
    return result


class Lab:
    """Two namespaces of ours joined by a veth pair; ``delete()`` removes both (and the pair with them)."""

    def __init__(self):
        tag = os.getpid()
        self.server_ns, self.client_ns = f"netio-bm{tag}a", f"netio-bm{tag}b"
        self.made: list[str] = []
        self.macs: dict[str, str] = {}

    def build(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            for key in ("all", "default"):  # no IPv6 link-local addresses, DAD or router solicitations
                run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        temp_a, temp_b = f"nbm{os.getpid() % 100000}a", f"nbm{os.getpid() % 100000}b"
        run("ip", "link", "add", temp_a, "type", "veth", "peer", "name", temp_b)
        try:
            run("ip", "link", "set", temp_a, "netns", self.server_ns, "name", DEVICE)
            run("ip", "link", "set", temp_b, "netns", self.client_ns, "name", DEVICE)
        except RuntimeError:
            run("ip", "link", "del", temp_a, check=False)  # still in the root namespace
            raise
        for ns, ip in ((self.server_ns, SERVER_IP), (self.client_ns, CLIENT_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", DEVICE)
            run("ip", "-n", ns, "link", "set", DEVICE, "up")
            self.macs[ns] = json.loads(run("ip", "-n", ns, "-j", "link", "show", DEVICE).stdout)[0]["address"]
        run("ip", "-n", self.server_ns, "neigh", "replace", CLIENT_IP, "lladdr", self.macs[self.client_ns],
            "dev", DEVICE, "nud", "permanent")
        run("ip", "-n", self.client_ns, "neigh", "replace", SERVER_IP, "lladdr", self.macs[self.server_ns],
            "dev", DEVICE, "nud", "permanent")

    def peer(self, ns: str) -> str:
        return self.client_ns if ns == self.server_ns else self.server_ns

    def link_stats(self, ns: str) -> dict:
        return json.loads(run("ip", "-n", ns, "-s", "-j", "link", "show", DEVICE).stdout)[0]["stats64"]

    def qdiscs(self, ns: str) -> str:
        return run("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", DEVICE).stdout

    def delete(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


class Exporter(NetnsProcess):
    def __init__(self, ns: str, mode: str):
        super().__init__(ns, [sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(EXPORTER_PORT),
                              "--no-collector.tcp", "--no-collector.netstack",
                              "--collector.mac.device", DEVICE, "--collector.mac.attach", mode])
        try:
            self.wait_listening(EXPORTER_PORT)
            self.expect_command("-m exporter")
            text = self.scrape()
            if 'netio_scrape_collector_success{collector="mac"} 1' not in text:
                raise RuntimeError(f"the mac collector is not working ({mode}): {self.stderr()}")
        except BaseException:
            self.stop()
            raise

    def scrape(self) -> str:
        with in_netns(self.ns):
            connection = http.client.HTTPConnection("127.0.0.1", EXPORTER_PORT, timeout=30)
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                body = response.read()
            finally:
                connection.close()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return body.decode()


def start_iperf_server(lab: Lab, running: list[NetnsProcess]) -> NetnsProcess:
    """``iperf3 -s -1`` in the server namespace, listening when this returns (it ends with its client)."""
    server = NetnsProcess(lab.server_ns, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)])
    running.append(server)
    deadline = time.monotonic() + 10
    while f":{IPERF_PORT}" not in run("ip", "netns", "exec", lab.server_ns, "ss", "-Hltn",
                                       f"sport = :{IPERF_PORT}").stdout:
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            running.remove(server)
            raise RuntimeError(f"iperf3 server did not start: {server.stderr()}")
        time.sleep(0.02)
    return server


def iperf_command(protocol: str, seconds: float, args) -> list[str]:
    # -A 0,1: client on CPU 0, server on CPU 1, so results differ less by where the scheduler put them
    command = ["iperf3", "-c", SERVER_IP, "-p", str(IPERF_PORT), "-t", str(seconds), "-A", "0,1"]
    if protocol == "udp":
        command += ["-u", "-b", args.udp_rate, "-l", str(args.udp_length)]
    return command


def iperf(lab: Lab, protocol: str, args, running: list[NetnsProcess]) -> dict:
    """One iperf3 run of ``args.seconds``, client namespace to server namespace: what iperf3 reports."""
    server = start_iperf_server(lab, running)
    client = None
    try:
        with tempfile.TemporaryFile() as output:
            client = NetnsProcess(lab.client_ns, iperf_command(protocol, args.seconds, args) + ["-J"], stdout=output)
            running.append(client)
            if client.process.wait(timeout=args.seconds + 30) != 0:
                output.seek(0)
                raise RuntimeError(f"iperf3 client failed: {output.read().decode(errors='replace')[-500:]}")
            output.seek(0)
            report = json.loads(output.read())
        server.process.wait(timeout=10)
    finally:
        for started in (client, server):
            if started is not None:
                started.stop()
                running.remove(started)
    end = report["end"]
    received = end["sum_received"]
    result = {"bps": received["bits_per_second"], "seconds": received["seconds"], "bytes": received["bytes"]}
    if protocol == "udp":
        result["sent_bytes"] = end["sum_sent"]["bytes"]
        result["sent_packets"] = end["sum"]["packets"]
    return result


def peer_counters(device, mac: str) -> tuple[int, int, int, int]:
    """(upload bytes, upload packets, download bytes, download packets) of ``mac`` in the device's table."""
    value = device.clients.lookup(CLIENT_KEY.pack(bytes.fromhex(mac.replace(":", ""))))
    return CLIENT.unpack(value)[:4] if value else (0, 0, 0, 0)


def bench_throughput(lab: Lab, args, running: list[NetnsProcess], notes: list[str]) -> dict:
    """Per attach mode and protocol: a collector of this process on the monitored end is detached and
    attached in windows while one long iperf3 stream flows (interleave.py); then, attached, one iperf3
    run whose frames it must have counted exactly."""
    from exporter.collectors.mac import MacCollector

    monitored = lab.server_ns if args.side == "receiver" else lab.client_ns
    peer_mac = lab.macs[lab.peer(monitored)]
    # data leaves the client namespace: at the receiver's ingress it is the peer's upload,
    # at the sender's egress the peer's download
    upload = args.side == "receiver"
    stat_key = "rx" if upload else "tx"
    results, exact = {}, {}
    qdiscs_before = lab.qdiscs(monitored)
    counter = ReceiveCounter(lab.server_ns, DEVICE)
    try:
        for mode in args.modes:
            with in_netns(monitored):
                collector = MacCollector([DEVICE], attach=mode)
            if collector._error:
                raise RuntimeError(f"the mac collector is not working ({mode}): {collector._error}")
            device = collector._devices[0]

            def attach():
                with in_netns(monitored):
                    device.ensure_attached()

            def detach():
                with in_netns(monitored):
                    device.detach()

            def scrape():
                with in_netns(monitored):
                    collector.read()

            try:
                for protocol in args.protocols:
                    server = start_iperf_server(lab, running)
                    stream = NetnsProcess(lab.client_ns, iperf_command(protocol, 86400, args))
                    running.append(stream)
                    try:
                        time.sleep(1.5)  # past TCP's slow start
                        results[(mode, protocol)] = interleave(counter, attach, detach, args.pairs, args.window,
                                                               after_on_window=scrape)
                    finally:
                        for started in (stream, server):
                            started.stop()
                            running.remove(started)
                    attach()
                    before, before_link = peer_counters(device, peer_mac), lab.link_stats(monitored)
                    result = iperf(lab, protocol, args, running)
                    after, after_link = peer_counters(device, peer_mac), lab.link_stats(monitored)
                    detach()
                    got_bytes, got_packets = (after[i] - before[i] for i in ((0, 1) if upload else (2, 3)))
                    skbs = after_link[stat_key]["packets"] - before_link[stat_key]["packets"]
                    exact[(mode, protocol)] = (got_packets, skbs, got_bytes, result)
                    if got_packets != skbs:
                        notes.append(f"{mode} {protocol}: the collector counted {got_packets} packets, "
                                     f"the link {skbs}")
                    print(f"{mode} {protocol} done", file=sys.stderr, flush=True)
            finally:
                collector.close()
            if lab.qdiscs(monitored) != qdiscs_before:
                notes.append(f"{mode}: qdiscs on {DEVICE} after the collector closed differ from before: "
                             f"{lab.qdiscs(monitored).strip()!r}")
    finally:
        counter.close()
    return {"results": results, "exact": exact}


def test_run(prog_id: int, repeat: int = 1_000_000) -> tuple:
    """BPF_PROG_TEST_RUN (bpftool prog run) of one program on a 1242-byte IPv4/UDP frame between two
    client MACs (so both programs take the counting path): the kernel's average ns per run, without
    the statistics' own cost, cache-line sharing or the rest of the stack."""
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1228, 0, 0, 64, 17, 0, bytes([10, 196, 9, 1]),
                            bytes([10, 196, 9, 2]))
    frame = bytes.fromhex("02000000ff01" "02000000ff02") + struct.pack("!H", 0x0800) + ip_header
    frame += bytes(1242 - len(frame))
    with tempfile.NamedTemporaryFile(suffix=".bin") as data:
        data.write(frame)
        data.flush()
        output = run("bpftool", "prog", "run", "id", str(prog_id), "data_in", data.name, "repeat", str(repeat),
                     check=False)
    text = output.stdout + output.stderr
    marker = "duration (average):"
    if marker not in text:
        return (None, None, None, None, None)
    per_call = float(text.split(marker, 1)[1].split("ns", 1)[0])
    return (None, per_call, None, None, None)


def bench_profile(lab: Lab, args, running: list[NetnsProcess]) -> list[tuple]:
    """Per mode: a test run of each program (statistics off), then one more run per protocol with the
    programs' run-time statistics on: what they cost in real traffic."""
    monitored = lab.server_ns if args.side == "receiver" else lab.client_ns
    rows = []
    for mode in args.modes:
        exporter = Exporter(monitored, mode)
        running.append(exporter)
        try:
            names = program_names(program_stats(exporter.pid))
            for prog_id, name in sorted(names.items(), key=lambda item: item[1]):
                rows.append((mode, "test run", name, *test_run(prog_id)))
            stats_fd = enable_bpf_stats()
            try:
                for protocol in args.protocols:
                    before = program_stats(exporter.pid)
                    result = iperf(lab, protocol, args, running)
                    after = program_stats(exporter.pid)
                    gigabytes = result.get("sent_bytes", result["bytes"]) / 1e9
                    for prog_id, (run_ns, calls) in sorted(after.items(), key=lambda item: names.get(item[0], "")):
                        run_ns -= before.get(prog_id, (0, 0))[0]
                        calls -= before.get(prog_id, (0, 0))[1]
                        rows.append((mode, protocol, names.get(prog_id, str(prog_id)), calls / result["seconds"],
                                     run_ns / calls if calls else 0.0, run_ns / 1e9 / result["seconds"],
                                     run_ns / 1e9 / gigabytes, result["bps"]))
            finally:
                os.close(stats_fd)
        finally:
            exporter.stop()
            running.remove(exporter)
    return rows


def frames(dst: str, clients: int) -> list[bytes]:
    """One 60-byte frame from each of ``clients`` source MACs 02:00:00:xx:xx:xx (a local experimental
    ethertype nobody answers)."""
    destination = bytes.fromhex(dst.replace(":", ""))
    return [destination + b"\x02\x00\x00" + (i + 1).to_bytes(3, "big") + struct.pack("!H", 0x88B5) + bytes(46)
            for i in range(clients)]


def send_frames(ns: str, batch: list[bytes]) -> None:
    with in_netns(ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((DEVICE, 0))
            for frame in batch:
                raw.send(frame)


def scrape_times(ns: str, count: int, gzip_wanted: bool) -> tuple[list[float], int, int]:
    """Seconds per scrape over one keep-alive connection; also the body size and connections made."""
    headers = {"Accept-Encoding": "gzip" if gzip_wanted else "identity"}
    times, connects, size = [], 0, 0
    with in_netns(ns):
        connection = http.client.HTTPConnection("127.0.0.1", EXPORTER_PORT, timeout=30)
        try:
            for index in range(count + 3):  # three warm-up scrapes
                start = time.perf_counter()
                if connection.sock is None:
                    connects += 1
                connection.request("GET", "/metrics", headers=headers)
                response = connection.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                if gzip_wanted != (response.getheader("Content-Encoding") == "gzip"):
                    raise RuntimeError("Content-Encoding is not what was asked")
                size = len(body)
                if index >= 3:
                    times.append(elapsed)
        finally:
            connection.close()
    return times, size, connects


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def bench_scrape(lab: Lab, args, running: list[NetnsProcess], notes: list[str]) -> dict:
    from exporter.collectors import Scrape
    from exporter.collectors.mac import MacCollector
    from exporter.exposition import render_text

    monitored = lab.server_ns
    result = {"scrapes": {}, "inprocess": {}}
    exporter = Exporter(monitored, "tcx")
    running.append(exporter)
    collector = None
    try:
        with in_netns(monitored):
            collector = MacCollector([DEVICE], attach="tcx")
        if collector._error:
            raise RuntimeError(f"in-process collector: {collector._error}")
        device = collector._devices[0]

        def inprocess(label: str) -> None:
            pieces = (("map dump (lookup_batch)", lambda: device.clients.lookup_batch()),
                      ("MacCollector.read()", collector.read),
                      ("Scrape([mac]).families() + render_text()", lambda: render_text(Scrape([collector]).families())))
            samples = {name: [] for name, _ in pieces}
            with in_netns(monitored):
                for round_ in range(args.reads + 1):
                    for name, function in pieces:
                        start = time.perf_counter()
                        function()
                        if round_:
                            samples[name].append(time.perf_counter() - start)
            for name, values in samples.items():
                result["inprocess"][(label, name)] = values

        for label, clients in (("0 clients", 0), (f"{args.clients} clients", args.clients)):
            if clients:
                send_frames(lab.client_ns, frames(lab.macs[monitored], clients))
                time.sleep(0.1)
                text = exporter.scrape()
                ours = [line for line in text.splitlines()
                        if line.startswith("netio_mac_upload_packets_total{") and 'mac="02:00:00:' in line]
                every = [line for line in text.splitlines() if line.startswith("netio_mac_upload_packets_total{")]
                if len(ours) != clients or len(every) != clients:
                    raise RuntimeError(f"the scrape shows {len(every)} clients ({len(ours)} of ours), "
                                       f"expected {clients}")
                if any(not line.endswith(" 1") for line in ours):
                    notes.append("some client's upload_packets is not 1 after one frame each")
                with in_netns(monitored):
                    in_table = collector.read()
                mine = sum(len(family.samples) + sum(len(values) for _, _, values in family.columns)
                           for family in in_table if family.name == "netio_mac_upload_packets")
                if mine != clients:
                    raise RuntimeError(f"the in-process collector sees {mine} clients, expected {clients}")
                result["rss"] = exporter.memory_mib()
                result["series_lines"] = sum(1 for line in text.splitlines() if line.startswith("netio_mac_"))
            for gzip_wanted in (False, True):
                times, size, connects = scrape_times(monitored, args.scrapes, gzip_wanted)
                if connects != 1:
                    notes.append(f"{label}: {connects} connections for the keep-alive scrapes")
                result["scrapes"][(label, "gzip" if gzip_wanted else "identity")] = (times, size)
            inprocess(label)
            if not clients:
                result["rss_empty"] = exporter.memory_mib()
        result["rss_end"] = exporter.memory_mib()
    finally:
        if collector is not None:
            collector.close()
        code = exporter.stop()
        running.remove(exporter)
        if code != 0:
            notes.append(f"scrape exporter exited {code} on SIGTERM")
    return result


def report(args, throughput: dict | None, profile: list | None, scrape: dict | None, elapsed: float) -> None:
    if throughput:
        side = "receiving (server)" if args.side == "receiver" else "sending (client)"
        print(f"\n## Throughput: iperf3 across a veth pair, collector on the {side} end\n")
        print(f"One long stream per mode and protocol (TCP one stream; UDP -b {args.udp_rate} -l {args.udp_length}), "
              f"{args.pairs} pairs of {args.window:g} s windows without/with the programs attached, ABBA order; "
              f"rates from the receiving veth's counters (TCP packets are GSO/GRO-sized skbs).\n")
        print("| mode | protocol | Gbit/s without, median | kpps without, median | throughput with/without, median of pairs "
              "| 95% interval | loss (95% interval) | pps with/without, median of pairs | 95% interval | loss (95% interval) |")
        print("|---|---|---:|---:|---:|---:|---|---:|---:|---|")
        misses = []
        for (mode, protocol), pairs in throughput["results"].items():
            bps = paired_ratio(pairs)
            pps = paired_ratio(pairs, packets=True)
            print(f"| {mode} | {protocol.upper()} | {statistics.median(p.off_bps for p in pairs) / 1e9:.3f} "
                  f"| {statistics.median(p.off_pps for p in pairs) / 1e3:.1f} | {ratio_cells(bps)} | {ratio_cells(pps)} |")
            if bps.median < 0.98 or pps.median < 0.98:
                misses.append(f"{mode} {protocol.upper()}")
        print(f"\nTarget (loss <= 2%): {'met' if not misses else 'missed by ' + ', '.join(misses)} (median ratios).")
        print(f"\nCounted by the collector in one {args.seconds:g} s iperf3 run with it attached (peer MAC, data "
              f"direction):\n")
        print("| mode | protocol | counted packets | link packets | counted bytes / iperf3 payload bytes "
              "(TCP received, UDP sent) | bytes per counted packet |")
        print("|---|---|---:|---:|---:|---:|")
        for (mode, protocol), (packets, skbs, counted_bytes, result) in throughput["exact"].items():
            payload = result.get("sent_bytes", result["bytes"])
            print(f"| {mode} | {protocol.upper()} | {packets:,} | {skbs:,} | {counted_bytes / payload:.3f} "
                  f"| {counted_bytes / packets if packets else 0:,.0f} |")
    if profile:
        print(f"\nWhat the programs cost: BPF_PROG_TEST_RUN of each (1,000,000 runs on one frame, statistics off), "
              f"then one more {args.seconds:g} s run per mode and protocol with BPF run-time statistics on "
              f"(BPF_ENABLE_STATS; they add a little themselves):\n")
        print("| mode | protocol | program | calls/s | ns/call | share of one CPU | BPF CPU ms per GB of payload "
              "| Gbit/s of that run |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for mode, protocol, name, rate, per_call, share, per_gb, bps in profile:
            if rate is None:  # BPF_PROG_TEST_RUN
                cost = "n/a" if per_call is None else f"{per_call:.0f}"
                print(f"| {mode} | test run, 1242 B frame | {name} | - | {cost} | - | - | - |")
                continue
            print(f"| {mode} | {protocol.upper()} | {name} | {rate:,.0f} | {per_call:.0f} | {share * 100:.2f}% "
                  f"| {per_gb * 1e3:.2f} | {bps / 1e9:.3f} |")
    if scrape:
        print(f"\n## Scrape latency: exporter (tcx) on the receiving end, {args.scrapes} scrapes per row over "
              f"one keep-alive connection\n")
        print("| table | encoding | median ms | p90 ms | max ms | body bytes |")
        print("|---|---|---:|---:|---:|---:|")
        for (label, encoding), (times, size) in scrape["scrapes"].items():
            print(f"| {label} | {encoding} | {statistics.median(times) * 1e3:.2f} | "
                  f"{percentile(times, 0.9) * 1e3:.2f} | {max(times) * 1e3:.2f} | {size:,} |")
        full = [times for (label, encoding), (times, _) in scrape["scrapes"].items()
                if label.startswith(str(args.clients)) and encoding == "identity"]
        if full:
            median = statistics.median(full[0]) * 1e3
            print(f"\nTarget (median <= 5 ms with {args.clients} clients, identity): "
                  f"{'met' if median <= 5 else 'missed'} ({median:.2f} ms).")
        print(f"\nIn this process, inside the namespace ({args.reads} rounds, median and p90 ms):\n")
        print("| table | piece | median ms | p90 ms |")
        print("|---|---|---:|---:|")
        for (label, name), values in scrape["inprocess"].items():
            print(f"| {label} | {name} | {statistics.median(values) * 1e3:.3f} | {percentile(values, 0.9) * 1e3:.3f} |")
        (e_rss, e_hwm), (f_rss, f_hwm), (z_rss, z_hwm) = scrape["rss_empty"], scrape["rss"], scrape["rss_end"]
        print(f"\nExporter RSS MiB (peak): {e_rss:.1f} ({e_hwm:.1f}) with an empty table; {f_rss:.1f} ({f_hwm:.1f}) "
              f"with {args.clients} clients before the timed scrapes; {z_rss:.1f} ({z_hwm:.1f}) after them. "
              f"netio_mac_* lines per scrape: {scrape['series_lines']:,}.")
    print(f"\n(kernel {os.uname().release}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{elapsed:.0f} s; load average at start {args.load_start}, at end {os.getloadavg()[0]:.2f})")


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [item for item in text.split(",") if item]
        if not values or any(value not in allowed for value in values):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}")
        return list(dict.fromkeys(values))
    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40,
                        help="without/with window pairs per attach mode and protocol (default 40)")
    parser.add_argument("--window", type=float, default=1, help="seconds per window (default 1)")
    parser.add_argument("--seconds", type=float, default=3,
                        help="seconds of the counting check and profile runs (default 3)")
    parser.add_argument("--udp-rate", default="2G", help="iperf3 -b for UDP (default 2G)")
    parser.add_argument("--udp-length", type=int, default=1200, help="iperf3 -l for UDP (default 1200)")
    parser.add_argument("--modes", type=_choices(MODES), default=list(MODES),
                        help="attach modes for the throughput part, comma-separated (default tcx,clsact)")
    parser.add_argument("--protocols", type=_choices(PROTOCOLS), default=list(PROTOCOLS),
                        help="iperf3 protocols, comma-separated (default tcp,udp)")
    parser.add_argument("--side", choices=("receiver", "sender"), default="receiver",
                        help="which veth end the collector monitors in the throughput part (default receiver)")
    parser.add_argument("--clients", type=int, default=1000, help="clients in the table for the scrape part")
    parser.add_argument("--scrapes", type=int, default=200, help="timed scrapes per row (default 200)")
    parser.add_argument("--reads", type=int, default=200, help="in-process rounds per table (default 200)")
    parser.add_argument("--no-profile", action="store_true",
                        help="leave out the extra runs with BPF run-time statistics on")
    parser.add_argument("--skip-throughput", action="store_true", help="only the scrape part")
    parser.add_argument("--skip-scrape", action="store_true", help="only the throughput part")
    args = parser.parse_args()
    if args.pairs < 1 or args.clients < 1 or args.clients > 4096 or args.scrapes < 1 or args.reads < 1 \
            or args.window <= 0 or args.seconds <= 0:
        parser.error("--pairs, --scrapes, --reads must be positive, --window and --seconds above 0; "
                     "--clients 1..4096 (the default table size)")
    if os.geteuid() != 0:
        parser.exit(2, "bench_mac.py: needs root (namespaces and eBPF)\n")
    from exporter.bpf.build import BpfObjectMissing, object_path
    try:
        object_path("mac")
    except BpfObjectMissing as error:
        parser.exit(2, f"bench_mac.py: {error}\n")

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    args.load_start = f"{os.getloadavg()[0]:.2f}"
    lab = Lab()
    running: list[NetnsProcess] = []
    notes: list[str] = []
    throughput = profile = scrape = None
    started = time.monotonic()
    try:
        lab.build()
        if not args.skip_throughput:
            throughput = bench_throughput(lab, args, running, notes)
            if not args.no_profile:
                profile = bench_profile(lab, args, running)
        if not args.skip_scrape:
            scrape = bench_scrape(lab, args, running, notes)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for process in reversed(running):
            process.stop()
        lab.delete()
    report(args, throughput, profile, scrape, time.monotonic() - started)
    for note in notes:
        print(f"\nWARNING: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
