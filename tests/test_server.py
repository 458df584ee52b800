"""The HTTP server and the exporter process: routes, gzip, keep-alive, concurrency, shutdown,
self metrics, and `promtool check metrics` on a real scrape."""

from __future__ import annotations

import gzip
import http.client
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support import in_netns, require, samples, value


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
    assert headers["Content-Encoding"] == "gzip"
    parsed = samples(gzip.decompress(body).decode())
    assert value(parsed, "netio_network_up", device="lo") == 0
    _, headers, _ = running.get("/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in headers


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


def test_promtool_accepts_a_real_scrape(running):
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    _, _, body = running.get()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result.stdout + result.stderr


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


def test_bad_requests_get_an_error_and_a_closed_connection(running):
    assert _exchange(running, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _exchange(running, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").startswith(b"HTTP/1.1 501 ")
    assert _exchange(running, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    assert _exchange(running, b"GET / HTTP/1.1\r\nX: " + b"x" * 70000).startswith(b"HTTP/1.1 431 ")


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
