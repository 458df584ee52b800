"""The HTTP server and the exporter process: routes, gzip, keep-alive, concurrency, shutdown,
self metrics, and `promtool check metrics` on a real scrape."""

from __future__ import annotations

import errno
import gzip
import os
import http.client
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support import in_netns, promtool_problems, samples, value


@pytest.fixture
def running(netns, exporter):
    ns = netns()
    return exporter(ns)


def test_routes(running):
    status, headers, body = running.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="/metrics"' in body
    status, headers, body = running.get("/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers
    with pytest.raises(Exception) as error:
        running.get("/nope")
    assert getattr(error.value, "code", None) == 404


def test_gzip_when_asked(running):
    status, headers, body = running.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
    parsed = samples(gzip.decompress(body).decode())
    assert value(parsed, "netio_network_up", device="lo") == 0
    for refused in ("gzip;q=0, identity", "gzip;Q=0", "GZIP; q=0.000", "identity"):
        _, headers, _ = running.get("/metrics", headers={"Accept-Encoding": refused})
        assert "Content-Encoding" not in headers and headers["Vary"] == "Accept-Encoding", refused


@pytest.mark.parametrize("accept_encoding, gzipped", [
    ("gzip", True), ("GZip", True), ("x-gzip", True), ("*", True), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0", False), ("gzip;Q=0", False), ("gzip ; q=0.0", False), ("gzip;q=0.000", False),
    ("br, *;q=0", False), ("*;q=0.5, gzip;q=0", False), ("", False), ("identity", False), ("deflate", False),
    ("gzip;q=0.5, identity;q=1", False), ("gzip;q=1, identity;q=0.5", True), ("gzip;q=2", False),
    ("gzip;q=abc", False), ("gzip;q=0.0001", False), ("identity;q=0, *", True),
])
def test_accept_encoding_q_values(accept_encoding, gzipped):
    """RFC 9110 12.5.3: q is case-insensitive, q=0 refuses, a bad qvalue voids its item, * covers gzip."""
    from exporter.server import wants_gzip
    assert wants_gzip(accept_encoding) is gzipped


def test_self_metrics(running):
    parsed = running.scrape()
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    assert value(parsed, "netio_scrape_collector_duration_seconds", collector="link") >= 0
    assert [key for key in parsed if key[0] == "netio_exporter_build_info"]
    assert value(parsed, "process_resident_memory_bytes") > 0


def test_keep_alive_connection_is_reused_and_answered(running):
    """Prometheus reuses connections: each request on one connection gets a whole response.

    (How fast is measured in bench/bench_link.py, not asserted here.)"""
    with in_netns(running.ns):
        connection = http.client.HTTPConnection(running.address, running.port, timeout=10)
        connection.connect()
    local = connection.sock.getsockname()
    for _ in range(20):
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and b"netio_network_receive_bytes_total" in body
        assert connection.sock.getsockname() == local  # the same connection, not a reconnect
    connection.close()


def test_concurrent_scrapes_all_succeed(running):
    results, errors = [], []

    def scrape_many():
        try:
            for _ in range(10):
                parsed = running.scrape()
                results.append(value(parsed, "netio_scrape_collector_success", collector="link"))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=scrape_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [1] * 80


def test_sigterm_stops_cleanly(running):
    running.get()
    returncode, stderr = running.stop()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


def test_ipv6_listen_address(netns, exporter):
    ns = netns()
    process = exporter(ns, address="::1")
    assert process.get("/")[0] == 200


def test_port_in_use_is_a_clear_error(netns, exporter):
    ns = netns()
    first = exporter(ns)
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "exporter", "-a", "127.0.0.1",
                             "-p", str(first.port)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"netio-exporter: cannot listen on 127.0.0.1:{first.port}: Address already in use")


def test_promtool_accepts_a_real_scrape_plain_and_gzip(running):
    _, _, plain = running.get()
    _, headers, compressed = running.get(headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    for body in (plain, gzip.decompress(compressed)):
        assert promtool_problems(body) == []


def test_a_failing_collector_does_not_end_the_scrape(caplog):
    from exporter.collectors import Collector, Scrape
    from exporter.collectors.link import LinkCollector
    from exporter.exposition import render_text

    class Broken(Collector):
        name = "broken"

        def describe_families(self):
            return []

        def read(self):
            raise PermissionError(1, "Operation not permitted")

    scrape = Scrape([Broken(), LinkCollector()])
    for _ in range(3):
        parsed = samples(render_text(scrape.families()).decode())
    assert value(parsed, "netio_scrape_collector_success", collector="broken") == 0
    assert value(parsed, "netio_scrape_collector_success", collector="link") == 1
    assert value(parsed, "netio_network_up", device="lo") is not None
    failures = [record for record in caplog.records if "broken" in record.getMessage()]
    assert len(failures) == 1  # one line per new failure, not one per scrape
    assert "permission denied" in failures[0].getMessage()


def test_process_metrics_match_prometheus_clients_process_collector():
    """/metrics renders process_* itself: the same families as ProcessCollector, with the same values."""
    from prometheus_client import ProcessCollector

    from exporter.exposition import to_metric
    from exporter.collectors.process import ProcessCollector as OurProcessCollector

    ours = [to_metric(family) for family in OurProcessCollector().read()]
    theirs = ProcessCollector(registry=None).collect()
    assert [(m.name, m.type, m.documentation, [s.name for s in m.samples]) for m in ours] == \
           [(m.name, m.type, m.documentation, [s.name for s in m.samples]) for m in theirs]
    ours = {m.name: m.samples[0].value for m in ours}
    theirs = {m.name: m.samples[0].value for m in theirs}
    assert ours["process_start_time_seconds"] == theirs["process_start_time_seconds"]
    assert ours["process_max_fds"] == theirs["process_max_fds"]
    assert abs(ours["process_open_fds"] - theirs["process_open_fds"]) <= 2
    assert 0 <= theirs["process_cpu_seconds"] - ours["process_cpu_seconds"] < 1
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes"):
        assert ours[name] > 0 and abs(ours[name] - theirs[name]) < 4 << 20, name


def test_process_open_fds_counts_the_open_files_themselves():
    """process_open_fds is the number of open descriptors: the fd directory's size (Linux 6.2 and later)
    or its listing without the descriptor the listing itself opened."""
    from exporter.collectors.process import ProcessCollector

    collector = ProcessCollector()
    try:
        reported = next(family for family in collector.read() if family.name == "process_open_fds").samples[0][2]
        assert reported == len(os.listdir("/proc/self/fd")) - 1  # this listing's own descriptor is not open after
        assert collector._listed_fds() == reported  # the way for kernels before 6.2, whose directory size is 0
    finally:
        collector.close()


def test_the_registry_serves_the_same_families(running):
    """MetricsApp.registry (prometheus_client, for embedding) exposes the families /metrics serves."""
    from prometheus_client import generate_latest

    from exporter.collectors import Scrape, self_collectors
    from exporter.collectors.link import LinkCollector
    from exporter.server import MetricsApp

    with in_netns(running.ns):
        app = MetricsApp(Scrape([LinkCollector()], self_collectors()))
        try:
            served = {name for name, _ in samples(app.metrics().decode())}
            registry = {name for name, _ in samples(generate_latest(app.registry).decode())}
        finally:
            app.scrape.close()
    assert served == registry and "process_cpu_seconds_total" in served


def test_serving_imports_neither_http_server_nor_prometheus_client():
    """Both cost resident memory (about 10 MB together); only MetricsApp.registry and to_metric need the latter."""
    code = ("import sys, exporter.cli, exporter.server, exporter.collectors.link; "
            "print(sorted({'http.server', 'http.client', 'ssl', 'prometheus_client'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _exchange(running, request: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything the server sends until it closes the connection."""
    with in_netns(running.ns):
        sock = socket.create_connection((running.address, running.port), timeout=timeout)
    with sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_http_1_0_closes_and_head_sends_no_body(running):
    response = _exchange(running, b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in response
    assert response.endswith(b"</html>\n")
    response = _exchange(running, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 1000


def test_pipelined_requests_are_answered_in_order(running):
    response = _exchange(running, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d+) ", response) == [b"404", b"200", b"200"]
    assert response.endswith(b"\n") and b"netio_network_up" in response


@pytest.mark.parametrize("request_bytes, status", [
    (b"nonsense\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tfolded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\n", 400),  # space before the colon
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 501),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"x" * 70000 + b"\r\n\r\n", 431),
])
def test_bad_requests_get_an_error_and_a_closed_connection(running, request_bytes, status):
    """RFC 9112: malformed requests get 400 (2.2, 3.2, 5.2, 6.3), not an answer to a guess."""
    response = _exchange(running, request_bytes)
    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response[:200]
    assert b"Connection: close\r\n" in response  # and _exchange returned: the server closed it


def test_a_request_head_sent_again_is_answered_as_the_first_was(running):
    """The server remembers heads h11 accepted, not its verdicts on others: the same bytes again, on a new
    connection or a kept one, get the same answer, Connection: close included; a bad head stays bad."""
    closing = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(3):
        response = _exchange(running, closing)  # returns once the server has closed
        assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in response
    for _ in range(2):
        assert _exchange(running, b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    with in_netns(running.ns):
        sock = socket.create_connection((running.address, running.port), timeout=5)
    with sock:
        for _ in range(3):
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b"Healthy\n"):
                response += sock.recv(65536)
            assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in response
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n")  # on the kept one too
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


def test_request_heads_with_credentials_are_not_remembered():
    """The head cache would otherwise hold Authorization values in memory, which the credential cache
    deliberately keeps only as a hash."""
    from exporter.server import Request, _Heads
    heads = _Heads()
    plain, with_credentials = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", \
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpw\r\n\r\n"
    heads.add(plain, Request("GET", "/metrics", {"host": "x"}))
    heads.add(with_credentials, Request("GET", "/metrics", {"host": "x", "authorization": "Basic dTpw"}))
    assert heads.get(plain) is not None and heads.get(with_credentials) is None


def test_keep_alive_after_head_and_errors_that_keep_the_connection(running):
    response = _exchange(running, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d+) ", response) == [b"200", b"404", b"200"]
    last = response.rpartition(b"HTTP/1.1 200 OK\r\n")[2]
    head, _, body = last.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and b"netio_network_up" in gzip.decompress(body)


def test_health_probe(running):
    status, headers, body = running.get("/-/healthy")
    assert status == 200 and body == b"Healthy\n"


def test_idle_keep_alive_connections_do_not_starve_new_ones(running):
    """More idle kept-alive connections than waiting workers: a new connection is still answered at once."""
    idle = []
    try:
        for _ in range(12):
            with in_netns(running.ns):
                connection = http.client.HTTPConnection(running.address, running.port, timeout=10)
                connection.connect()
            connection.request("GET", "/")
            assert connection.getresponse().read().endswith(b"</html>\n")
            idle.append(connection)
        start = time.monotonic()
        assert running.get("/")[0] == 200
        assert time.monotonic() - start < 2
        for connection in idle:  # and the idle ones are still served
            connection.request("GET", "/metrics")
            assert connection.getresponse().status == 200
    finally:
        for connection in idle:
            connection.close()


def test_a_stream_outlives_the_deadlines_and_the_cap(monkeypatch):
    """The shape the live page's event stream will use: a route answering with an async iterator is sent
    chunked, is not cut by the head or idle deadlines and does not count against the connection cap.
    (In-process, on loopback of this namespace, with the deadlines shortened.)"""
    import asyncio

    from exporter import server as http_server
    from exporter.collectors import Scrape

    monkeypatch.setattr(http_server, "HEAD_SECONDS", 0.3)
    monkeypatch.setattr(http_server, "IDLE_SECONDS", 0.3)
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 1)

    class Streaming(http_server.Server):
        async def route(self, request):
            if request.path != "/events":
                return await super().route(request)

            async def events():
                for number in range(4):
                    await asyncio.sleep(0.3)
                    yield f"data: {number}\n\n".encode()
            return http_server.Response(200, events(), "text/event-stream")

    server = Streaming(http_server.MetricsApp(Scrape([])), "127.0.0.1", 0)
    server.start()
    try:
        port = server.server_address[1]
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        stream.request("GET", "/events")
        response = stream.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Type") == "text/event-stream"
        first = response.read1()
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # the cap of 1 ignores the stream
        other.request("GET", "/")
        assert other.getresponse().read().endswith(b"</html>\n")
        other.close()
        rest = response.read()  # 1.2 s in all: past both deadlines
        events = b"".join(f"data: {number}\n\n".encode() for number in range(4))
        assert first + rest == events
        stream.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as old:  # HTTP/1.0: no chunks, ends at close
            old.sendall(b"GET /events HTTP/1.0\r\n\r\n")
            received = b""
            while chunk := old.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"\r\nConnection: close" in head and b"Transfer-Encoding" not in head and body == events
    finally:
        server.close()
    assert not _serving_threads()


def test_sigterm_during_scrapes_finishes_them_before_closing_collectors(running):
    """Shutdown stops accepting, answers the scrapes in progress whole, then closes the collectors: no
    'collector ... failed: Bad file descriptor' from a collector closed under a running scrape."""
    stop, complete, errors = threading.Event(), [], []

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            try:
                with in_netns(running.ns):
                    connection = http.client.HTTPConnection(running.address, running.port, timeout=10)
                    connection.connect()
            except OSError:  # refused: no longer accepting
                return
            try:
                connection.request("GET", "/metrics")
                body = connection.getresponse().read()
                complete.append(body.endswith(b"\n") and b"netio_scrape_collector_success" in body)
            except (ConnectionError, http.client.RemoteDisconnected):
                pass  # accepted into the backlog but never served: reset, no partial answer
            except http.client.IncompleteRead as error:
                errors.append(error)
            finally:
                connection.close()

    threads = [threading.Thread(target=scrape_until_stopped) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    returncode, stderr = running.stop()
    stop.set()
    for thread in threads:
        thread.join()
    assert returncode == 0, stderr
    assert complete and all(complete) and not errors
    assert "failed" not in stderr and "Traceback" not in stderr, stderr


_ATTACK = """
import selectors, socket, sys, time
port, idle_count, slow_count, seconds = (int(value) for value in sys.argv[1:5])
request = b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: " + b"a" * 100
selector = selectors.DefaultSelector()
dropped = {"idle": 0, "slow": 0}
def connect(kind):
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    selector.register(sock, selectors.EVENT_READ, [kind, 0])
for _ in range(idle_count):
    connect("idle")
for _ in range(slow_count):
    connect("slow")
deadline, tick = time.monotonic() + seconds, time.monotonic()
while time.monotonic() < deadline:
    for key, _ in selector.select(timeout=0.2):
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if not data:  # closed by the server
            selector.unregister(key.fileobj)
            key.fileobj.close()
            dropped[key.data[0]] += 1
    if time.monotonic() >= tick:  # a byte a second on each slow connection
        tick += 1
        for key in list(selector.get_map().values()):
            if key.data[0] == "slow":
                try:
                    key.fileobj.send(request[key.data[1] % len(request):][:1])
                    key.data[1] += 1
                except OSError:
                    pass
print(dropped["idle"], dropped["slow"], flush=True)
for key in list(selector.get_map().values()):
    key.fileobj.close()
"""


def _process_counts(pid: int) -> tuple[int, int, float]:
    """(open fds, threads, RSS MiB) of ``pid``."""
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


def test_idle_and_slowloris_connections_do_not_stop_scrapes(netns, exporter):
    """1,000 silent and 200 slowloris connections (a byte a second) held for 30 s: scrapes on fresh
    connections keep answering (p99 <= 50 ms), every attacker is dropped, by the connection cap (1,024: the
    longest waiting first) or by the 10 s head deadline, and fds, threads and RSS are back where they
    started after."""
    import statistics
    running = exporter(netns(), "--no-collector.tcp", "--no-collector.netstack")
    pid = running.process.pid
    for _ in range(20):
        running.get()
    time.sleep(0.5)  # the last answer's connection is closed by now
    start_fds, start_threads, start_rss = _process_counts(pid)
    attack = subprocess.Popen(["ip", "netns", "exec", running.ns, sys.executable, "-c", _ATTACK, str(running.port),
                               "1000", "200", "30"], stdout=subprocess.PIPE, text=True)
    times = []
    try:
        time.sleep(1)
        while attack.poll() is None:
            start = time.perf_counter()
            status, _, body = running.get()
            times.append(time.perf_counter() - start)
            assert status == 200 and body.endswith(b"\n")
            time.sleep(0.05)
    finally:
        if attack.poll() is None:
            attack.kill()
        output = attack.communicate(timeout=30)[0]
    dropped_idle, dropped_slow = (int(value) for value in output.split())
    assert (dropped_idle, dropped_slow) == (1000, 200)
    p99 = statistics.quantiles(times, n=100)[98]
    assert p99 <= 0.050, f"p99 {p99 * 1e3:.1f} ms, median {statistics.median(times) * 1e3:.1f} ms over {len(times)}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fds, threads, rss = _process_counts(pid)
        if (fds, threads) == (start_fds, start_threads):
            break
        time.sleep(0.2)
    assert (fds, threads) == (start_fds, start_threads)
    assert rss - start_rss <= 5, f"RSS {start_rss:.1f} -> {rss:.1f} MiB"


def test_out_of_file_descriptors_pauses_accepting_and_recovers(netns, exporter):
    """With its open-file limit lowered under it (prlimit, on the running process), accept fails with
    EMFILE: the exporter says so once, waits instead of retrying in a busy loop, and serves again once
    descriptors are free."""
    running = exporter(netns(), "--no-collector.tcp", "--no-collector.netstack")
    pid = running.process.pid
    running.get()
    time.sleep(0.5)  # that answer's connection is closed by now
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 4
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
    with in_netns(running.ns):
        held = [socket.create_connection((running.address, running.port), timeout=5) for _ in range(12)]
    try:
        time.sleep(0.5)
        cpu_before = _cpu_seconds(pid)
        time.sleep(2)
        assert _cpu_seconds(pid) - cpu_before < 0.2, "accept is retried in a busy loop"
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            status, _, body = running.get()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert status == 200 and b"netio_network_receive_bytes_total" in body
    _, stderr = running.stop()
    assert stderr.count("cannot accept connections (Too many open files)") == 1, stderr


def _serving_threads() -> list[threading.Thread]:
    """Threads of Server.start() still alive (close() waits for its thread)."""
    return [thread for thread in threading.enumerate() if thread.name == "netio-http" and thread.is_alive()]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_reads_slowly_gets_every_byte_and_one_that_never_reads_is_dropped(monkeypatch):
    """Write flow control: a stream of 8 MiB to a client that waits before reading is held back (the
    server buffers at most about a socket's worth, not the stream), then arrives whole and in order; a
    client that never reads is dropped after WRITE_SECONDS, and the server goes on answering.
    (In-process, on loopback of this namespace, with WRITE_SECONDS shortened.)"""
    from exporter import server as http_server
    from exporter.collectors import Scrape

    monkeypatch.setattr(http_server, "WRITE_SECONDS", 1.0)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    produced = []

    class Streaming(http_server.Server):
        async def route(self, request):
            if request.path != "/big":
                return await super().route(request)

            async def body():
                for number in range(8):
                    produced.append(number)
                    yield chunk
            return http_server.Response(200, body(), "application/octet-stream")

    server = Streaming(http_server.MetricsApp(Scrape([])), "127.0.0.1", 0)
    server.start()
    try:
        port = server.server_address[1]
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        time.sleep(0.5)
        assert len(produced) < 8, "the whole stream was buffered for a client that is not reading"
        received = bytearray()
        while data := slow.recv(1 << 20):
            received += data
        slow.close()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == chunk * 8

        stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stuck.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        time.sleep(2.5)  # WRITE_SECONDS and a sweep
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        other.request("GET", "/")
        assert other.getresponse().status == 200
        other.close()
        stuck.settimeout(5)
        cut = 0
        while data := stuck.recv(1 << 20):  # what was on its way when it was dropped, then the end
            cut += len(data)
        stuck.close()
        assert cut < len(chunk) * 8
    finally:
        server.close()
    assert not _serving_threads()


def test_connections_reset_at_once_leave_nothing_behind(netns, exporter):
    """500 clients that reset their connection (SO_LINGER 0) right after connecting, a third of them after a
    whole request and a third after half of one: the transport's first read, made at accept, meets the reset;
    the exporter's descriptors are back where they were and it answers."""
    import struct
    running = exporter(netns(), "--no-collector.tcp", "--no-collector.netstack")
    pid = running.process.pid
    running.get()
    time.sleep(0.5)
    start_fds = len(os.listdir(f"/proc/{pid}/fd"))
    with in_netns(running.ns):
        for index in range(500):
            client = socket.create_connection((running.address, running.port), timeout=5)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if index % 3 == 1:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            elif index % 3 == 2:
                client.sendall(b"GET /metr")
            client.close()
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{pid}/fd")) != start_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{pid}/fd")) == start_fds
    assert running.get()[0] == 200
    _, stderr = running.stop()
    assert "Traceback" not in stderr and "failed" not in stderr, stderr


def test_scrape_threads_follow_the_loops_cpu_one_scrape_at_a_time(monkeypatch):
    """One scrape at a time: the scrape threads are bound to the CPU the loop handed it from and follow the
    loop when it moves (its moves are made up here, over the CPUs we may use). Two at once: they may run
    anywhere again. A refused binding leaves them as they are, scraping. In-process, on loopback of this
    namespace."""
    from exporter import server as http_server
    from exporter.collectors import Collector, Scrape

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs to see a thread follow the loop")
    handed_from = []

    def sched_getcpu():
        handed_from.append(allowed[len(handed_from) % 2])
        return handed_from[-1]
    monkeypatch.setattr(http_server, "_sched_getcpu", sched_getcpu)
    entered, release = threading.Semaphore(0), threading.Event()

    class Held(Collector):  # holds a scrape while the test looks, when asked to
        name = "held"
        hold = False

        def describe_families(self):
            return []

        def read(self):
            if self.hold:
                entered.release()
                release.wait(10)
            return []

    def scrape(port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200 and b"netio_scrape_collector_success" in response.read()
        connection.close()

    def bindings():
        return [os.sched_getaffinity(thread.native_id) for thread in threading.enumerate()
                if thread.name.startswith("netio-scrape")]

    held = Held()
    server = http_server.Server(http_server.MetricsApp(Scrape([held])), "127.0.0.1", 0)
    server.start()
    try:
        port = server.server_address[1]
        for _ in range(3):
            scrape(port)
            assert bindings() == [{handed_from[-1]}]
        assert handed_from == [allowed[0], allowed[1], allowed[0]]

        held.hold = True
        both = [threading.Thread(target=scrape, args=(port,)) for _ in range(2)]
        for thread in both:
            thread.start()
        assert entered.acquire(timeout=10) and entered.acquire(timeout=10)
        assert len(handed_from) == 4  # the first of the two was bound; the second, given meanwhile, unbound all
        assert bindings() == [set(allowed)] * 2
        release.set()
        for thread in both:
            thread.join()
        held.hold = False
        scrape(port)
        assert len(handed_from) == 5 and bindings() == [{handed_from[-1]}] * 2

        def refused(error):
            def sched_setaffinity(tid, cpus):
                raise OSError(error, os.strerror(error))
            return sched_setaffinity
        with monkeypatch.context() as patch:
            patch.setattr(http_server.os, "sched_setaffinity", refused(errno.EINVAL))  # the CPU left our cpuset
            scrape(port)
            scrape(port)
            assert len(handed_from) == 7 and bindings() == [{allowed[0]}] * 2
        scrape(port)  # tried again: bound to the other CPU
        assert handed_from[-1] == allowed[1] and bindings() == [{allowed[1]}] * 2
        monkeypatch.setattr(http_server.os, "sched_setaffinity", refused(errno.EPERM))  # a seccomp filter
        scrape(port)  # asked for the other CPU: refused, so given up for good
        scrape(port)
        assert len(handed_from) == 9 and bindings() == [{allowed[1]}] * 2
    finally:
        release.set()
        server.close()
    assert not _serving_threads()
