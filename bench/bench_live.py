"""Live page benchmark: the exporter's CPU with 0, 1 and 10 pages open, at 500 ms and 100 ms; bytes per event.

Runs the exporter in its default mode (link, tcp and netstack on, NET_RX sampling at 1000 Hz) in a
network namespace of its own (loopback only, so the link and tcp collectors read that namespace:
one interface, the viewers' own sockets). A page is an /events stream read by this process (the
browser's part is not the exporter's cost). For each period and number of pages it measures the
exporter process's CPU time (utime + stime of all its threads, /proc/PID/stat) over --seconds and
prints it as % of one core, the events received per page, and the bytes per event. The peer: the
same exporter with no page open and /metrics fetched once per period (a Prometheus scraping at the
page's period), whose ratio says what the page costs beyond reading the collectors.

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


def scrape_every(ns: str, port: int, period: float, seconds: float) -> None:
    """The peer: /metrics fetched once per period on one keep-alive connection, as a Prometheus scraping
    at the page's period would."""
    with in_netns(ns):
        connection = socket.create_connection(("127.0.0.1", port))
    request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"
    start, count = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        connection.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(1 << 16)
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += connection.recv(1 << 20)
        count += 1
        time.sleep(max(0.0, start + count * period - time.monotonic()))
    connection.close()


def measure(pid: int, seconds: float, work=None) -> tuple[float, float]:
    """(exporter CPU seconds, wall seconds) over ``seconds``, running ``work(seconds)`` meanwhile if given."""
    before, start = cpu_seconds(pid), time.monotonic()
    work(seconds) if work is not None else time.sleep(seconds)
    return cpu_seconds(pid) - before, time.monotonic() - start


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
                for count in map(int, options.pages.split(",")):
                    pages = Pages(ns, port, count)
                    time.sleep(2)  # connected, sampler running, first events out
                    pages.reset()
                    used, elapsed = measure(exporter.pid, options.seconds)
                    events, size = pages.events, pages.bytes
                    pages.close()
                    what = f"{count} page{'' if count == 1 else 's'}"
                    rows.append((period, what, used / elapsed, events, size / events if events else 0))
                    print(f"period {period} ms, {what}: {100 * used / elapsed:.2f} % of one core", file=sys.stderr)
                time.sleep(2)  # the sampler has stopped
                used, elapsed = measure(exporter.pid, options.seconds,
                                        lambda seconds: scrape_every(ns, port, period / 1000, seconds))
                rows.append((period, "peer: /metrics every period", used / elapsed, 0, 0))
            finally:
                exporter.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print("| period | open pages | exporter CPU, % of one core | against the peer | events per page "
          "| bytes per event |")
    print("|---|---|---|---|---|---|")
    peers = {period: share for period, what, share, _, _ in rows if what.startswith("peer")}
    for period, what, share, events, size in rows:
        ratio = f"{share / peers[period]:.2f}x" if peers.get(period) else "-"
        size_text = f"{size:.0f}" if size else "-"
        print(f"| {period} ms | {what} | {100 * share:.2f} % | {ratio} | {events or '-'} | {size_text} |")
    print(f"\n({options.seconds:g} s per row; python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"CPU times in clock ticks of {1000 / TICKS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
