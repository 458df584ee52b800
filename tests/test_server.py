"""The HTTP server and the exporter process: routes, gzip, keep-alive, concurrency, shutdown,
self metrics, and `promtool check metrics` on a real scrape."""

from __future__ import annotations

import gzip
import http.client
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import in_netns, require, samples, value


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
