"""A real Prometheus (Debian's package) scrapes the exporter with the repository's prometheus.yml."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support import prometheus_query, free_port, in_netns, require, veth_pair

try:
    import yaml
except ImportError:  # only the tests use PyYAML (the test extra)
    yaml = None

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prometheus(tmp_path):
    """Factory: ``prometheus(ns, targets)`` runs Prometheus in ``ns`` on prometheus.yml, retargeted."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus not installed (apt-get install prometheus)")
    started = []

    def start(ns: str, target: str):
        config = (ROOT / "prometheus.yml").read_text()
        assert '"localhost:7070"' in config and "scrape_interval: 15s" in config
        config = config.replace('"localhost:7070"', f'"{target}"').replace("scrape_interval: 15s", "scrape_interval: 1s")
        (tmp_path / "prometheus.yml").write_text(config)
        port = free_port(ns)
        process = subprocess.Popen(["ip", "netns", "exec", ns, binary, f"--config.file={tmp_path}/prometheus.yml",
                                    f"--storage.tsdb.path={tmp_path}/data", f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        return process, port

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def test_prometheus_scrapes_rate_with_host_label(netns, exporter, prometheus):
    pair = veth_pair(netns(), netns())
    ns_a, _, _, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    running = exporter(ns_b)
    _, port = prometheus(ns_b, f"127.0.0.1:{running.port}")
    expression = f'rate(netio_network_receive_bytes_total{{device="{dev_b}"}}[5s])'
    deadline = time.monotonic() + 60
    result = []
    with in_netns(ns_a):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while time.monotonic() < deadline:
        for _ in range(50):
            sender.sendto(b"z" * 500, (ip_b, 9))
        try:
            result = prometheus_query(ns_b, port, expression)
        except OSError:  # Prometheus still starting
            result = []
        if result and float(result[0]["value"][1]) > 0:
            break
        time.sleep(0.5)
    sender.close()
    assert result, "no rate() result within 60 s"
    labels = result[0]["metric"]
    # prometheus.yml names its one target: the explicit label wins over the address
    assert labels["host"] == "localhost" and labels["device"] == dev_b and labels["job"] == "netio"
    assert float(result[0]["value"][1]) > 0
    up = prometheus_query(ns_b, port, 'netio_scrape_collector_success{collector="link"}')
    assert up and up[0]["value"][1] == "1"


def test_host_label_for_every_kind_of_target(netns, tmp_path):
    """prometheus.yml's netio job and prometheus-multi-host.yml's node job, on a real Prometheus: `host` is
    the address without its port, for names, IPv4, bracketed IPv6 and targets without a port (Prometheus adds
    the port after relabelling), and an explicit `host` label wins. Nothing listens: the targets' labels are
    what counts."""
    binary = shutil.which("prometheus")
    require(binary is not None and yaml is not None, "prometheus or PyYAML not installed")
    expected = {"web-1.example.net:7070": "web-1.example.net", "localhost": "localhost",
                "192.0.2.1:7070": "192.0.2.1", "[::1]:7070": "::1", "[2001:db8::1]": "2001:db8::1",
                "web-1.example.net:9100": "web-1.example.net", "198.51.100.7:7070": "edge-router"}
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    (netio,) = config["scrape_configs"]
    node = next(job for job in yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus-multi-host.yml")
                                              .read_text())["scrape_configs"] if job["job_name"] == "node")
    netio["static_configs"] = [{"targets": [t for t in expected if not t.endswith((":9100", "100.7:7070"))]},
                               {"targets": ["198.51.100.7:7070"], "labels": {"host": "edge-router"}}]
    node["static_configs"] = [{"targets": ["web-1.example.net:9100"]}]
    config.update(scrape_configs=[netio, node], rule_files=[])
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    ns = netns()
    port = free_port(ns)
    process = subprocess.Popen(["ip", "netns", "exec", ns, binary, f"--config.file={tmp_path}/prometheus.yml",
                                f"--storage.tsdb.path={tmp_path}/data", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 40
        found = {}
        while time.monotonic() < deadline and len(found) < len(expected):
            try:
                with in_netns(ns), urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
                    targets = json.load(r)["data"]["activeTargets"]
                found = {target["discoveredLabels"]["__address__"]: target["labels"].get("host") for target in targets}
            except OSError:  # still starting
                pass
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert found == expected


def test_prometheus_yml_is_valid():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", str(ROOT / "prometheus.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
