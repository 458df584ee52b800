"""Privilege checks, network namespaces, veth pairs, scrape parsing and a running exporter, for the tests
and benchmarks alike (``from tests.support import ...``; run benchmarks as ``python -m bench.NAME`` from
the repository root).

Tests that need root and namespaces skip with the reason outside CI; with CI set they fail instead,
so CI never passes by skipping. Only the processes the tests started are ended, by their pid.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .netns import in_netns

IN_CI = bool(os.environ.get("CI"))
_names = itertools.count()


def require(condition: bool, reason: str) -> None:
    """Skip (fail under CI) when a privileged precondition is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason)


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, **kwargs)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    probe = f"netio-probe-{os.getpid()}"
    result = run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create network namespaces: {result.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


_NAMESPACE_PROBLEM: list = []


def require_namespaces() -> None:
    if not _NAMESPACE_PROBLEM:
        _NAMESPACE_PROBLEM.append(_can_make_namespaces())
    problem = _NAMESPACE_PROBLEM[0]
    require(problem is None, problem or "")


def unique_name(prefix: str) -> str:
    """A short name (interface names max out at 15 bytes) unique to this test run."""
    return f"{prefix}{os.getpid() % 10000}x{next(_names)}"


def quiet_ipv6(ns: str) -> None:
    """No IPv6 in the namespace: no router solicitations or DAD frames moving counters."""
    for key in ("all", "default"):
        run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")


def veth_pair(ns_a: str, ns_b: str, name_a: str = "eth1", name_b: str = "eth1",
              ip_a: str = "10.199.0.1", ip_b: str = "10.199.0.2") -> dict:
    """A veth pair between two namespaces with IPv4 addresses and static neighbours, IPv6 off.

    With the neighbours static and IPv6 off, only the test's own packets cross the link.
    """
    temp_a, temp_b = unique_name("vta"), unique_name("vtb")
    quiet_ipv6(ns_a)
    quiet_ipv6(ns_b)
    run("ip", "link", "add", temp_a, "type", "veth", "peer", "name", temp_b)
    run("ip", "link", "set", temp_a, "netns", ns_a, "name", name_a)
    run("ip", "link", "set", temp_b, "netns", ns_b, "name", name_b)
    macs = {}
    for ns, name, ip in ((ns_a, name_a, ip_a), (ns_b, name_b, ip_b)):
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", name)
        run("ip", "-n", ns, "link", "set", name, "up")
        macs[ns] = run("ip", "-n", ns, "-br", "link", "show", name).stdout.split()[2]
    run("ip", "-n", ns_a, "neigh", "replace", ip_b, "lladdr", macs[ns_b], "dev", name_a, "nud", "permanent")
    run("ip", "-n", ns_b, "neigh", "replace", ip_a, "lladdr", macs[ns_a], "dev", name_b, "nud", "permanent")
    return {"a": (ns_a, name_a, ip_a, macs[ns_a]), "b": (ns_b, name_b, ip_b, macs[ns_b])}


def free_port(ns: str | None = None) -> int:
    with in_netns(ns) if ns else contextlib.nullcontext():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Parse exposition text into {(sample name, sorted labels): value}."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


_closing: list = []


def close_after_test(thing):
    """``thing`` (a collector, say), closed when the running test ends (tests/conftest.py's autouse
    fixture calls close_registered): programs such as sockops on the cgroup root detach between tests."""
    _closing.append(thing)
    return thing


def close_registered() -> None:
    while _closing:
        _closing.pop().close()


def terminate(process: subprocess.Popen, timeout: float = 20) -> None:
    """End a process this test started, by its handle: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def prometheus_api(ns: str, port: int, path: str, **params) -> dict:
    """The JSON answer of the Prometheus HTTP API at 127.0.0.1:``port``/api/v1/``path`` in ``ns``; an
    expression Prometheus refuses (400/422) is an answer too, with its error."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with in_netns(ns):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            try:
                return json.load(error)
            except ValueError:  # 503 "Service Unavailable" while Prometheus starts
                raise error from None


def prometheus_query(ns: str, port: int, expression: str) -> list:
    """The result of an instant query to the Prometheus listening on 127.0.0.1:``port`` in ``ns``."""
    answer = prometheus_api(ns, port, "query", query=expression)
    assert answer["status"] == "success", f"{expression}: {answer.get('error')}"
    return answer["data"]["result"]


def value(parsed: dict, name: str, **labels) -> float | None:
    return parsed.get((name, tuple(sorted(labels.items()))))


# The one remark of promtool's linter the README accepts: the kernel's field names in netio_netstat_*
# are camelCase, as in node_exporter's node_netstat_*.


def promtool_problems(body: bytes) -> list[str]:
    """What ``promtool check metrics`` finds wrong with a scrape (parse errors and lint remarks)."""
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    lines = (result.stdout + result.stderr).decode(errors="replace").splitlines()
    problems = [line for line in lines if line.strip()]
    if result.returncode != 0:  # 3: lint remarks, listed above; 1: the text does not parse
        problems.append(f"promtool exited {result.returncode}")
    return problems


class ExporterProcess:
    """``netio-exporter`` started as a subprocess in a namespace; ended by its pid."""

    def __init__(self, ns: str, *args: str, port: int | None = None, address: str = "127.0.0.1"):
        self.ns = ns
        self.port = port or free_port(ns)
        self.address = address
        command = ["ip", "netns", "exec", ns, sys.executable, "-m", "exporter",
                   "-P", "-a", address, "-p", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def url(self, path: str = "/metrics") -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exporter exited {self.process.returncode}: {self.process.stderr.read()}")
            try:
                self.get("/")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("exporter did not answer within 20 s")

    def get(self, path: str = "/metrics", headers: dict | None = None):
        with in_netns(self.ns):
            request = urllib.request.Request(self.url(path), headers=headers or {})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()

    def scrape(self) -> dict:
        return samples(self.get()[2].decode())

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return self.process.returncode, stderr
