"""A fleet with the real parts (Debian's prometheus): an agent-mode Prometheus scrapes two exporters over
HTTPS with basic auth (deploy/prometheus/prometheus-agent.yml) and remote-writes into a central
Prometheus (prometheus-central.yml, --web.enable-remote-write-receiver); the dashboard's queries return
data there for both exporters, told apart by their `host` labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from tests.support import free_port, prometheus_query, require, terminate
from tests.support.dashboard import collectors_of, interpolate, load_dashboard, query_panels
from tests.support.web import LIGHT, WebExporter, make_pki

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


@pytest.fixture
def prometheus_binary():
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus not installed (apt-get install prometheus)")
    return binary


def test_shipped_configs_are_valid():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    for name, flags in (("prometheus-tls.yml", []), ("prometheus-central.yml", []),
                        ("prometheus-agent.yml", ["--syntax-only"])):  # promtool 2.42 has no agent mode
        result = subprocess.run([promtool, "check", "config", *flags, str(DEPLOY / name)], capture_output=True, text=True)
        assert result.returncode == 0, name + result.stdout + result.stderr
    tls = yaml.safe_load((DEPLOY / "prometheus-tls.yml").read_text())["scrape_configs"][0]
    agent = yaml.safe_load((DEPLOY / "prometheus-agent.yml").read_text())["scrape_configs"][0]
    for job in (tls, agent):
        assert job["scheme"] == "https" and job["basic_auth"]["password_file"] and job["tls_config"]["ca_file"]
        assert job["relabel_configs"][0]["target_label"] == "host"


def _start(binary: str, ns: str, directory: Path, config: dict, *flags: str) -> tuple[subprocess.Popen, int]:
    directory.mkdir()
    (directory / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    port = free_port(ns)
    process = subprocess.Popen(["ip", "netns", "exec", ns, binary, f"--config.file={directory}/prometheus.yml",
                                f"--web.listen-address=127.0.0.1:{port}", *flags],
                               stdout=subprocess.DEVNULL, stderr=open(directory / "log", "wb"))
    return process, port


def test_agent_remote_writes_two_hosts_into_the_central_prometheus(netns, tmp_path, prometheus_binary):
    ns = netns()
    pki = make_pki(tmp_path / "pki")
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(4)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
                          f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    password = tmp_path / "password"
    password.write_text("scrape-secret\n")
    exporters = [WebExporter(ns, web_config, True, *LIGHT) for _ in range(2)]
    # "127.0.0.1" and "localhost" (both in the certificate): two hosts, as the shipped relabelling derives them
    targets = {"127.0.0.1": f"127.0.0.1:{exporters[0].port}", "localhost": f"localhost:{exporters[1].port}"}

    central = yaml.safe_load((DEPLOY / "prometheus-central.yml").read_text())
    central["global"]["evaluation_interval"] = "1s"
    central["rule_files"] = [str(DEPLOY / "alerts.yml")]
    agent = yaml.safe_load((DEPLOY / "prometheus-agent.yml").read_text())
    agent["global"]["scrape_interval"] = "1s"
    (job,) = agent["scrape_configs"]
    job["static_configs"] = [{"targets": list(targets.values())}]
    job["basic_auth"]["password_file"] = str(password)
    job["tls_config"]["ca_file"] = str(pki / "ca.crt")
    processes = []
    try:
        process, central_port = _start(prometheus_binary, ns, tmp_path / "central", central,
                                       f"--storage.tsdb.path={tmp_path}/central/data", "--web.enable-remote-write-receiver")
        processes.append(process)
        (write,) = agent["remote_write"]
        write["url"] = f"http://127.0.0.1:{central_port}/api/v1/write"
        write["queue_config"]["batch_send_deadline"] = "1s"
        process, _ = _start(prometheus_binary, ns, tmp_path / "agent", agent, "--enable-feature=agent",
                            f"--storage.agent.path={tmp_path}/agent/data")
        processes.append(process)

        rate = 'rate(netio_network_receive_bytes_total{device="lo"}[5s]) > 0'
        deadline, hosts = time.monotonic() + 60, set()
        while time.monotonic() < deadline:
            try:
                hosts = {r["metric"]["host"] for r in prometheus_query(ns, central_port, rate)}
            except OSError:  # still starting
                pass
            if hosts == set(targets):
                break
            time.sleep(0.5)
        assert hosts == set(targets), f"hosts in the central Prometheus: {hosts}; agent log: " + \
            (tmp_path / "agent" / "log").read_text()[-2000:]
        up = prometheus_query(ns, central_port, 'up{job="netio"}')
        assert {(r["metric"]["host"], r["metric"]["site"], r["value"][1]) for r in up} == \
            {(host, "site-a", "1") for host in targets}
        time.sleep(2)  # a few more samples for every rate() window

        dashboard = load_dashboard()
        macros = {"__rate_interval": "5s", "__interval": "1s", "__interval_ms": "1000", "__range": "1m",
                  "__range_s": "60", "__range_ms": "60000"}
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        empty, asked = [], 0
        for host in targets:
            values = {"host": [host], "job": "netio", "device": "$__all",
                      "device_exclude": variables["device_exclude"]["query"]}
            for panel in query_panels(dashboard):
                for target in panel["targets"]:
                    if not collectors_of(target["expr"]) <= {"link", None}:
                        continue  # the exporters run the link collector only
                    asked += 1
                    # lo is all these exporters have: show it
                    expr = interpolate(target["expr"], dashboard, {**values, "device_exclude": "^$"}, macros)
                    if not prometheus_query(ns, central_port, expr):
                        empty.append((host, panel.get("title"), expr))
        assert asked >= 10 and not empty, empty
    finally:
        for process in reversed(processes):
            terminate(process)
        for exporter in exporters:
            exporter.stop()
