"""The live page's sampler and records (exporter/live.py), the /events stream, and the jsonl log of
every collector.

The Recorder and LiveFeed tests use small collectors of their own (plain Python, no kernel) to drive
exact values and count reads; the ten-viewer test serves real connections through the exporter's
HTTP server; the log tests run real exporters against traffic the test sends through a veth pair.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest

from exporter.collectors import Collector, Scrape
from exporter.collectors.link import LinkCollector
from exporter.exposition import Family
from exporter.live import MAX_PENDING_EVENTS, MAX_VIEWERS, LiveFeed, Recorder
from exporter.server import MetricsApp, Server
from tests.support import NetnsProcess, enter_netns, in_netns, run, value, veth_pair


class Scripted(Collector):
    """Returns the families its script gives for each read; counts its reads."""

    def __init__(self, name: str, script):
        self.name = name
        self.script = script
        self.reads = 0

    def describe_families(self) -> list[Family]:
        return []

    def read(self) -> list[Family]:
        self.reads += 1
        return self.script(self.reads)


def _counter_and_gauge(read: int) -> list[Family]:
    sent = Family.counter("demo_sent_bytes", "Bytes.")
    sent.add_column(((("device", "a"),), (("device", "b"),)), [100 * read, 7])
    busy = Family.counter("demo_busy_seconds", "Seconds.")
    busy.add((), 0.1 * read)
    level = Family.gauge("demo_level", "A level.")
    level.add((("kind", "x"),), 40 + read)
    return [sent, busy, level]


def _tables(record: dict, section: str, name: str) -> dict:
    table = record[section][name]
    return {tuple(row[:-1]): row[-1] for row in table["samples"]}


def test_recorder_deltas_gauges_and_first_read():
    recorder = Recorder(Scrape([Scripted("demo", _counter_and_gauge)]))
    assert recorder.record() is None  # the baseline
    record = recorder.record()
    assert record["counters_are"] == "deltas" and record["collectors"] == {"demo": None}
    assert record["counters"]["demo_sent_bytes_total"]["labels"] == ["device"]
    assert _tables(record, "counters", "demo_sent_bytes_total") == {("a",): 100, ("b",): 0}
    assert _tables(record, "counters", "demo_busy_seconds_total") == {(): 0.1}  # rounded to nanoseconds
    assert _tables(record, "gauges", "demo_level") == {("x",): 42}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    line = recorder.line()
    assert line.endswith("\n") and line.count("\n") == 1 and json.loads(line)["gauges"]["demo_level"]


def test_recorder_reset_new_series_and_failures():
    def script(read):
        if read == 3:
            raise PermissionError("no")
        family = Family.counter("demo_packets", "Packets.")
        family.add((("device", "a"),), [50, 60, 0, 10, 15][read - 1])  # read 4: the counter went back
        if read >= 4:
            family.add((("device", "new"),), 1000)  # appears later: its first value is only a baseline
        return [family]

    recorder = Recorder(Scrape([Scripted("demo", script)]))
    recorder.record()
    assert _tables(recorder.record(), "counters", "demo_packets_total") == {("a",): 10}
    failed = recorder.record()
    assert "permission denied" in failed["collectors"]["demo"] and failed["counters"] == {}
    # from the last good read (60): the counter went back, so 0; the new series only sets its baseline
    assert _tables(recorder.record(), "counters", "demo_packets_total") == {("a",): 0}
    assert _tables(recorder.record(), "counters", "demo_packets_total") == {("a",): 5, ("new",): 0}


def test_series_with_different_label_names_share_one_table():
    """As with --collector.netns: the exporter's own namespace has no netns label, the others do."""
    def script(read):
        family = Family.counter("demo_bytes", "Bytes.")
        family.add_column(((("device", "eth0"),), (("device", "eth0"), ("netns", "pod:a"))), [10 * read, 20 * read])
        family.add((("netns", "pod:b"), ("device", "lo")), 5 * read)
        return [family]

    recorder = Recorder(Scrape([Scripted("demo", script)]))
    recorder.record()
    record = recorder.record()
    table = record["counters"]["demo_bytes_total"]
    assert sorted(table["labels"]) == ["device", "netns"]
    series = {tuple(sorted(zip(table["labels"], row))): row[-1] for row in table["samples"]}
    assert series == {(("device", "eth0"), ("netns", "")): 10, (("device", "eth0"), ("netns", "pod:a")): 20,
                      (("device", "lo"), ("netns", "pod:b")): 5}


def test_rates_are_deltas_per_second_and_leave_out_zeros():
    recorder = Recorder(Scrape([Scripted("demo", _counter_and_gauge)]))
    recorder.record(rates=True)
    time.sleep(0.2)
    record = recorder.record(rates=True)
    rate = _tables(record, "counters", "demo_sent_bytes_total")
    assert set(rate) == {("a",)}  # b did not move
    assert rate[("a",)] == pytest.approx(100 / record["interval_seconds"], rel=0.02)
    assert record["counters_are"] == "rates"


def test_values_json_cannot_carry_become_null():
    def script(read):
        level = Family.gauge("demo_level", "A level.")
        level.add((), float("nan") if read > 1 else 1.0)
        return [level]

    recorder = Recorder(Scrape([Scripted("demo", script)]))
    recorder.record()
    assert json.loads(recorder.line())["gauges"]["demo_level"]["samples"] == [[None]]


def _collect_events(subscription, count: int, timeout: float = 10) -> list[bytes]:
    events: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events += subscription.take()
        time.sleep(0.01)
    return events


def test_feed_samples_only_while_subscribed_and_drops_a_viewer_that_falls_behind():
    demo = Scripted("demo", _counter_and_gauge)
    feed = LiveFeed(Scrape([demo]), period=0.05)
    try:
        time.sleep(0.2)
        assert demo.reads == 0 and not feed.sampling  # nobody watches: nothing is read
        woken = threading.Event()
        reader = feed.subscribe(wake=woken.set)
        stalled = feed.subscribe()
        events = _collect_events(reader, MAX_PENDING_EVENTS + 4)
        assert woken.is_set() and len(events) == MAX_PENDING_EVENTS + 4
        assert all(event.startswith(b"data: {") and event.endswith(b"}\n\n") for event in events)
        assert stalled.dropped and len(stalled.events) == MAX_PENDING_EVENTS  # never grew beyond the bound
        assert not reader.dropped
        reader.close()
        deadline = time.monotonic() + 2
        while feed.sampling and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not feed.sampling
        reads = demo.reads
        time.sleep(0.2)
        assert demo.reads == reads
        again = feed.subscribe()  # a new viewer starts a new sampler, from a new baseline
        assert _collect_events(again, 1)
        again.close()
    finally:
        feed.close()


def _open_event_stream(port: int, receive_buffer: int = 0) -> socket.socket:
    connection = socket.socket()
    if receive_buffer:  # before connecting, so that the window stays small
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.connect(("127.0.0.1", port))
    connection.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    return connection


def _read_streams(connections: list[socket.socket], until: float) -> list[bytes]:
    """Everything each connection receives until ``until`` (or its end), read side by side."""
    data = {connection: b"" for connection in connections}
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < until:
            for key, _ in selector.select(max(0.0, until - time.monotonic())):
                chunk = key.fileobj.recv(1 << 20)
                data[key.fileobj] += chunk
                if not chunk:
                    selector.unregister(key.fileobj)
    return [data[connection] for connection in connections]


def test_ten_viewers_one_read_per_period_and_closing_them_stops_the_sampler():
    """Ten event streams through the HTTP server: the collectors are read once per period, not once
    per viewer; every viewer gets the same events; closing them all stops the reads."""
    link = LinkCollector()
    reads = []
    original_read = link.read
    link.read = lambda: reads.append(time.monotonic()) or original_read()
    scrape = Scrape([link])
    feed = LiveFeed(scrape, period=0.1)
    server = Server(MetricsApp(scrape, feed), "127.0.0.1", 0)
    server.start()
    port = server.server_address[1]
    try:
        viewers = [_open_event_stream(port) for _ in range(10)]
        streams = _read_streams(viewers, time.monotonic() + 1.5)
        heads = [stream.split(b"\r\n\r\n", 1)[0] for stream in streams]
        assert all(head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/event-stream" in head
                   for head in heads)
        events = [stream.split(b"\r\n\r\n", 1)[1].split(b"\n\n")[:-1] for stream in streams]
        common = min(len(e) for e in events)
        assert common >= 8
        # the same bytes for everyone (a viewer that connected later may miss the first event)
        shared = set.intersection(*(set(e) for e in events))
        assert len(shared) >= common - 1
        # one read per period (plus the baseline), whatever the number of viewers
        window = reads[-1] - reads[0]
        assert len(reads) <= window / 0.1 + 2
        assert len(reads) <= max(len(e) for e in events) + 2
        for viewer in viewers:
            viewer.close()
        deadline = time.monotonic() + 2
        while feed.sampling and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not feed.sampling
        count = len(reads)
        time.sleep(0.3)
        assert len(reads) == count
        assert b"# TYPE netio_network_receive_bytes_total counter" in app_metrics(port)
    finally:
        feed.close()
        server.close()
        scrape.close()


def test_more_viewers_than_the_bound_get_503():
    scrape = Scrape([Scripted("demo", _counter_and_gauge)])
    feed = LiveFeed(scrape, period=0.1)
    server = Server(MetricsApp(scrape, feed), "127.0.0.1", 0)
    server.start()
    port = server.server_address[1]
    try:
        viewers = [_open_event_stream(port) for _ in range(MAX_VIEWERS)]
        assert all(stream.startswith(b"HTTP/1.1 200 OK") for stream in _read_streams(viewers, time.monotonic() + 1))
        extra = _open_event_stream(port)
        assert _read_streams([extra], time.monotonic() + 2)[0].startswith(b"HTTP/1.1 503 Service Unavailable")
        viewers.pop().close()
        time.sleep(0.3)  # the sampler notices the closed one within a period
        again = _open_event_stream(port)
        assert _read_streams([again], time.monotonic() + 1)[0].startswith(b"HTTP/1.1 200 OK")
        for viewer in viewers + [extra, again]:
            viewer.close()
    finally:
        feed.close()
        server.close()


def app_metrics(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_streams([connection], time.monotonic() + 5)[0]


def test_a_viewer_that_stops_reading_is_dropped_and_the_others_keep_theirs(netns):
    """Small TCP send buffers in the test's namespace, so that the kernel holds about one event: what a
    stalled viewer received is then what the sampler let through before dropping it."""
    ns = netns()
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_wmem=4096 16384 65536")
    big = Scripted("big", lambda read: [_big_gauge(read)])  # ~60 kB events
    scrape = Scrape([big])
    feed = LiveFeed(scrape, period=0.05)
    with in_netns(ns):
        server = Server(MetricsApp(scrape, feed), "127.0.0.1", 0)
        server.start()
        port = server.server_address[1]
        stalled = _open_event_stream(port, receive_buffer=4096)
        reader = _open_event_stream(port)
    try:
        data = _read_streams([reader], time.monotonic() + 2)[0]
        assert data.count(b"\n\n") >= 10  # the reader kept getting events
        stalled.settimeout(5)
        received = b""
        while chunk := stalled.recv(1 << 20):  # what the kernel held, then the end: it was dropped
            received += chunk
        assert received.count(b"\n\n") < MAX_PENDING_EVENTS
        reader.close()
    finally:
        feed.close()
        server.close()


def _big_gauge(read: int) -> Family:
    family = Family.gauge("demo_big", "Many series.")
    family.add_column(tuple((("n", str(i)),) for i in range(5000)), [read] * 5000)
    return family


def test_prometheus_mode_serves_the_landing_page_and_no_event_stream(netns, exporter):
    process = exporter(netns())  # tests.support starts it with -P
    status, headers, body = process.get("/")
    assert b"<a href=\"/metrics\">" in body and b"EventSource" not in body
    with pytest.raises(Exception) as error:
        process.get("/events")
    assert "404" in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["--user-period", "5"], "netio-exporter: --user-period: expected milliseconds 10-60000, got '5'"),
    (["-P", "--user-period", "100"], "netio-exporter: --user-period: -P serves no live page; drop --user-period or -P"),
    (["-l", "-", "--user-period", "100"], "netio-exporter: --user-period: log mode (-l) runs no HTTP server"),
    (["-l", "-", "--collector.tcp.local-ports", "22"], "netio-exporter: --collector.tcp.local-ports: the csv log (-l) "
                                                       "carries link counters only; add --log-format jsonl"),
])
def test_bad_live_and_log_flags_exit_2_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1


# ---- the jsonl log with every collector --------------------------------------------------------

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def pair(netns):
    return veth_pair(netns(), netns())


def _log_lines(path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text.splitlines()[: text.count("\n")]


def _wait_lines(path, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _log_lines(path)
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} log lines in {timeout} s")


def _check_schema(record: dict) -> None:
    assert set(record) == {"time", "interval_seconds", "counters_are", "collectors", "counters", "gauges"}
    assert RFC3339_MS.fullmatch(record["time"]) and record["interval_seconds"] > 0
    assert record["counters_are"] == "deltas"
    for section in ("counters", "gauges"):
        for name, table in record[section].items():
            assert re.fullmatch(r"[a-z0-9_]+", name) and set(table) == {"labels", "samples"}
            assert all(len(row) == len(table["labels"]) + 1 for row in table["samples"])
            assert all(isinstance(row[-1], (int, float)) and all(isinstance(v, str) for v in row[:-1])
                       for row in table["samples"])
            if section == "counters":
                assert name.endswith("_total") and all(row[-1] >= 0 for row in table["samples"])


def _tcp_exchange(ns_a: str, ip_b: str, port: int, payload: int, done: threading.Event, close: threading.Event):
    enter_netns(ns_a)  # this thread only
    with socket.create_connection((ip_b, port)) as connection:
        connection.sendall(b"y" * payload)
        assert connection.recv(16) == b"ok"
        done.set()
        close.wait(60)


def _sum(records: list[dict], name: str, **labels) -> float:
    total = 0
    for record in records:
        table = record["counters"].get(name)
        if table is None:
            continue
        for row in table["samples"]:
            if all(row[table["labels"].index(k)] == v for k, v in labels.items()):
                total += row[-1]
    return total


def test_jsonl_log_and_a_prometheus_exporter_see_the_same_deltas(pair, exporter, tmp_path):
    """Traffic sent only between the first and the last log line: the log's deltas summed equal what
    a -P exporter beside it counts over the same traffic, for the link and tcp counters."""
    ns_a, _, _, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    ports = ("--collector.tcp.local-ports", "5001")  # our connection apart from the scrapes' own
    prometheus = exporter(ns_b, *ports, "-f", "0")
    path = tmp_path / "netio.jsonl"
    logger = NetnsProcess(ns_b, [sys.executable, "-m", "exporter", "-l", str(path), "--log-format", "jsonl",
                                 "--interval", "0.3", "-f", "0", *ports])
    with in_netns(ns_b):
        listener = socket.create_server((ip_b, 5001))
    done, close = threading.Event(), threading.Event()
    try:
        first = _wait_lines(path, 1)
        before = prometheus.scrape()
        client = threading.Thread(target=_tcp_exchange, args=(ns_a, ip_b, 5001, 300_000, done, close))
        client.start()
        server_side, _ = listener.accept()
        received = 0
        while received < 300_000:
            received += len(server_side.recv(1 << 16))
        server_side.sendall(b"ok")
        assert done.wait(10)
        time.sleep(0.2)  # the last ACKs
        after = prometheus.scrape()
        settled = len(_log_lines(path)) + 2  # the second line from now was read after the traffic
        records = _wait_lines(path, settled)[len(first):]
        for record in records:
            _check_schema(record)
            assert {"link", "tcp", "netstack", "process"} <= set(record["collectors"])
        for log_name, sample in (("netio_network_receive_bytes_total", "netio_network_receive_bytes_total"),
                                 ("netio_network_receive_packets_total", "netio_network_receive_packets_total"),
                                 ("netio_network_transmit_bytes_total", "netio_network_transmit_bytes_total"),
                                 ("netio_network_transmit_packets_total", "netio_network_transmit_packets_total")):
            delta = value(after, sample, device=dev_b) - value(before, sample, device=dev_b)
            assert delta > 0 and _sum(records, log_name, device=dev_b) == delta, log_name
        for name in ("netio_tcp_received_bytes_total", "netio_tcp_sent_bytes_total", "netio_tcp_acked_bytes_total",
                     "netio_tcp_received_segments_total", "netio_tcp_sent_segments_total"):
            delta = value(after, name, local_port="5001") - value(before, name, local_port="5001")
            assert _sum(records, name, local_port="5001") == delta, name
        assert _sum(records, "netio_tcp_received_bytes_total", local_port="5001") == 300_000
        states = records[-1]["gauges"]["netio_tcp_connections"]
        assert ["5001", "established", 1] in states["samples"] or ["established", "5001", 1] in states["samples"]
    finally:
        close.set()
        listener.close()
        logger.stop()


def test_csv_log_builds_no_collector():
    """netio-logger's csv reads the link counters with the link reader alone: no collector is built, no
    eBPF is loaded, the live module is not imported."""
    code = ("import os, signal, sys, threading\n"
            "from exporter import cli, collectors\n"
            "collectors.Scrape = lambda *args: sys.exit('a Scrape was built')\n"
            "threading.Timer(0.8, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
            "assert cli.main(['-l', os.devnull, '--interval', '0.2']) == 0\n"
            "fds = [f'/proc/self/fd/{fd}' for fd in os.listdir('/proc/self/fd')]\n"
            "print(' '.join(os.readlink(fd) for fd in fds if os.path.lexists(fd)))\n"
            "print('live' if 'exporter.live' in sys.modules else 'no live')\n")
    fds, live = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    assert "bpf" not in fds and live == "no live"
