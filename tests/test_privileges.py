"""Least privilege: the exporter runs as ``nobody`` with only the capabilities the README lists, every
collector succeeds, and after start-up it holds only what its collectors still use.

The unprivileged run is real: setpriv (util-linux) starts it as nobody with exactly those capabilities
(ambient, so they survive the change of user), with no clang on PATH and a home that does not exist,
in a namespace with a veth pair the test made.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exporter.privileges import CAPABILITIES
from tests.support import NetnsProcess, free_port, in_netns, quiet_ipv6, require, run, samples, value

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "02:00:00:00:00:31"


def _unit_capabilities() -> list[str]:
    unit = (ROOT / "deploy" / "systemd" / "netio-exporter.service").read_text()
    return re.search(r"^AmbientCapabilities=(.*)$", unit, re.M)[1].split()


def _readme_capabilities() -> list[str]:
    """The README's "every collector" row of its capability table."""
    readme = (ROOT / "README.md").read_text()
    row = re.search(r"^\| every collector \| ([^|]*) \|", readme, re.M)
    assert row, "README: the capability table's 'every collector' row is missing"
    return re.findall(r"CAP_[A-Z_]+", row[1])


def test_the_readme_and_the_systemd_unit_grant_the_same_capabilities():
    assert sorted(_readme_capabilities()) == sorted(_unit_capabilities())
    unit = (ROOT / "deploy" / "systemd" / "netio-exporter.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M)[1].split() == _unit_capabilities()


def _mask(names) -> int:
    return sum(1 << CAPABILITIES[name] for name in names)


def _task_capabilities(pid: int) -> set[tuple[int, int]]:
    """(CapEff, CapPrm) of every thread of ``pid``."""
    found = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        found.add((int(fields["CapEff"], 16), int(fields["CapPrm"], 16)))
    return found


def _frames(count: int) -> list[bytes]:
    frame = bytes.fromhex("02000000fe01") + bytes.fromhex(CLIENT.replace(":", "")) + b"\x88\xb5"
    return [frame + bytes(100 - len(frame))] * count


def _send(ns: str, device: str, count: int) -> None:
    with in_netns(ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((device, 0))
            for frame in _frames(count):
                raw.send(frame)


def _scrape(ns: str, port: int) -> dict:
    with in_netns(ns):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return samples(response.read().decode())


def _veth(ns: str) -> None:
    """m0 (watched by mac) and m1 (the client's side) in ``ns``; with IPv6 off only our frames cross."""
    run("ip", "-n", ns, "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    run("ip", "-n", ns, "link", "set", "m0", "up")
    run("ip", "-n", ns, "link", "set", "m1", "up")


@pytest.fixture
def unprivileged(netns):
    """Start the exporter in a fresh namespace as nobody with the README's capabilities."""
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv not installed (util-linux)")
    require(Path("/sys/kernel/btf/vmlinux").exists(), "the kernel has no BTF")
    started = []

    def start(*flags: str):
        ns = netns()
        quiet_ipv6(ns)
        _veth(ns)
        port = free_port(ns)
        caps = ",".join(f"+{name.removeprefix('CAP_').lower()}" for name in _readme_capabilities())
        command = ["/usr/bin/env", "-u", "CLANG", "HOME=/nonexistent", "PATH=/nonexistent", setpriv,
                   "--reuid=nobody", "--regid=nogroup", "--clear-groups", f"--inh-caps=-all,{caps}",
                   f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}",
                   sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(port), *flags]
        process = NetnsProcess(ns, command)
        started.append(process)
        process.wait_listening(port)
        return ns, port, process

    yield start
    for process in started:
        process.stop()


def _all_succeed(parsed: dict) -> None:
    for collector in ("link", "tcp", "netstack", "mac"):
        assert value(parsed, "netio_scrape_collector_success", collector=collector) == 1, collector


@pytest.mark.parametrize("attach, kept", [("auto", []), ("clsact", ["CAP_NET_ADMIN"])])
def test_as_nobody_with_the_listed_capabilities_every_collector_succeeds(unprivileged, attach, kept):
    ns, port, exporter = unprivileged("--collector.mac.device", "m0", "--collector.mac.attach", attach)
    _send(ns, "m1", 3)
    parsed = _scrape(ns, port)
    _all_succeed(parsed)
    assert value(parsed, "netio_mac_upload_packets_total", device="m0", mac=CLIENT) == 3
    assert value(parsed, "netio_mac_table_entries", device="m0") == 1
    # NET_RX stack sampling did not switch itself off for want of CAP_SYSLOG
    assert value(parsed, "netio_netstack_rx_samples_total", category="other") is not None
    assert "kallsyms hides" not in exporter.stderr()
    assert value(parsed, "netio_bpf_program_missed_runs_total", program="mac_ingress") == 0
    # After start-up: only what re-attaching uses (clsact: CAP_NET_ADMIN; TCX links need none), in
    # every thread (the netstack symbol reader has ended by now).
    deadline = time.monotonic() + 10
    while _task_capabilities(exporter.pid) != {(_mask(kept), _mask(kept))} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _task_capabilities(exporter.pid) == {(_mask(kept), _mask(kept))}
    # What is kept is enough: the interface re-created, the next scrape attaches again and counts.
    run("ip", "-n", ns, "link", "del", "m0")
    _veth(ns)
    _all_succeed(_scrape(ns, port))
    _send(ns, "m1", 2)
    parsed = _scrape(ns, port)
    _all_succeed(parsed)
    assert value(parsed, "netio_mac_upload_packets_total", device="m0", mac=CLIENT) == 5
    assert exporter.stderr().count("attached again") == 1
    # process_* still read after the drop (statm and the fd directory are held open from start-up)
    assert value(parsed, "process_open_fds") > 0 and value(parsed, "process_resident_memory_bytes") > 0


def test_drop_keeps_what_is_asked_and_clears_the_rest_as_root():
    """As root (CAP_SETPCAP): the bounding set goes too, and no_new_privs is set."""
    code = ("from exporter.privileges import drop_capabilities\n"
            "print(','.join(drop_capabilities(['CAP_NET_ADMIN', 'CAP_NET_BIND_SERVICE'])))\n"
            "print(open('/proc/self/status').read())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    kept, status = result.stdout.split("\n", 1)
    require(kept, "needs root")
    assert kept == "CAP_NET_BIND_SERVICE,CAP_NET_ADMIN"
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    wanted = _mask(["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"])
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[field], 16) == wanted, field
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"


def test_the_exporter_without_mac_keeps_nothing(netns, exporter):
    """Started as root (the other tests' way): after start-up, no capability is left in any thread."""
    running = exporter(netns())
    assert value(running.scrape(), "netio_scrape_collector_success", collector="link") == 1
    deadline = time.monotonic() + 10
    while _task_capabilities(running.process.pid) != {(0, 0)} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _task_capabilities(running.process.pid) == {(0, 0)}


def _unit_settings() -> dict[str, str]:
    unit = (ROOT / "deploy" / "systemd" / "netio-exporter.service").read_text()
    return dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z]\w*=", line))


def test_the_systemd_sandbox_leaves_stack_sampling_on():
    """ProtectKernelTunables= hides /proc/kallsyms and ProtectKernelLogs= strips CAP_SYSLOG: either would
    switch NET_RX stack sampling off while netstack still reports success."""
    settings = _unit_settings()
    for option in ("ProtectKernelTunables", "ProtectKernelLogs", "PrivateUsers", "PrivateNetwork"):
        assert settings.get(option, "no") == "no", option
    assert settings.get("ProcSubset", "all") == "all"
    assert "CAP_SYSLOG" in settings["CapabilityBoundingSet"].split()
    assert {"/proc/sys", "/sys"} <= set(settings["ReadOnlyPaths"].split())  # what ProtectKernelTunables kept safe
    assert "/proc/kallsyms" not in settings.get("InaccessiblePaths", "")


def test_systemd_analyze_security_rates_the_unit_as_the_readme_says(tmp_path):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze not installed (apt-get install systemd)")
    # systemd is not PID 1 on the test machine: the unit file is rated offline, not started
    unit = tmp_path / "netio-exporter.service"
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}",
                           (ROOT / "deploy" / "systemd" / "netio-exporter.service").read_text(), flags=re.M))
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)[1]
    assert f"rates it **{exposure} OK**" in (ROOT / "README.md").read_text()
    assert float(exposure) <= 2.5
