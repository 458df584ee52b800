"""tcp archive benchmark: what the archive costs per second and per record, and whether it slows a scrape.

Holds 2k and 20k established loopback connections (child processes in a network namespace of its own, at
most 8,000 sockets each: the open-file limit) and, for each poll interval (10 ms and 100 ms), runs the
archive in this process for ``--seconds`` (rounded up to whole flush periods, FLUSH_SECONDS, so that every
window holds as many flushes of change records) while the children move one byte on ``--moving`` connections
every interval (so at most that many change per poll; the rest stay idle). It prints, per row: the archive
thread's CPU (user + system, from /proc/self/task/TID/stat) as a share of one core, records per second, µs
of archive CPU per record, compressed bytes per record, poll duration, and the median scrape time of the
link and tcp collectors with and without the archive running, and their ratio.

Run as root from the repository root:  python -m bench.bench_archive [--sizes 2000,20000] [--seconds 5]
The namespace and the children are removed at exit, the children by their pid.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from tests.support.netns import enter_netns

SOCKETS_PER_CHILD = 8000


def child(connections: int, moving: int, interval: float) -> None:
    """Hold ``connections`` connections; while stdin is open, move a byte on ``moving`` of them (spread
    over the children by the parent) every ``interval``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    pairs = []
    for _ in range(connections):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        pairs.append((client, server))
    listener.close()
    print("ready", flush=True)
    stop = threading.Event()

    def move():
        turn = 0
        while not stop.wait(interval):
            for offset in range(moving):
                client, server = pairs[(turn + offset) % len(pairs)]
                client.send(b"m")
                server.recv(1)
            turn += moving

    mover = threading.Thread(target=move, daemon=True)
    mover.start()
    sys.stdin.read()  # until the parent closes it
    stop.set()


def _thread_cpu_seconds(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape_ms(scrape, rounds: int = 15) -> float:
    from exporter.exposition import render_text
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        render_text(scrape.families())
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1e3


def breakdown(interval: float, polls: int) -> dict[str, float]:
    """The kernel path's pieces, µs of this thread's CPU per poll (user + system: the iterator's program
    and the exact lookups run in the kernel on the reading thread), over ``polls`` polls ``interval`` apart
    while the children move data: the iterator pass, the exact lookups with their parsing and comparison,
    the records' encoding, and the frames (one per changed connection per second, as the archive writes
    them, amortised per poll)."""
    from exporter.archive import change_record
    from exporter.archive.files import ArchiveFiles, compressor
    from exporter.archive.kernel import ChangeIterator
    from exporter.netlink.connections import ConnectionReader

    changes, reader = ChangeIterator(), ConnectionReader()
    fingerprints: dict[int, bytes] = {}
    spent = dict.fromkeys(("iterator pass", "exact lookups", "records", "frames"), 0.0)
    pending: dict[int, list[bytes]] = {}
    per_second = max(1, round(1 / interval))
    with tempfile.TemporaryDirectory(prefix="netio-bench-archive-") as directory:
        files = ArchiveFiles(directory, 600.0, 1 << 34, compressor())
        try:
            # every connection (its file begun, as the archive's first poll does), then those whose optmem moved
            for _ in range(2):
                for connection in reader.answers(changes.requests(), fingerprints):
                    files.append(str(connection.cookie), b"", change_record(b"{", b"", connection), 1, time.monotonic())
            for poll in range(1, polls + 1):
                time.sleep(interval)
                begin = time.thread_time()
                requests = changes.requests()
                passed = time.thread_time()
                changed = reader.answers(requests, fingerprints)
                looked_up = time.thread_time()
                for connection in changed:
                    pending.setdefault(connection.cookie, []).append(change_record(b"{", b"", connection))
                encoded = time.thread_time()
                if poll % per_second == 0:
                    now = time.monotonic()
                    for cookie, lines in pending.items():
                        files.append(str(cookie), b"", b"".join(lines), len(lines), now)
                    files.settle()
                    pending.clear()
                spent["iterator pass"] += passed - begin
                spent["exact lookups"] += looked_up - passed
                spent["records"] += encoded - looked_up
                spent["frames"] += time.thread_time() - encoded
        finally:
            changes.close()
            reader.close()
            files.close()
    return {piece: seconds / polls * 1e6 for piece, seconds in spent.items()}


def run(size: int, interval: float, moving: int, seconds: float, namespace: str, pieces: bool) -> dict:
    from exporter.archive import FLUSH_SECONDS, Archive
    from exporter.collectors import Scrape
    from exporter.collectors.link import LinkCollector
    from exporter.collectors.tcp import TcpCollector

    children = []
    count = max(1, -(-(size // 2) // (SOCKETS_PER_CHILD // 2)))  # children, each under the open-file limit
    for index in range(count):
        connections = size // 2 // count
        share = moving // count + (1 if index < moving % count else 0)
        process = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "bench.bench_archive",
                                    "--child", str(connections), str(share), str(interval)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(process)
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"child {process.pid} did not get ready")
    scrape = Scrape([LinkCollector(), TcpCollector()])
    try:
        quiet = _scrape_ms(scrape)
        with tempfile.TemporaryDirectory(prefix="netio-bench-archive-") as directory:
            archive = Archive(directory, interval, 600.0, 1 << 34)
            try:
                native = archive.thread_id
                deadline = time.monotonic() + 120  # past the first poll, which writes every header: at 20k
                while archive.stats().poll_count < 3 and time.monotonic() < deadline:  # sockets, seconds
                    time.sleep(0.05)
                time.sleep(min(1.0, seconds / 4))  # and its first flush of every connection
                seconds = math.ceil(seconds / FLUSH_SECONDS) * FLUSH_SECONDS  # whole flush periods: each
                # window holds as many flushes of change records, whatever its phase
                cpu_before, wall_before = _thread_cpu_seconds(native), time.monotonic()
                records_before = sum(archive.stats().records.values())
                bytes_before = archive.file_stats().bytes_written
                busy = _scrape_ms(scrape)
                time.sleep(max(0.0, seconds - (time.monotonic() - wall_before)))
                cpu = _thread_cpu_seconds(native) - cpu_before
                wall = time.monotonic() - wall_before
                stats = archive.stats()
                records = sum(stats.records.values()) - records_before
                written = archive.file_stats().bytes_written - bytes_before
            finally:
                archive.close()
        parts = breakdown(interval, max(10, int(seconds / interval / 2))) if pieces else {}
        return {"size": size, "interval_ms": interval * 1e3, "moving": moving, "cpu_share": cpu / wall, "pieces": parts,
                "records_per_s": records / wall, "us_per_record": cpu / records * 1e6 if records else float("nan"),
                "bytes_per_record": written / records if records else float("nan"),
                "poll_ms": stats.poll_seconds / max(stats.poll_count, 1) * 1e3,
                "scrape_ms": quiet, "scrape_with_archive_ms": busy, "method": stats.method}
    finally:
        scrape.close()
        for process in children:
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in children:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="connections' sockets (both ends count)")
    parser.add_argument("--intervals", default="10,100", help="poll intervals in ms")
    parser.add_argument("--moving", type=int, default=100, help="connections moved per interval")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the kernel path's per-piece breakdown")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), float(args.child[2]))
        return
    namespace = f"netio-bench-arc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        enter_netns(namespace)  # this thread and the archive's: only the namespace's connections count
        print("| sockets | poll | moving/poll | archive CPU (share of a core) | records/s | µs CPU/record | "
              "bytes/record | poll | scrape | scrape with archive | ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        breakdowns = []
        for size in map(int, args.sizes.split(",")):
            for interval in map(int, args.intervals.split(",")):
                row = run(size, interval / 1000, args.moving, args.seconds, namespace, args.breakdown)
                breakdowns.append(row)
                print(f"| {row['size']:,} | {row['interval_ms']:.0f} ms | {row['moving']} | {row['cpu_share']:.1%} | "
                      f"{row['records_per_s']:,.0f} | {row['us_per_record']:.1f} | {row['bytes_per_record']:.0f} | "
                      f"{row['poll_ms']:.2f} ms | {row['scrape_ms']:.2f} ms | {row['scrape_with_archive_ms']:.2f} ms | "
                      f"{row['scrape_with_archive_ms'] / row['scrape_ms']:.2f} |", flush=True)
        if args.breakdown:
            pieces = tuple(breakdowns[0]["pieces"])
            print(f"\nThe kernel path's pieces, µs of CPU per poll ({args.moving} moving connections):\n")
            print("| sockets | poll | " + " | ".join(pieces) + " | sum |")
            print("|---:|---:|" + "---:|" * (len(pieces) + 1))
            for row in breakdowns:
                values = [row["pieces"][piece] for piece in pieces]
                print(f"| {row['size']:,} | {row['interval_ms']:.0f} ms | "
                      + " | ".join(f"{value:,.0f}" for value in values) + f" | {sum(values):,.0f} |")
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    main()
