"""Live page benchmark: the exporter's CPU with 0, 1 and 10 pages open, at 500 ms and 100 ms; bytes per event.

Runs the exporter in its default mode (link, tcp and netstack on, NET_RX sampling at 1000 Hz) in a
network namespace of its own (loopback only, so the link and tcp collectors read that namespace:
one interface, the viewers' own sockets). A page is an /events stream read by this process (the
browser's part is not the exporter's cost). For each period and number of pages it measures the
exporter process's CPU time (utime + stime of all its threads, /proc/PID/stat) over --seconds and
prints it as % of one core, the events received per page, and the bytes per event; then the CPU
of one sample (one event to every page) against the CPU of one /metrics scrape as the peer.

Target (issue 16): <= 1 % of one core with 10 pages at 500 ms.
Run as root from the repository root:  flock /tmp/netio-bench.lock .venv/bin/python -m bench.bench_live [--seconds 20]
The namespace and the exporter (by its pid) are removed at exit.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

from tests.support import NetnsProcess, free_port, in_netns, unique_name

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Pages:
    """``count`` event streams read on one thread; counts bytes and events of the first."""

    def __init__(self, ns: str, port: int, count: int):
        self.connections = []
        with in_netns(ns):
            for _ in range(count):
                connection = socket.create_connection(("127.0.0.1", port))
                connection.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
                self.connections.append(connection)
        self.bytes = self.events = 0
        self.head_seen = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with selectors.DefaultSelector() as selector:
            for connection in self.connections:
                selector.register(connection, selectors.EVENT_READ)
            first = self.connections[0] if self.connections else None
            while not self.stop.is_set():
                for key, _ in selector.select(0.2):
                    chunk = key.fileobj.recv(1 << 20)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is first:
                        if not self.head_seen:
                            self.head_seen = True
                            chunk = chunk.split(b"\r\n\r\n", 1)[1]
                        self.bytes += len(chunk)
                        self.events += chunk.count(b"\n\n")

    def reset(self) -> None:
        self.bytes = self.events = 0

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for connection in self.connections:
            connection.close()


def scrape_cpu(ns: str, pid: int, port: int, times: int = 50) -> float:
    """Mean exporter CPU seconds of one /metrics scrape (keep-alive connection)."""
    with in_netns(ns):
        connection = socket.create_connection(("127.0.0.1", port))
    request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"
    before = cpu_seconds(pid)
    for _ in range(times):
        connection.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(1 << 16)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += connection.recv(1 << 20)
    used = cpu_seconds(pid) - before
    connection.close()
    return used / times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measuring time per row (default 20)")
    parser.add_argument("--periods", default="500,100", help="--user-period values in ms (default 500,100)")
    parser.add_argument("--pages", default="0,1,10", help="numbers of open pages (default 0,1,10)")
    options = parser.parse_args()
    ns = unique_name("netio-bl")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for period in map(int, options.periods.split(",")):
            port = free_port(ns)
            exporter = NetnsProcess(ns, [sys.executable, "-m", "exporter", "-a", "127.0.0.1", "-p", str(port),
                                         "--user-period", str(period)])
            try:
                exporter.wait_listening(port)
                exporter.expect_command("exporter")
                time.sleep(1)
                per_scrape = scrape_cpu(ns, exporter.pid, port)
                for count in map(int, options.pages.split(",")):
                    pages = Pages(ns, port, count)
                    time.sleep(2)  # connected, sampler running, first events out
                    pages.reset()
                    before, start = cpu_seconds(exporter.pid), time.monotonic()
                    time.sleep(options.seconds)
                    used, elapsed = cpu_seconds(exporter.pid) - before, time.monotonic() - start
                    events, size = pages.events, pages.bytes
                    pages.close()
                    samples = elapsed / (period / 1000) if count else 0
                    rows.append((period, count, 100 * used / elapsed, events, size / events if events else 0,
                                 used / samples if samples else 0, per_scrape))
                    print(f"period {period} ms, {count} pages: {100 * used / elapsed:.2f} % of one core", file=sys.stderr)
            finally:
                exporter.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print("| period | pages | exporter CPU, % of one core | events per page | bytes per event "
          "| CPU per sample | /metrics scrape CPU (peer) | sample / scrape |")
    print("|---|---|---|---|---|---|---|---|")
    for period, count, percent, events, size, per_sample, per_scrape in rows:
        ratio = f"{per_sample / per_scrape:.2f}" if per_sample and per_scrape else "-"
        print(f"| {period} ms | {count} | {percent:.2f} % | {events} | {size:.0f} | "
              f"{per_sample * 1000:.2f} ms | {per_scrape * 1000:.2f} ms | {ratio} |")
    print(f"\n({options.seconds:g} s per row; python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"CPU times in clock ticks of {1000 / TICKS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
