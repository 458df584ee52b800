"""Deployment files: Prometheus configs and alert rules (promtool), and the compose, Kubernetes, systemd and
Grafana provisioning files, which must parse and agree with the CLI (every flag exists, port 7070)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from exporter.cli import build_parser
from tests.support import require
from tests.support.contract import COLLECTOR_OF, CONTRACT_LABELS, label_names, metric_names

try:
    import yaml
except ImportError:  # only the tests use PyYAML (the test extra)
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
SYSTEMD = ROOT / "deploy" / "systemd" / "netio-exporter.service"
COMPOSE = ROOT / "docker-compose.yml"
PROVISIONING = ROOT / "grafana" / "provisioning"
PORT = 7070
# Flags of DESIGN.md's CLI contract that are not implemented yet: deploy files may name them in comments only.
PLANNED_FLAGS = {"-f", "--frequency", "--collector.tcp.local-ports", "--collector.mac.device",
                 "--collector.mac.max-entries", "--collector.mac.idle-timeout", "--collector.mac.attach",
                 "--collector.tcp", "--no-collector.tcp", "--collector.netstack", "--no-collector.netstack",
                 "--collector.mac", "--no-collector.mac", "--web.config.file", "--user-period"}
# What the collectors may need: netstack CAP_BPF + CAP_PERFMON (+ CAP_SYSLOG to read kernel addresses for
# stack sampling), mac CAP_BPF + CAP_NET_ADMIN; link and tcp none.
CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYSLOG"}


def _options() -> set[str]:
    return {option for action in build_parser()._actions for option in action.option_strings}


def _yaml(path: Path, all_documents: bool = False):
    require(yaml is not None, "PyYAML not installed (it is in the test extra: pip install -e '.[test]')")
    with path.open() as stream:
        return list(yaml.safe_load_all(stream)) if all_documents else yaml.safe_load(stream)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR)


def assert_runs_the_exporter_on_7070(args: list[str], where: str) -> None:
    """Every flag exists in the CLI, and the arguments parse to the Prometheus mode on port 7070."""
    options = _options()
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=")[0] in options, f"{where}: {arg} is not a flag of netio-exporter"
    parsed = build_parser().parse_args(args)
    assert parsed.prometheus and parsed.port == PORT and parsed.log_file is None, f"{where}: {args}"


def _flags_mentioned(text: str) -> set[str]:
    return {flag.rstrip(".-") for flag in re.findall(r"(?<![\w/.-])(--?[a-zA-Z][\w.-]*)", text)}


# ------------------------------------------------------------------------------------------ Prometheus

def test_multi_host_config_and_its_rules_pass_promtool():
    result = _promtool("check", "config", "prometheus-multi-host.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_rules())} rules found" in result.stdout


def test_alert_rules_pass_promtool_check():
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# The topics of alerts_test.yml (the start of each test's name) and the rules a topic does not apply to.
ALERT_TEST_TOPICS = ("for", "reset", "NaN", "intermittent")
NOT_APPLICABLE = {
    # gauges: nothing to reset
    "reset": {"NetioExporterDown", "NetioExporterAbsent", "NetioExporterRestarting", "NetioScrapesSlow",
              "NetioCollectorFailing", "NetioPhysicalLinkDown", "NetioExporterPodsUnavailable",
              "NetioNetRxSamplingOff", "NetioMACTableFull"},
    # no division
    "NaN": {"NetioExporterDown", "NetioExporterAbsent", "NetioExporterRestarting", "NetioScrapesSlow",
            "NetioCollectorFailing", "NetioNICRingDrops", "NetioLinkFlapping", "NetioPhysicalLinkDown",
            "NetioNetstackCPUHigh", "NetioExporterPodsUnavailable", "NetioNetRxSamplingOff", "NetioSoftnetDrops",
            "NetioListenOverflows", "NetioKernelDrops"},
}
LINK_DEVICE_MATCHER = 'device!~"lo|veth.*|cali.*|lxc.*|tap.*|vnet.*"'
RUNBOOK_BASE = "https://github.com/netio-exporter/netio-exporter/blob/main/README.md#"


def _rules() -> list[dict]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def _alert_tests() -> list[dict]:
    tests = _yaml(PROMETHEUS_DIR / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"] and tests["evaluation_interval"] == "1m"
    return tests["tests"]


def _minutes(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([mhd])", duration).groups()
    return int(number) * {"m": 1, "h": 60, "d": 1440}[unit]


def test_every_alert_is_tested_on_every_topic_that_applies():
    tests = _alert_tests()
    for test in tests:
        assert test["name"].split(":")[0] in ALERT_TEST_TOPICS, test["name"]
    for rule in _rules():
        assert rule["labels"]["severity"] == "warning", rule["alert"]
        for topic in ALERT_TEST_TOPICS:
            cases = [case for test in tests if test["name"].startswith(topic + ":")
                     for case in test.get("alert_rule_test", []) if case["alertname"] == rule["alert"]]
            if rule["alert"] in NOT_APPLICABLE.get(topic, ()):
                assert not cases, f"{rule['alert']}: {topic} tested but listed as not applicable"
            else:
                assert cases, f"{rule['alert']}: no {topic!r} test"
        firing = [alert for test in tests for case in test.get("alert_rule_test", [])
                  if case["alertname"] == rule["alert"] for alert in case["exp_alerts"]]
        assert firing, f"{rule['alert']}: no test where it fires"
        metric_labels = {"namespace", "daemonset"} if rule["alert"] == "NetioExporterPodsUnavailable" else {"host"}
        if rule["alert"] == "NetioExporterAbsent":
            metric_labels = {"job"}  # absent() knows only the selector's labels
        for alert in firing:
            assert metric_labels <= set(alert["exp_labels"]), rule["alert"]


def test_every_for_is_pinned_to_the_minute(tmp_path):
    """Each "for:" test expects an alert quiet at T - 1m and firing at T. The same inputs against the rules
    without `for` must fire at T - for and be quiet one minute earlier: the condition starts exactly `for`
    before the alert fires, so neither the wait nor the threshold can drift unnoticed."""
    rules = {rule["alert"]: rule for rule in _rules()}
    stripped_groups = []
    for group in _yaml(ALERTS)["groups"]:
        stripped_groups.append({"name": group["name"], "rules": [
            {key: value for key, value in rule.items() if key not in ("for", "annotations")}
            for rule in group["rules"]]})
    (tmp_path / "stripped.yml").write_text(json.dumps({"groups": stripped_groups}))
    shifted_tests, pinned = [], set()
    for test in _alert_tests():
        if not test["name"].startswith("for:"):
            continue
        cases = []
        for name in dict.fromkeys(case["alertname"] for case in test["alert_rule_test"]):
            mine = sorted(((_minutes(case["eval_time"]), case) for case in test["alert_rule_test"]
                           if case["alertname"] == name), key=lambda pair: pair[0])
            fired = [(minute, case) for minute, case in mine if case["exp_alerts"]]
            if not fired:
                continue  # quiet cases of another rule's test
            ((fire_at, firing),) = fired
            assert any(minute == fire_at - 1 and not case["exp_alerts"] for minute, case in mine), \
                f"{name}: not tested quiet at {fire_at - 1}m, one evaluation before it fires"
            wait = _minutes(rules[name].get("for", "0m"))
            labels = [{"exp_labels": alert["exp_labels"]} for alert in firing["exp_alerts"]]
            cases += [{"alertname": name, "eval_time": f"{fire_at - wait - 1}m", "exp_alerts": []},
                      {"alertname": name, "eval_time": f"{fire_at - wait}m", "exp_alerts": labels}]
            pinned.add(name)
        shifted_tests.append({**test, "alert_rule_test": cases})
    assert pinned == set(rules), f"no for: test fires {set(rules) - pinned}"
    (tmp_path / "shifted_test.yml").write_text(json.dumps(
        {"rule_files": ["stripped.yml"], "evaluation_interval": "1m", "tests": shifted_tests}))
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "test", "rules", "shifted_test.yml"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_described_with_its_labels_and_a_runbook_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    anchors = {_github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", readme, flags=re.M)}
    for rule in _rules():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert "{{ $labels." in annotations["description"], f"{rule['alert']}: the description names no label"
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor == rule["alert"].lower() and anchor in anchors, f"{rule['alert']}: no README section #{anchor}"


def _github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_link_alerts_skip_virtual_devices_with_one_documented_matcher():
    readme = (ROOT / "README.md").read_text()
    assert LINK_DEVICE_MATCHER in ALERTS.read_text().split("groups:")[0] and LINK_DEVICE_MATCHER in readme
    for rule in _rules():
        for selector in re.findall(r"\b(netio_network_\w+)(\{[^}]*\})?", rule["expr"]):
            name, matchers = selector
            if name != "netio_network_info":
                assert LINK_DEVICE_MATCHER in matchers, f"{rule['alert']}: {name}{matchers}"


# The background the kernel-drops rule leaves out; README's NetioKernelDrops runbook explains each reason.
KERNEL_DROPS_BACKGROUND = 'reason!~"no_socket|otherhost|not_specified|queue_purge|socket_close"'


def test_kernel_drop_alerts_use_the_kernels_counters():
    rules = {rule["alert"]: rule for rule in _rules()}
    assert rules["NetioSoftnetDrops"]["expr"] == "rate(netio_softnet_dropped_total[5m]) > 0"
    assert rules["NetioListenOverflows"]["expr"] == "rate(netio_netstat_tcpext_listenoverflows_total[5m]) > 0"
    drops = rules["NetioKernelDrops"]
    assert f"rate(netio_drops_total{{{KERNEL_DROPS_BACKGROUND}}}[5m])" in drops["expr"], drops["expr"]
    assert drops["expr"].rstrip().endswith("> 10") and drops["for"] == "15m"
    assert rules["NetioNetRxSamplingOff"]["expr"] == "netio_netstack_rx_sampling_cpus == 0"
    assert rules["NetioMACTableFull"]["expr"] == \
        "netio_mac_table_entries / (netio_mac_table_max_entries > 0) > 0.9"
    readme = (ROOT / "README.md").read_text()
    runbook = readme[readme.index("#### NetioKernelDrops"):][:2000]
    assert KERNEL_DROPS_BACKGROUND in readme
    for reason in KERNEL_DROPS_BACKGROUND.split('"')[1].split("|"):
        assert f"`{reason}`" in runbook, reason


def test_alert_rules_use_the_metric_contract():
    rules = _rules()
    alerts = {rule["alert"] for rule in rules}
    assert {"NetioExporterDown", "NetioExporterAbsent", "NetioCollectorFailing", "NetioInterfaceReceiveErrors",
            "NetioInterfaceTransmitErrors", "NetioInterfaceReceiveDrops", "NetioInterfaceTransmitDrops",
            "NetioNICRingDrops", "NetioLinkFlapping", "NetioPhysicalLinkDown", "NetioExporterRestarting",
            "NetioScrapesSlow", "NetioTCPRetransmissionRatioHigh", "NetioNetstackCPUHigh", "NetioSoftnetDrops",
            "NetioListenOverflows", "NetioKernelDrops", "NetioNetRxSamplingOff", "NetioMACTableFull"} <= alerts
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= set(COLLECTOR_OF), f"{rule['alert']}: {names - set(COLLECTOR_OF)}"
        assert label_names(rule["expr"]) <= CONTRACT_LABELS, rule["alert"]
        text = " ".join(rule["annotations"].values())
        assert set(re.findall(r"\$labels\.(\w+)", text)) <= CONTRACT_LABELS, rule["alert"]
        for flag in _flags_mentioned(text):
            assert flag in _options() | PLANNED_FLAGS or flag == "--no-collector", flag  # --no-collector.{{ ... }}


def test_every_job_sets_host_with_the_same_relabelling():
    """prometheus.yml and prometheus-multi-host.yml, netio and node jobs: one relabelling, so the jobs join on
    `host` (tests/test_prometheus.py runs it on a real Prometheus)."""
    single = _yaml(ROOT / "prometheus.yml")["scrape_configs"]
    multi = _yaml(PROMETHEUS_DIR / "prometheus-multi-host.yml")["scrape_configs"]
    assert [job["job_name"] for job in single] == ["netio"] and [job["job_name"] for job in multi] == ["netio", "node"]
    relabelling = single[0]["relabel_configs"]
    assert all(job["relabel_configs"] == relabelling for job in multi)
    (rule,) = relabelling
    assert rule["target_label"] == "host" and rule["source_labels"] == ["host", "__address__"]
    assert "*host_label" in (ROOT / "prometheus.yml").read_text()  # the node job documented, commented out
    # a single-host install names its machine
    ((static,),) = [job["static_configs"] for job in single]
    assert static["targets"] == ["localhost:7070"] and static["labels"]["host"]
    for group in _yaml(PROMETHEUS_DIR / multi[0]["file_sd_configs"][0]["files"][0]):
        assert all(target.endswith(f":{PORT}") for target in group["targets"])
    for static in multi[0]["static_configs"]:
        assert all(target.endswith(f":{PORT}") for target in static["targets"])


# ------------------------------------------------------------------------------------------ docker compose

def test_compose_runs_the_exporter_with_capabilities_on_the_host_network():
    services = _yaml(COMPOSE)["services"]
    exporter = services["netio-exporter"]
    assert exporter["network_mode"] == "host" and exporter["build"] == "."
    assert "privileged" not in exporter
    assert exporter["cap_drop"] == ["ALL"] and set(exporter["cap_add"]) == CAPABILITIES
    assert_runs_the_exporter_on_7070(exporter["command"], "docker-compose.yml")
    for name in ("prometheus", "grafana"):
        assert services[name]["network_mode"] == "host", name


def test_compose_listens_on_loopback_only_and_grafana_has_no_default_password():
    """On the host network a port is the host's: a gateway's faces the WAN."""
    services = _yaml(COMPOSE)["services"]
    assert build_parser().parse_args(services["netio-exporter"]["command"]).address == "127.0.0.1"
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    environment = services["grafana"]["environment"]
    assert environment["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    # compose's ${VAR:?message}: no start without a password of the user's
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", environment["GF_SECURITY_ADMIN_PASSWORD"])


def test_compose_mounts_the_files_of_this_repository():
    services = _yaml(COMPOSE)["services"]
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
                mounts[(name, target)] = (ROOT / source).resolve()
    prometheus = services["prometheus"]
    config_target = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounts[("prometheus", config_target)] == (ROOT / "prometheus.yml").resolve()
    # The rule files prometheus.yml names (relative to itself) are mounted where it looks for them.
    for rule_file in _yaml(ROOT / "prometheus.yml").get("rule_files") or []:
        target = str(PurePosixPath(config_target).parent / rule_file)
        assert mounts.get(("prometheus", target)) == (ROOT / rule_file).resolve(), rule_file
    assert mounts[("prometheus", "/etc/prometheus/deploy/prometheus/alerts.yml")] == ALERTS.resolve()
    # Grafana: provisioning, and the dashboard inside the provider's path.
    assert mounts[("grafana", "/etc/grafana/provisioning/datasources")] == (PROVISIONING / "datasources").resolve()
    assert mounts[("grafana", "/etc/grafana/provisioning/dashboards")] == (PROVISIONING / "dashboards").resolve()
    (provider,) = _yaml(PROVISIONING / "dashboards" / "netio.yml")["providers"]
    dashboard_target = next(target for (name, target), source in mounts.items()
                            if source == (ROOT / "grafana" / "netio-exporter.json").resolve())
    assert PurePosixPath(dashboard_target).parent == PurePosixPath(provider["options"]["path"])
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == dashboard_target


def test_grafana_datasource_reaches_the_compose_prometheus():
    (datasource,) = _yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == "http://localhost:9090"  # Prometheus's default listen port, host network
    scrape_interval = _yaml(ROOT / "prometheus.yml")["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


# ------------------------------------------------------------------------------------------ Kubernetes

def _kubernetes() -> dict:
    documents = [doc for doc in _yaml(KUBERNETES, all_documents=True) if doc]
    by_kind = {doc["kind"]: doc for doc in documents}
    assert sorted(by_kind) == ["DaemonSet", "PodMonitor", "Service"] and len(documents) == 3
    return by_kind


def test_daemonset_runs_the_exporter_on_the_host_network_with_few_capabilities():
    daemonset = _kubernetes()["DaemonSet"]
    assert daemonset["apiVersion"] == "apps/v1"
    pod = daemonset["spec"]["template"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = spec["containers"]
    assert "command" not in container  # the image's ENTRYPOINT is netio-exporter
    assert_runs_the_exporter_on_7070(container["args"], "daemonset.yaml")
    (port,) = container["ports"]
    assert port["containerPort"] == PORT and port["name"] == "metrics"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) <= CAPABILITIES
    # the runtime's default seccomp profile (bpf and perf_event_open gated by CAP_BPF/CAP_PERFMON)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"} and "seccompProfile" not in security
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["priorityClassName"] == "system-node-critical"
    text = KUBERNETES.read_text()
    assert "pod-security.kubernetes.io/enforce=privileged" in text and "CRI-O" in text  # documented


def test_kubernetes_manifests_pass_kubernetes_validate_strict():
    """kubernetes-validate (PyPI, the test extra) against the newest Kubernetes schemas it has; the
    PodMonitor is a CRD it has no schema for."""
    validate = Path(sys.executable).parent / "kubernetes-validate"
    require(validate.exists(), "kubernetes-validate not installed (it is in the test extra: pip install -e '.[test]')")
    result = subprocess.run([str(validate), "--strict", str(KUBERNETES)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for kind in ("daemonset", "service"):
        assert f"passed for resource {kind}/netio-exporter" in output, output
    assert "ERROR" not in output, output


def test_service_and_podmonitor_select_the_pods_and_label_the_host():
    by_kind = _kubernetes()
    labels = by_kind["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    service = by_kind["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT and port["targetPort"] == "metrics"
    monitor = by_kind["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabelings = endpoint["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "host"} in relabelings
    assert {"targetLabel": "job", "replacement": "netio"} in relabelings  # the alert rules' job


# ------------------------------------------------------------------------------------------ systemd

def _unit() -> dict[str, list[str]]:
    """``Key`` -> values, over all sections (systemd keys may repeat)."""
    entries: dict[str, list[str]] = {}
    section = None
    for line in SYSTEMD.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        assert section, line
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_unit_runs_the_exporter_with_only_the_needed_capabilities():
    unit = _unit()
    (exec_start,) = unit["ExecStart"]
    binary, *args = shlex.split(exec_start)
    assert binary.endswith("/netio-exporter")
    assert_runs_the_exporter_on_7070(args, "netio-exporter.service")
    ambient = set(unit["AmbientCapabilities"][0].split())
    assert ambient == set(unit["CapabilityBoundingSet"][0].split())
    assert {name.removeprefix("CAP_") for name in ambient} <= CAPABILITIES
    assert unit["DynamicUser"] == ["yes"] and unit["NoNewPrivileges"] == ["yes"]
    assert "PrivateNetwork" not in unit  # it must see the host's network namespace
    assert "AF_NETLINK" in unit["RestrictAddressFamilies"][0]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze not installed (apt-get install systemd)")
    installed = Path(sys.executable).parent / "netio-exporter"
    require(installed.exists(), f"{installed} not installed (pip install -e .)")
    # verify checks that ExecStart exists: point it at this checkout's installed script
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={installed}", SYSTEMD.read_text(), flags=re.M)
    unit = tmp_path / SYSTEMD.name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------ all of them

@pytest.mark.parametrize("path", [COMPOSE, KUBERNETES, SYSTEMD, ROOT / "Dockerfile"], ids=lambda p: p.name)
def test_every_collector_flag_mentioned_exists_or_is_planned(path):
    """Collector flags in the files exist now; a planned one (DESIGN.md's CLI contract) only in a comment."""
    options = _options()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code, _, comment = line.partition("#")
        for flag in _flags_mentioned(code.replace('"', " ").replace("'", " ")):
            if flag.startswith(("--collector", "--no-collector")) or flag in options | PLANNED_FLAGS - {"-f"}:
                assert flag in options, f"{path.name}:{number}: {flag} is not a flag of netio-exporter (yet)"
        for flag in _flags_mentioned(comment.replace('"', " ")):
            if flag.startswith(("--collector", "--no-collector")):
                assert flag in options | PLANNED_FLAGS, f"{path.name}:{number}: {flag} is in no CLI contract"


def test_dockerfile_default_command_agrees():
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    assert_runs_the_exporter_on_7070(json.loads(cmd[4:]), "Dockerfile")


def test_every_deploy_file_uses_port_7070():
    for path in (COMPOSE, KUBERNETES, SYSTEMD, ROOT / "Dockerfile"):
        ports = set(re.findall(r"(?:--port[\s\"',]+|-p\s+|containerPort: |port: |EXPOSE )(\d+)", path.read_text()))
        assert ports <= {str(PORT)}, f"{path.name}: {ports}"
