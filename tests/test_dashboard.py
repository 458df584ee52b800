"""The Grafana dashboard: its structure, and every panel query against a real Prometheus scraping two hosts.

Grafana cannot run here, so the live test does what Grafana would: it substitutes the dashboard's variables
and macros the way Grafana's Prometheus data source does, and asks a real Prometheus (Debian's package),
which scrapes two exporters in two network namespaces with traffic between them, for every panel query.
A panel may come back empty only if its collector is not exported by that exporter (absent from
``netio_scrape_collector_success``, or reporting 0 there): as the collectors land, their panels must show data.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import free_port, in_netns, prometheus_api, prometheus_query, require, run, terminate, veth_pair
from tests.support.contract import COLLECTOR_OF, CONTRACT_LABELS, label_names, metric_names
from tests.support.dashboard import (all_panels, collectors_of, interpolate, load_dashboard,
                                     query_panels, strings, variables_used)

try:
    import yaml
except ImportError:  # only the tests use PyYAML (the test extra)
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
MULTI_HOST_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus-multi-host.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


GRAFANA_MACROS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                  "__all", "__name", "__org", "__user", "__dashboard", "__from", "__to", "__timeFilter"}
EXCLUDE_DEFAULT_HIDES = ("lo", "veth0", "veth1a2b3c")
EXCLUDE_DEFAULT_SHOWS = ("eth0", "eth1", "enp3s0", "wlan0", "br0", "bond0")


# ------------------------------------------------------------------------------------------ helpers

# ------------------------------------------------------------------------------------------ structure

def test_dashboard_is_valid_json_for_grafana_10_or_newer():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 38  # Grafana 10.0 writes 38
    assert dashboard["title"] and dashboard["uid"]
    assert "__inputs" not in dashboard  # importable as is: the data source comes from a variable


def test_panel_ids_are_unique_and_every_target_has_an_expression():
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(ids)
    for panel in query_panels(dashboard):
        assert panel.get("targets"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']} {target['refId']}: no expression"


def test_every_variable_used_is_defined():
    dashboard = load_dashboard()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = set().union(*(variables_used(text) for text in strings(dashboard["panels"])),
                       *(variables_used(text) for text in strings(dashboard["templating"])))
    assert used - defined - GRAFANA_MACROS == set()
    assert {"datasource", "job", "host", "device", "device_exclude"} <= used


def test_no_fixed_datasource_uid():
    dashboard = load_dashboard()

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    assert isinstance(value, dict), f"{where}: datasource by name {value!r}"
                    assert value.get("uid") in ("${datasource}", "$datasource"), f"{where}: fixed uid {value!r}"
                    assert value.get("type") == "prometheus", where
                else:
                    walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk({key: value for key, value in dashboard.items() if key != "templating"}, "")
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            walk({"datasource": variable["datasource"]}, variable["name"])


def test_variables_key_on_host_and_exclude_loopback_and_veth_by_default():
    variables = {variable["name"]: variable for variable in load_dashboard()["templating"]["list"]}
    job = variables["job"]
    assert job["query"]["query"] == job["definition"] == "label_values(netio_exporter_build_info, job)"
    assert not job["multi"] and not job["includeAll"]
    # Hosts from up{}, so a host whose exporter is down stays selectable (and in "All").
    host = variables["host"]
    assert host["query"]["query"] == host["definition"] == 'label_values(up{job="$job"}, host)'
    assert host["multi"] and host["includeAll"]
    exclude = variables["device_exclude"]
    assert exclude["type"] == "textbox" and exclude["current"]["value"] == exclude["query"]
    for name in EXCLUDE_DEFAULT_HIDES:
        assert re.fullmatch(exclude["query"], name), name
    for name in EXCLUDE_DEFAULT_SHOWS:
        assert not re.fullmatch(exclude["query"], name), name


def test_every_panel_is_described_keyed_on_host_and_within_the_metric_contract():
    dashboard = load_dashboard()
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            assert panel.get("repeat") == "host" or not panel.get("collapsed"), panel["title"]
            continue
        exprs = [target["expr"] for target in panel["targets"]]
        for expr in exprs:
            names = metric_names(expr)
            assert names and names <= set(COLLECTOR_OF), f"{panel['title']}: {names - set(COLLECTOR_OF)}"
            assert label_names(expr) <= CONTRACT_LABELS, f"{panel['title']}: {label_names(expr) - CONTRACT_LABELS}"
            # every selector is restricted to the selected hosts
            for selector in re.findall(r"\b(?:netio|process)_[a-z0-9_]+(\{[^}]*\})?", expr):
                assert 'host=~"$host"' in selector, f"{panel['title']}: {expr}"
            if any(COLLECTOR_OF[name] == "link" and name != "netio_network_info" for name in names):
                assert 'device=~"$device", device!~"$device_exclude"' in expr, f"{panel['title']}: {expr}"
        for target in panel["targets"]:
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend_labels <= CONTRACT_LABELS, f"{panel['title']}: {legend_labels - CONTRACT_LABELS}"
        description = panel.get("description", "")
        assert len(description) > 40, f"{panel['title']}: describe what it shows"
        for name in set().union(*(metric_names(expr) for expr in exprs)):
            assert name in description, f"{panel['title']}: description does not name {name}"


def test_rows_repeat_per_host_and_cover_every_collector():
    dashboard = load_dashboard()
    repeated = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row" and panel.get("repeat")]
    assert all("$host" in title for title in repeated) and len(repeated) == 7, repeated
    covered = set()
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            covered |= collectors_of(target["expr"])
    assert covered == {"link", "tcp", "netstack", "mac", "softnet", "netstat", "drops", "netns", None}


# Issue 17 item 5 and issue 18 item 4: what the Kernel drops row shows, query by query.
KERNEL_DROPS = {
    "Softnet backlog drops per CPU": ['rate(netio_softnet_dropped_total{host=~"$host"}[$__rate_interval])'],
    "Softnet time squeezes per CPU": ['rate(netio_softnet_time_squeeze_total{host=~"$host"}[$__rate_interval])'],
    "Listen queue overflows":
        ['rate(netio_netstat_tcpext_listenoverflows_total{host=~"$host", netns=""}[$__rate_interval])'],
    "UDP receive buffer errors":
        ['rate(netio_netstat_udp_rcvbuferrors_total{host=~"$host", netns=""}[$__rate_interval])',
         'rate(netio_netstat_udp6_rcvbuferrors_total{host=~"$host", netns=""}[$__rate_interval])'],
    "TCP retransmits": ['rate(netio_netstat_tcp_retranssegs_total{host=~"$host", netns=""}[$__rate_interval])'],
    "Drops by reason": ['topk(10, sum by (host, reason) (rate(netio_drops_total{host=~"$host"}[$__rate_interval])))'],
    "Drops by reason and device":
        ['topk(10, sum by (host, device, reason) (rate(netio_drops_total{host=~"$host"}[$__rate_interval])))'],
}
# The Containers row: other network namespaces (netns!=""), ranked once over the range.
CONTAINERS = {"Top namespaces by throughput": ("netio_network_receive_bytes_total", "netio_network_transmit_bytes_total"),
              "Top namespaces by TCP retransmits": ("netio_netstat_tcp_retranssegs_total",),
              "Top namespaces by connections": ("netio_netstat_tcp_currestab",)}


def _row(dashboard: dict, title: str) -> dict:
    (row,) = [panel for panel in dashboard["panels"] if panel["type"] == "row" and panel["title"] == title]
    return row


def test_kernel_drops_row():
    row = _row(load_dashboard(), "Kernel drops: $host")
    assert row["collapsed"] and row["repeat"] == "host"
    assert {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in row["panels"]} == KERNEL_DROPS


def test_containers_row_ranks_other_namespaces():
    row = _row(load_dashboard(), "Containers: $host")
    assert row["collapsed"] and row["repeat"] == "host"
    assert {panel["title"] for panel in row["panels"]} == set(CONTAINERS)
    for panel in row["panels"]:
        exprs = [target["expr"] for target in panel["targets"]]
        assert [name for expr in exprs for name in sorted(metric_names(expr))] == list(CONTAINERS[panel["title"]])
        for expr in exprs:
            for selector in re.findall(r"\bnetio_[a-z0-9_]+(\{[^}]*\})", expr):
                assert 'netns!=""' in selector, (panel["title"], expr)
            assert expr.count("by (host, netns)") == 2 and "and on (host, netns)" in expr, expr
        assert all("{{netns}}" in target["legendFormat"] for target in panel["targets"]), panel["title"]


def test_host_panels_select_the_exporters_own_namespace():
    """With --collector.netns the link, tcp and netstat families also carry every other namespace (a ``netns``
    label); a host panel that did not say ``netns=""`` would add the containers' interfaces to the host's."""
    dashboard = load_dashboard()
    containers = {panel["id"] for panel in _row(dashboard, "Containers: $host")["panels"]}
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    exprs = [(panel["title"], target["expr"]) for panel in query_panels(dashboard) if panel["id"] not in containers
             for target in panel["targets"]] + [("$device", variables["device"]["query"]["query"])]
    checked = 0
    for title, expr in exprs:
        for name, selector in re.findall(r"\b(netio_[a-z0-9_]+)(\{[^}]*\})?", expr):
            if COLLECTOR_OF.get(name) in ("link", "tcp", "netstat"):
                assert 'netns=""' in selector, f"{title}: {name}{selector}"
                checked += 1
    assert checked > 20, checked


def test_per_host_rows_are_collapsed_so_all_hosts_cost_few_queries():
    """Grafana runs the queries of a collapsed row's panels only when it is opened: with "All" over 50 hosts
    the dashboard opens with the overview's queries, not 50 times every row's (Node Exporter Full's way)."""
    dashboard = load_dashboard()
    hosts = 50
    at_load = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            assert not panel.get("repeat") or panel.get("collapsed"), f"{panel['title']}: repeated and open"
            if panel.get("repeat") and panel.get("collapsed"):
                assert panel["panels"], panel["title"]  # a collapsed row holds its panels
            continue
        at_load += len(panel["targets"])  # top level: the overview, one query for all hosts
    assert at_load <= 10, at_load
    opened_one_row = max(sum(len(p["targets"]) for p in row.get("panels", []))
                         for row in dashboard["panels"] if row["type"] == "row")
    assert at_load + opened_one_row < hosts  # opening a host's row adds that row's queries only


def _top_level(expr: str, separator: str) -> list[str]:
    """``expr`` split at ``separator`` (a regex) outside parentheses, brackets and braces."""
    parts, depth, start = [], 0, 0
    index = 0
    while index < len(expr):
        char = expr[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            match = re.match(separator, expr[index:])
            if match:
                parts.append(expr[start:index])
                index += match.end()
                start = index
                continue
        index += 1
    return parts + [expr[start:]]


def _operand_after_division(right: str) -> str:
    """The denominator: what follows ``/`` and its vector-matching modifiers."""
    right = re.sub(r"^\s*(?:(?:on|ignoring|group_left|group_right)\s*(?:\([^)]*\))?\s*)*", "", right)
    if right.startswith("("):
        depth = 0
        for index, char in enumerate(right):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                return right[:index + 1]
    return right


def test_every_ratio_is_guarded_against_division_by_zero():
    """``x / (y > 0)``: an idle host shows no value instead of NaN (``count`` is never 0). Quantiles of an
    empty gauge histogram are NaN too: they carry ``and on () (sum(..._gcount) > 0)``."""
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            for right in _top_level(expr, r"/")[1:]:
                denominator = _operand_after_division(right)
                assert re.fullmatch(r"\((?s:.*)>\s*0\)", denominator) or denominator.startswith("count"), \
                    f"{panel['title']} {target['refId']}: unguarded denominator {denominator!r}"
            if "histogram_quantile" in expr:
                assert re.search(r"and on \(\) \(sum\(netio_tcp_rtt_seconds_gcount\{[^}]*\}\) > 0\)", expr), expr
    # the mean RTT leans to loopback's microseconds: the median and p99 beside it
    rtt = [target["expr"] for target in _panel(load_dashboard(), "RTT: mean, median, p99")["targets"]]
    for quantile in ("0.5", "0.99"):
        assert any(expr.startswith(f"histogram_quantile({quantile}, sum by (le) (netio_tcp_rtt_seconds_bucket{{")
                   for expr in rtt), rtt


# The kind of value a query returns, and the Grafana units that show it.
UNITS = {"bits/s": {"bps"}, "bytes/s": {"Bps", "binBps"}, "per second": {"pps", "ops", "cps", "reqps"},
         "ratio": {"percentunit"}, "seconds": {"s"}, "bytes": {"bytes", "decbytes"}, "count": {"short", "none"}}


def _base(name: str) -> str:
    if name.endswith("_gcount"):
        return "count"
    return "bytes" if "_bytes" in name else "seconds" if "_seconds" in name else "count"


def value_kind(expr: str) -> str:
    expr = _top_level(expr, r"\s(?:and|unless)\s")[0]  # a filter does not change what is shown
    legs = _top_level(expr, r"\sor\s")
    if len(legs) > 1:
        kinds = {value_kind(leg) for leg in legs}
        assert len(kinds) == 1, (expr, kinds)
        return kinds.pop()
    parts = _top_level(expr, r"/")
    if len(parts) > 1:
        numerator, denominator = value_kind(parts[0]), value_kind(_operand_after_division(parts[1]))
        if numerator == denominator:
            return "ratio"
        assert denominator == "count", (expr, numerator, denominator)
        return numerator
    if expr.lstrip().startswith("count"):
        return "count"
    bases = {_base(name) for name in metric_names(expr)}
    assert len(bases) == 1, (expr, bases)
    base = bases.pop()
    if re.search(r"\b(?:rate|irate|increase)\(", expr):
        return {"bytes": "bits/s" if re.search(r"\*\s*8\b", expr) else "bytes/s", "seconds": "ratio",
                "count": "per second"}[base]
    return base


def test_no_rate_on_gauges():
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            for argument in re.findall(r"\b(?:rate|irate|increase)\(([^\[]*)\[", target["expr"]):
                for name in metric_names(argument):
                    assert name.endswith("_total"), f"{panel['title']}: rate of the gauge {name}"


def test_one_unit_per_axis():
    """Every time series of a panel is shown in the unit its query returns: the panel's unit, or an
    override for its query (which Grafana then gives its own axis)."""
    for panel in query_panels(load_dashboard()):
        if panel["type"] != "timeseries":
            continue
        overrides = {override["matcher"]["options"]: prop["value"] for override in panel["fieldConfig"]["overrides"]
                     if override["matcher"]["id"] == "byFrameRefID"
                     for prop in override["properties"] if prop["id"] == "unit"}
        for target in panel["targets"]:
            unit = overrides.get(target["refId"], panel["fieldConfig"]["defaults"].get("unit"))
            kind = value_kind(target["expr"])
            assert unit in UNITS[kind], f"{panel['title']} {target['refId']}: {kind} shown as {unit!r}"


def test_value_kinds():
    assert value_kind('rate(netio_network_receive_bytes_total{a="b"}[1m]) * 8') == "bits/s"
    assert value_kind("sum(rate(netio_tcp_retransmitted_bytes_total[1m])) / (sum(rate(netio_tcp_sent_bytes_total[1m])) > 0)") == "ratio"
    assert value_kind("sum(netio_tcp_rtt_seconds_gsum) / (sum(netio_tcp_rtt_seconds_gcount) > 0)") == "seconds"
    assert value_kind("rate(process_cpu_seconds_total[1m]) and on (instance) netio_exporter_build_info") == "ratio"
    assert value_kind("sum(rate(netio_mac_untracked_packets_total[1m]))") == "per second"


def test_top_ten_panels_choose_their_ten_once_over_the_range():
    """topk per step shows a different ten at each step (up to hundreds of series over the range): the ten
    are chosen once, over $__range at its end, and the per-step series joined to them."""
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            if "topk" not in expr:
                continue
            if metric_names(expr) == {"netio_drops_total"}:
                continue  # drop reasons: the kernel's enum, a handful at once; ten per step stay few
            match = re.search(r"topk\(10, (?:sum|max) by \((host, [\w, ]+)\) \((?:increase|max_over_time)\(\w+\{[^}]*\}"
                              r"\[\$__range\]", expr)
            assert match and match.group(1) in ("host, device, mac", "host, netns"), expr
            if panel["type"] == "timeseries":
                assert "[$__range] @ end())" in expr and f"and on ({match.group(1)})" in expr, expr
                if "mac" in match.group(1):
                    assert "{{device}}" in target["legendFormat"], panel["title"]


def test_every_expression_is_valid_promql(tmp_path):
    """promtool parses each substituted expression as a recording rule (no Prometheus needed)."""
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    dashboard = load_dashboard()
    macros = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}
    values = {"job": "netio", "host": ["a.example", "10.0.0.1"], "device": "$__all", "device_exclude": "lo|veth.*"}
    rules = [{"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
              "expr": interpolate(target["expr"], dashboard, values, macros)}
             for panel in query_panels(dashboard) for target in panel["targets"]]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_interpolation_follows_grafana():
    dashboard = {"templating": {"list": [
        {"name": "host", "multi": True, "includeAll": True},
        {"name": "device", "multi": True, "includeAll": True, "allValue": ".*"},
        {"name": "device_exclude", "type": "textbox"}]}}
    expr = 'x{host=~"$host", device=~"${device}", device!~"$device_exclude"}[$__rate_interval]'
    assert interpolate(expr, dashboard, {"host": ["10.0.0.1"], "device": "$__all", "device_exclude": "lo|veth.*"},
                       {"__rate_interval": "5s"}) == \
        'x{host=~"10\\\\.0\\\\.0\\\\.1", device=~".*", device!~"lo|veth.*"}[5s]'
    assert interpolate("$host", dashboard, {"host": ["a", "b"]}, {}) == "(a|b)"


# ------------------------------------------------------------------------------------------ live

class _Traffic:
    """UDP datagrams and a TCP stream from namespace A to B over the veth pair until stopped."""

    def __init__(self, ns_a: str, ns_b: str, ip_b: str):
        with in_netns(ns_b):
            self._listener = socket.create_server((ip_b, 0))
            port = self._listener.getsockname()[1]
        with in_netns(ns_a):
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._client = socket.create_connection((ip_b, port), timeout=5)
        self._server, _ = self._listener.accept()
        self._server.settimeout(0.05)
        self._ip_b = ip_b
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunk = b"n" * 65536
        while not self._stop.is_set():
            for _ in range(20):
                self._udp.sendto(b"u" * 500, (self._ip_b, 9))
            self._client.sendall(chunk)
            received = 0
            while received < len(chunk):
                try:
                    data = self._server.recv(len(chunk) - received)
                except socket.timeout:
                    break
                if not data:
                    return
                received += len(data)
            self._server.sendall(b"ack" * 100)
            self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in (self._udp, self._client, self._server, self._listener):
            sock.close()


class _KernelDrops:
    """In each namespace, until stopped: a listener (backlog 0, never accepting) that new connections
    overflow, and UDP sockets (IPv4 and IPv6, the smallest receive buffer, never read) that datagrams
    overflow: ListenOverflows, Udp and Udp6 RcvbufErrors and the drops collector's reasons move."""

    def __init__(self, namespaces):
        self._namespaces = []
        for ns in namespaces:
            # IPv6 on loopback only (veth_pair turns it off everywhere else, so the veth stays quiet)
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0")
            with in_netns(ns):
                listener = socket.create_server(("127.0.0.1", 0), backlog=0)
                full = []
                for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                    receiver = socket.socket(family, socket.SOCK_DGRAM)
                    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
                    receiver.bind((address, 0))
                    full.append((receiver, socket.socket(family, socket.SOCK_DGRAM)))
            self._namespaces.append((ns, listener, full, []))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for ns, listener, full, connecting in self._namespaces:
                for receiver, sender in full:
                    for _ in range(5):
                        sender.sendto(b"r" * 1000, receiver.getsockname())
                with in_netns(ns):  # this thread only; a socket stays in the namespace it was made in
                    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                client.setblocking(False)
                client.connect_ex(listener.getsockname())
                connecting.append(client)
                if len(connecting) > 20:
                    connecting.pop(0).close()
            self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for _, listener, full, connecting in self._namespaces:
            for sock in (listener, *connecting, *(sock for pair in full for sock in pair)):
                sock.close()


@pytest.fixture
def prometheus_process(tmp_path):
    """Factory: ``start(ns, config)`` runs Prometheus in ``ns`` on ``config`` (a dict); ended at teardown."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus not installed (apt-get install prometheus)")
    started = []

    def start(ns: str, config: dict) -> int:
        (tmp_path / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
        port = free_port(ns)
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, binary, f"--config.file={tmp_path}/prometheus.yml",
             f"--storage.tsdb.path={tmp_path}/data", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        return port

    yield start
    for process in started:
        terminate(process)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except OSError:  # Prometheus still starting
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.5)


def test_every_panel_returns_data_for_two_hosts(netns, exporter, prometheus_process, tmp_path):
    """Two exporters, one Prometheus (in B) reaching A over the veth: hosts "netio-a" (file_sd label) and
    "127.0.0.1" (from the address), as prometheus-multi-host.yml derives them, and a third target where
    nothing listens ("netio-down"). Every panel query of the dashboard, for each live host, is accepted and
    returns data unless its collector is not exported there. Exporter B runs with the netstack syscall entries
    (A with the default: none), so the netstack panels are checked in both cases, and with --collector.netns
    for A's namespace, whose veth carries the traffic: B's Containers row shows it, and B's host panels keep
    B's own figures. Both namespaces overflow a listen queue and UDP receive buffers and send to a closed
    port, so the Kernel drops row moves (the drops collector's eBPF must run: with CI set it may not skip).
    The tables are merged as Grafana's merge transformation does: one Interfaces row per device, and an
    Exporters row for the target that is down."""
    require(yaml is not None, "PyYAML not installed (it is in the test extra: pip install -e '.[test]')")
    pair = veth_pair(netns(), netns())
    ns_a, dev_a, ip_a, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    assert dev_a == dev_b
    exporter_a = exporter(ns_a, "--collector.mac.device", dev_a, address=ip_a)
    exporter_b = exporter(ns_b, "--collector.mac.device", dev_a, "--collector.netstack.syscalls",
                          "--collector.netns", "--collector.netns.include", re.escape(ns_a))
    hosts = {"netio-a": ns_a, "127.0.0.1": ns_b}

    targets_file = tmp_path / "netio-targets.json"
    targets_file.write_text(json.dumps([
        {"targets": [f"{ip_a}:{exporter_a.port}"], "labels": {"host": "netio-a"}},
        {"targets": [f"127.0.0.1:{free_port(ns_b)}"], "labels": {"host": "netio-down"}}]))
    config = yaml.safe_load(MULTI_HOST_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "netio")
    config["scrape_configs"] = [job]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_b.port}"]}]
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    traffic = _Traffic(ns_a, ns_b, ip_b)
    drops = _KernelDrops([ns_a, ns_b])
    try:
        port = prometheus_process(ns_b, config)
        rate = f'rate(netio_network_receive_bytes_total{{device="{dev_a}"}}[5s]) > 0'
        _wait_for(lambda: {r["metric"]["host"] for r in prometheus_query(ns_b, port, rate)} == set(hosts) | {"127.0.0.1"}
                  and len(prometheus_query(ns_b, port, rate)) == 3, 40,
                  "non-zero receive rate from both hosts and A's namespace seen from B")
        time.sleep(2)  # a few more scrapes for every rate() window
        dashboard = load_dashboard()
        report = _run_every_panel(dashboard, ns_b, port, hosts, dev_a)
        interfaces = {host: _table(dashboard, "Interfaces", ns_b, port, [host]) for host in hosts}
        exporters = _table(dashboard, "Exporters", ns_b, port, [*hosts, "netio-down"])
        entries = {host: _answer(dashboard, "Network stack invocations by entry", ns_b, port, [host])
                   for host in hosts}
        kernel_drops = {(host, panel["title"], target["refId"]): prometheus_query(ns_b, port, interpolate(
                            target["expr"], dashboard, _selection(dashboard, [host]), LIVE_MACROS))
                        for host in hosts for panel in _row(dashboard, "Kernel drops: $host")["panels"]
                        for target in panel["targets"]}
        at = time.time()
        own = _own_namespace_figures(dashboard, ns_b, port, "127.0.0.1", at)
        containers = {target["refId"]: prometheus_query(ns_b, port, interpolate(
                          target["expr"], dashboard, _selection(dashboard, ["127.0.0.1"]), LIVE_MACROS))
                      for target in _panel(dashboard, "Top namespaces by throughput")["targets"]}
        rules = prometheus_api(ns_b, port, "rules")["data"]["groups"]
    finally:
        drops.close()
        traffic.close()

    print("\n" + "\n".join(f"{status:<15} {host:<10} {title} [{ref}]{': ' + reason if reason else ''}"
                           for title, ref, host, status, reason in report))
    failures = [line for line in report if line[3] in ("EMPTY", "REFUSED", "NaN")]
    assert not failures, "\n".join(map(str, failures))
    # only A's Containers row is empty (no --collector.netns there); B's shows A's namespace, with traffic
    empty = {(title, host) for title, _, host, status, _ in report if status == "expected-empty"}
    assert empty == {(title, "netio-a") for title in CONTAINERS}, empty
    for ref, answer in containers.items():
        assert [r["metric"]["netns"] for r in answer] == [ns_a] and float(answer[0]["value"][1]) > 0, (ref, answer)
    alert_rules = [rule for group in rules for rule in group["rules"]]
    expected = sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    assert len(alert_rules) == expected and all(rule["health"] in ("ok", "unknown") for rule in alert_rules), \
        alert_rules

    for (host, title, ref), answer in kernel_drops.items():
        assert answer, (host, title, ref)
        if title in ("Listen queue overflows", "UDP receive buffer errors", "Drops by reason"):
            assert max(float(r["value"][1]) for r in answer) > 0, (host, title, ref, answer)
        if title.startswith("Drops by reason"):
            assert "no_socket" in {r["metric"]["reason"] for r in answer}, (host, title, answer)
    for host, rows in interfaces.items():
        devices = [row["device"] for row in rows]
        assert len(devices) == len(set(devices)) and dev_a in devices, (host, rows)
        for row in rows:  # every column filled on the one row
            assert {"operstate", "address", "kind", "Value #B", "Value #C"} <= set(row), (host, row)
    by_host = {row["host"]: row for row in exporters}
    assert sorted(by_host) == sorted([*hosts, "netio-down"]) and len(exporters) == 3, exporters
    assert by_host["netio-down"]["Value #A"] == 0 and "Value #C" not in by_host["netio-down"]
    for host in hosts:
        row = by_host[host]
        assert row["Value #A"] == 1 and row["version"] and 0 < row["Value #C"] <= row["Value #D"], row
    for host, answer in entries.items():
        found = {r["metric"]["entry"] for r in answer}
        assert {"net_rx_softirq", "net_tx_softirq"} <= found, (host, found)
        # the syscall entries only where --collector.netstack.syscalls is given
        assert bool(found & {"tx_syscall", "rx_syscall"}) == (host == "127.0.0.1"), (host, found)
    assert own["mixed"], "the test's namespace series would not have mixed in: the check below proves nothing"
    for title, (answer, without_netns) in own["panels"].items():
        assert not any("netns" in r["metric"] for r in answer), (title, answer)
    (total,), per_device = own["throughput"]
    assert float(total["value"][1]) == pytest.approx(sum(float(r["value"][1]) for r in per_device)), own["throughput"]


def _own_namespace_figures(dashboard: dict, ns: str, port: int, host: str, at: float) -> dict:
    """Every host panel of ``host`` (not the Containers row) at one time, as the dashboard asks and as it
    would without its ``netns=""`` matchers; whether the latter differs anywhere (namespace series would mix
    in); and the host's receive throughput beside the sum of its per-device series."""
    containers = {panel["id"] for panel in _row(dashboard, "Containers: $host")["panels"]}
    values = _selection(dashboard, [host])

    def ask(expr: str) -> list:
        answer = prometheus_api(ns, port, "query", query=interpolate(expr, dashboard, values, LIVE_MACROS), time=at)
        assert answer["status"] == "success", (expr, answer)
        return sorted(answer["data"]["result"], key=lambda r: sorted(r["metric"].items()))

    panels, mixed = {}, False
    for panel in query_panels(dashboard):
        if panel["id"] in containers:
            continue
        for target in panel["targets"]:
            if 'netns=""' not in target["expr"]:
                continue
            answer, without = ask(target["expr"]), ask(target["expr"].replace(', netns=""', ""))
            panels[f"{panel['title']} [{target['refId']}]"] = answer, without
            mixed |= answer != without
    throughput = (ask(_panel(dashboard, "Throughput by host")["targets"][0]["expr"]),
                  ask(_panel(dashboard, "Throughput per device")["targets"][0]["expr"]))
    return {"panels": panels, "mixed": mixed, "throughput": throughput}


LIVE_MACROS = {"__rate_interval": "5s", "__interval": "1s", "__interval_ms": "1000", "__range": "1m",
               "__range_s": "60", "__range_ms": "60000"}


def _selection(dashboard: dict, hosts: list[str]) -> dict:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    return {"job": "netio", "host": hosts, "device": "$__all", "device_exclude": variables["device_exclude"]["query"]}


def _panel(dashboard: dict, title: str) -> dict:
    (panel,) = [panel for panel in query_panels(dashboard) if panel["title"] == title]
    return panel


def _answer(dashboard: dict, title: str, ns: str, port: int, hosts: list[str]) -> list:
    (target,) = _panel(dashboard, title)["targets"]
    return prometheus_query(ns, port, interpolate(target["expr"], dashboard, _selection(dashboard, hosts), LIVE_MACROS))


def _table(dashboard: dict, title: str, ns: str, port: int, hosts: list[str]) -> list[dict]:
    """The rows a table panel shows before its organize step: every target an instant query at one time,
    one frame per target as Grafana's Prometheus data source builds it, then the panel's merge."""
    panel = _panel(dashboard, title)
    at = time.time()
    frames = []
    for target in panel["targets"]:
        expr = interpolate(target["expr"], dashboard, _selection(dashboard, hosts), LIVE_MACROS)
        answer = prometheus_api(ns, port, "query", query=expr, time=at)
        assert answer["status"] == "success", answer
        frames.append(grafana_table_frame(answer["data"]["result"], target["refId"], len(panel["targets"])))
    assert [step["id"] for step in panel["transformations"]][:1] == (["merge"] if len(frames) > 1 else ["organize"])
    return grafana_merge(frames) if len(frames) > 1 else frames[0][1]


def grafana_table_frame(result: list, ref_id: str, targets: int) -> tuple[list[str], list[dict]]:
    """Grafana's table frame of an instant query: Time, one field per label (the union over the series,
    empty where a series lacks it), and the value as "Value", or "Value #<refId>" when a panel has several."""
    if not result:
        return [], []
    labels = sorted(set().union(*(series["metric"] for series in result)))
    value = f"Value #{ref_id}" if targets > 1 else "Value"
    rows = [{"Time": series["value"][0], **{label: series["metric"].get(label, "") for label in labels},
             value: float(series["value"][1])} for series in result]
    return ["Time", *labels, value], rows


def grafana_merge(frames: list[tuple[list[str], list[dict]]]) -> list[dict]:
    """Grafana's merge transformation (packages/grafana-data/.../transformers/merge.ts): the fields present
    in every frame are the key; a row joins an earlier row of the same key unless a field they share differs."""
    frames = [frame for frame in frames if frame[0]]
    key_fields = [name for name in frames[-1][0] if all(name in fields for fields, _ in frames)]
    merged: dict[tuple, list[dict]] = {}
    order: list[dict] = []
    for _, rows in frames:
        for row in rows:
            key = tuple(row[name] for name in key_fields)
            for existing in merged.get(key, []):
                if all(existing.get(name) in (None, row[name]) for name in row):
                    existing.update(row)
                    break
            else:
                merged.setdefault(key, []).append(dict(row))
                order.append(merged[key][-1])
    return order


def test_grafana_merge_joins_on_the_fields_every_frame_has():
    a = grafana_table_frame([{"metric": {"__name__": "x", "device": "eth0"}, "value": [1, "1"]},
                             {"metric": {"__name__": "x", "device": "eth1"}, "value": [1, "1"]}], "A", 2)
    b = grafana_table_frame([{"metric": {"__name__": "y", "device": "eth0"}, "value": [1, "1500"]}], "B", 2)
    assert len(grafana_merge([a, b])) == 3  # __name__ is a key field that differs: no row merges
    b = grafana_table_frame([{"metric": {"device": "eth0"}, "value": [1, "1500"]}], "B", 2)
    a = grafana_table_frame([{"metric": {"device": "eth0", "operstate": "up"}, "value": [1, "1"]}], "A", 2)
    assert grafana_merge([a, b]) == [{"Time": 1, "device": "eth0", "operstate": "up", "Value #A": 1.0,
                                      "Value #B": 1500.0}]


def _run_every_panel(dashboard: dict, ns: str, port: int, hosts: dict, device: str) -> list[tuple]:
    """(panel title, refId, host, status, reason) for every panel target and host."""
    macros = LIVE_MACROS
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    host_query = interpolate(_label_values(variables["host"]), dashboard, _selection(dashboard, []), macros)
    assert set(hosts) <= {r["metric"]["host"] for r in prometheus_query(ns, port, host_query)}
    report = []
    for host in hosts:
        values = _selection(dashboard, [host])
        device_query = interpolate(_label_values(variables["device"]), dashboard, values, macros)
        assert device in {r["metric"]["device"] for r in prometheus_query(ns, port, device_query)}
        success = {r["metric"]["collector"]: r["value"][1]
                   for r in prometheus_query(ns, port, f'netio_scrape_collector_success{{host="{host}"}}')}
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                missing = sorted(c for c in collectors_of(target["expr"]) if c is not None and success.get(c) != "1")
                reason = "; ".join(
                    f"collector {c} " + ("not in this build (no netio_scrape_collector_success series)"
                                         if c not in success else "reports netio_scrape_collector_success 0")
                    for c in missing)
                answer = prometheus_api(ns, port, "query", query=interpolate(target["expr"], dashboard, values, macros))
                if answer["status"] != "success":
                    status, reason = "REFUSED", answer.get("error", "")
                elif any(r["value"][1] == "NaN" for r in answer["data"]["result"]):
                    status = "NaN"
                elif answer["data"]["result"]:
                    status = f"{len(answer['data']['result'])} series"
                    if target["expr"].startswith("rate(netio_network_receive_bytes_total"):
                        assert any(float(r["value"][1]) > 0 for r in answer["data"]["result"]
                                   if r["metric"].get("device") == device), answer
                else:
                    status = "expected-empty" if missing else "EMPTY"
                report.append((panel["title"], target["refId"], host, status, reason))
    # The overview row (before the per-host rows) with "All" hosts selected: one answer naming both hosts.
    values = _selection(dashboard, list(hosts))
    for panel in _overview_panels(dashboard):
        for target in panel["targets"]:
            answer = prometheus_api(ns, port, "query", query=interpolate(target["expr"], dashboard, values, macros))
            if answer["status"] != "success":
                status, reason = "REFUSED", answer.get("error", "")
            else:
                found = {r["metric"].get("host") for r in answer["data"]["result"]}
                status, reason = ("both hosts", "") if found == set(hosts) else ("EMPTY", f"hosts {sorted(found)}")
            report.append((panel["title"], target["refId"], "All", status, reason))
    return report


def _overview_panels(dashboard: dict) -> list[dict]:
    first_repeated = next(index for index, panel in enumerate(dashboard["panels"]) if panel.get("repeat"))
    return [panel for panel in dashboard["panels"][:first_repeated] if panel["type"] != "row"]


def _label_values(variable: dict) -> str:
    """``label_values(selector, label)`` as an instant query returning one series per value."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
    return f"group by ({match.group(2)}) ({match.group(1)})"


# ------------------------------------------------------------------------------------------ synthetic hour

SYNTHETIC_START = 1_700_000_000  # any past hour: Prometheus reads the backfilled block as it is
SYNTHETIC_STEP = 15
SYNTHETIC_POINTS = 240  # one hour
CLIENTS = [f"02:00:00:00:00:{i:02x}" for i in range(12)]
DEPARTED = CLIENTS[0]  # the heaviest client, gone (from the counters and netio_mac_info) after half an hour


def _client_rate(index: int, t: int) -> float | None:
    """Bytes/s of client ``index`` at second ``t``: clients 0-5 heavy in the first half hour, 6-11 in the
    second, so the ten largest at each step are not the ten largest over the hour."""
    first_half = t < SYNTHETIC_POINTS * SYNTHETIC_STEP // 2
    if index == 0:
        return 2e6 if first_half else None
    heavy = (index < 6) == first_half
    return 1e6 if heavy else 1000 + index


def _synthetic_openmetrics() -> str:
    """One hour of series for the cases a live exporter cannot show on demand: twelve clients on a gateway
    ("h"), a WireGuard link whose operstate is unknown, and a host that sends no TCP and samples no NET_RX
    ("idle"), whose ratios are 0/0."""
    times = [SYNTHETIC_START + i * SYNTHETIC_STEP for i in range(SYNTHETIC_POINTS)]
    families: dict[str, tuple[str, list[str]]] = {}

    def add(family: str, kind: str, sample: str, labels: dict, values: list) -> None:
        text = ",".join(f'{key}="{value}"' for key, value in {"job": "netio", **labels}.items())
        lines = families.setdefault(family, (kind, []))[1]
        lines.extend(f"{sample}{{{text}}} {value} {t}" for t, value in zip(times, values) if value is not None)

    for direction in ("download", "upload"):
        for index, mac in enumerate(CLIENTS):
            total, values = 0.0, []
            for t in times:
                rate = _client_rate(index, t - SYNTHETIC_START)
                total += (rate or 0) * SYNTHETIC_STEP
                values.append(None if rate is None else total)
            add(f"netio_mac_{direction}_bytes", "counter", f"netio_mac_{direction}_bytes_total",
                {"instance": "h:7070", "host": "h", "device": "eth1", "mac": mac}, values)
    for index, mac in enumerate(CLIENTS):
        values = [None if _client_rate(index, t - SYNTHETIC_START) is None else 1 for t in times]
        add("netio_mac_info", "gauge", "netio_mac_info", {"instance": "h:7070", "host": "h", "device": "eth1",
            "mac": mac, "ipv4": f"192.168.1.{index + 10}", "ipv6": ""}, values)
    for device, operstate, kind, up in (("eth0", "up", "", 1), ("eth2", "down", "", 0), ("wg0", "unknown", "wireguard", 0)):
        labels = {"instance": "h:7070", "host": "h", "device": device}
        add("netio_network_info", "gauge", "netio_network_info",
            {**labels, "address": "", "operstate": operstate, "ifalias": "", "kind": kind}, [1] * len(times))
        add("netio_network_up", "gauge", "netio_network_up", labels, [up] * len(times))
    idle = {"instance": "idle:7070", "host": "idle"}
    for name in ("netio_tcp_sent_bytes", "netio_tcp_retransmitted_bytes", "netio_tcp_sent_segments",
                 "netio_tcp_retransmitted_segments"):
        add(name, "counter", name + "_total", idle, [1000] * len(times))
    for le in ("0.001", "0.01", "+Inf"):
        add("netio_tcp_rtt_seconds", "gaugehistogram", "netio_tcp_rtt_seconds_bucket", {**idle, "le": le},
            [0] * len(times))
    add("netio_tcp_rtt_seconds", "gaugehistogram", "netio_tcp_rtt_seconds_gcount", idle, [0] * len(times))
    add("netio_tcp_rtt_seconds", "gaugehistogram", "netio_tcp_rtt_seconds_gsum", idle, [0] * len(times))
    for category in ("driver_poll", "gro"):
        add("netio_netstack_rx_samples", "counter", "netio_netstack_rx_samples_total", {**idle, "category": category},
            [500] * len(times))
    text = []
    for family, (kind, lines) in families.items():
        text += [f"# TYPE {family} {kind}", *lines]
    return "\n".join(text + ["# EOF"]) + "\n"


@pytest.fixture
def synthetic_prometheus(netns, prometheus_process, tmp_path):
    """A Prometheus in its own namespace on one backfilled hour (promtool tsdb create-blocks-from)."""
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    (tmp_path / "hour.om").write_text(_synthetic_openmetrics())
    result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "hour.om"),
                             str(tmp_path / "data")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    ns = netns()
    port = prometheus_process(ns, {"global": {"scrape_interval": "15s"}})
    _wait_for(lambda: prometheus_api(ns, port, "query", query="count(netio_mac_info)", time=SYNTHETIC_START + 60)
              ["data"]["result"], 40, "backfilled series")
    return ns, port


SYNTHETIC_END = SYNTHETIC_START + (SYNTHETIC_POINTS - 1) * SYNTHETIC_STEP
SYNTHETIC_FROM = SYNTHETIC_START + 300
SYNTHETIC_MACROS = {"__rate_interval": "1m", "__interval": "15s", "__range": f"{SYNTHETIC_END - SYNTHETIC_FROM}s",
                    "__range_s": str(SYNTHETIC_END - SYNTHETIC_FROM)}


def _over_the_hour(ns: str, port: int, dashboard: dict, expr: str, host: str) -> list:
    """The range query Grafana sends for a time series panel over the dashboard's range."""
    query = interpolate(expr, dashboard, _selection(dashboard, [host]), SYNTHETIC_MACROS)
    answer = prometheus_api(ns, port, "query_range", query=query, start=SYNTHETIC_FROM, end=SYNTHETIC_END, step=60)
    assert answer["status"] == "success", f"{query}: {answer.get('error')}"
    return answer["data"]["result"]


def _at_the_end(ns: str, port: int, dashboard: dict, expr: str, host: str) -> list:
    query = interpolate(expr, dashboard, _selection(dashboard, [host]), SYNTHETIC_MACROS)
    answer = prometheus_api(ns, port, "query", query=query, time=SYNTHETIC_END)
    assert answer["status"] == "success", f"{query}: {answer.get('error')}"
    return answer["data"]["result"]


def test_top_ten_over_the_range_and_departed_clients(synthetic_prometheus):
    ns, port = synthetic_prometheus
    dashboard = load_dashboard()
    for target in _panel(dashboard, "Client throughput (top 10)")["targets"]:
        series = _over_the_hour(ns, port, dashboard, target["expr"], "h")
        shown = {s["metric"]["mac"] for s in series}
        assert len(shown) == 10 and DEPARTED in shown, (target["refId"], sorted(shown))
        assert all(s["metric"]["device"] == "eth1" for s in series)
    for title in ("Top clients by download", "Top clients by upload"):
        (target,) = _panel(dashboard, title)["targets"]
        rows = _at_the_end(ns, port, dashboard, target["expr"], "h")
        by_mac = {row["metric"]["mac"]: row["metric"] for row in rows}
        assert len(rows) == 10 and len(by_mac) == 10, rows
        assert DEPARTED in by_mac and not by_mac[DEPARTED].get("ipv4"), by_mac.get(DEPARTED)
        assert all(labels.get("ipv4") for mac, labels in by_mac.items() if mac != DEPARTED), by_mac


def test_ratios_of_an_idle_host_show_no_value(synthetic_prometheus):
    ns, port = synthetic_prometheus
    dashboard = load_dashboard()
    for title in ("Retransmission ratio", "RTT: mean, median, p99", "NET_RX breakdown"):
        for target in _panel(dashboard, title)["targets"]:
            series = _over_the_hour(ns, port, dashboard, target["expr"], "idle")
            values = {value for s in series for _, value in s["values"]}
            assert "NaN" not in values, (title, target["refId"], series)


def test_link_state_paints_unknown_operstate_as_healthy(synthetic_prometheus):
    """WireGuard and tun report operstate "unknown" (netio_network_up 0): not red."""
    ns, port = synthetic_prometheus
    dashboard = load_dashboard()
    panel = _panel(dashboard, "Link up/down")
    (target,) = panel["targets"]
    mappings = {value: option for mapping in panel["fieldConfig"]["defaults"]["mappings"]
                for value, option in mapping["options"].items()}
    colors = {}
    for series in _over_the_hour(ns, port, dashboard, target["expr"], "h"):
        (value,) = {value for _, value in series["values"]}
        colors[series["metric"]["device"]] = mappings[value]["color"]
    assert colors["eth0"] == "green" and colors["eth2"] == "red" and colors["wg0"] not in ("red", "green"), colors
