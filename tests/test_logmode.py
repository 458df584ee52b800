"""Log mode (-l) against the real kernel: exact byte deltas, rotation, vanishing interfaces, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support import in_netns, require, run, veth_pair
from exporter.logmode import ConfigError, DeltaTracker, interface_from_metrics_request

PAYLOAD = 200
WIRE = PAYLOAD + 42  # Ethernet + IPv4 + UDP headers
INTERVAL = "0.2"


class Logger:
    """``netio-exporter -l`` in a namespace; ended by its pid."""

    def __init__(self, ns: str, target: str, *args: str, env: dict | None = None):
        self.target = target
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "exporter",
                                         "-l", target, *args], env=full_env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def lines(self, path: str | None = None) -> list[str]:
        path = path or self.target
        if not os.path.exists(path):
            return []
        with open(path) as handle:
            return handle.read().splitlines()

    def wait_lines(self, count: int, path: str | None = None, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines(path)
            if len(lines) >= count:
                return lines
            assert self.process.poll() is None, self.process.stderr.read()
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} lines after {timeout} s: {self.lines(path)}")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=10)
        return self.process.returncode, err


@pytest.fixture
def pair(netns):
    return veth_pair(netns(), netns())


@pytest.fixture
def loggers():
    started = []

    def start(*args, **kwargs) -> Logger:
        started.append(Logger(*args, **kwargs))
        return started[-1]

    yield start
    for logger in started:
        if logger.process.poll() is None:
            logger.stop()


def _send(pair, count: int) -> None:
    ns_a, _, _, _ = pair["a"]
    _, _, ip_b, _ = pair["b"]
    with in_netns(ns_a):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(count):
                sender.sendto(b"y" * PAYLOAD, (ip_b, 9))  # nobody listens: the receiver's rx counts it anyway


def _sum_csv(lines: list[str]) -> tuple[int, int]:
    rx = tx = 0
    for line in lines:
        a, b = line.split(",")
        rx, tx = rx + int(a), tx + int(b)
    return rx, tx


def test_csv_deltas_sum_to_the_bytes_sent(pair, loggers, tmp_path):
    ns_b, dev_b, _, _ = pair["b"]
    path = str(tmp_path / "netio.csv")
    logger = loggers(ns_b, path, "--interval", INTERVAL,  # wins over READING_INTERVAL_SEC
                     env={"METRICS_REQUEST": f"cpu/(x), networkStats/(lo),networkStats/({dev_b})",
                          "READING_INTERVAL_SEC": "1000"})
    logger.wait_lines(2)  # header and a first interval: the baseline is taken
    _send(pair, 40)
    time.sleep(0.3)
    count = len(logger.wait_lines(len(logger.lines()) + 2))
    returncode, stderr = logger.stop()
    assert returncode == 0, stderr
    lines = logger.lines()
    assert len(lines) >= count
    assert lines[0] == "elapsedRx,elapsedTx" and lines.count("elapsedRx,elapsedTx") == 1
    assert all(re.fullmatch(r"\d+,\d+", line) for line in lines[1:])
    # rx only: the receiving end transmits ICMP port-unreachable answers of its own
    assert _sum_csv(lines[1:])[0] == 40 * WIRE
    with open(path, "rb") as handle:
        assert handle.read().endswith(b"\n")  # SIGTERM left no partial line


def test_jsonl_has_every_counter_for_selected_interfaces(pair, loggers, tmp_path):
    ns_b, dev_b, _, _ = pair["b"]
    path = str(tmp_path / "netio.jsonl")
    logger = loggers(ns_b, path, "--log-format", "jsonl", "--interval", INTERVAL,
                     "--collector.link.device-include", "eth.*")
    logger.wait_lines(1)
    _send(pair, 25)
    time.sleep(0.3)
    logger.wait_lines(len(logger.lines()) + 2)
    logger.stop()
    records = [json.loads(line) for line in logger.lines()]
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert record["interval_seconds"] > 0
        link = {name: dict(table["samples"]) for name, table in record["counters"].items()
                if name.startswith("netio_network_")}
        assert all(set(samples) == {dev_b} for samples in link.values())  # lo is not selected
        assert len(link) == 26  # every rtnl_link_stats64 field this kernel sends, and carrier changes
    assert sum(dict(r["counters"]["netio_network_receive_bytes_total"]["samples"])[dev_b] for r in records) == 25 * WIRE
    assert sum(dict(r["counters"]["netio_network_receive_packets_total"]["samples"])[dev_b] for r in records) == 25


def test_stdout_carries_only_the_header_and_data(pair):
    ns_b, dev_b, _, _ = pair["b"]
    process = subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-m", "exporter", "-l", "-"],
                               env={**os.environ, "METRICS_REQUEST": "networkStats/(*)", "READING_INTERVAL_SEC": "0.2"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    lines = out.splitlines()
    assert lines[0] == "elapsedRx,elapsedTx" and len(lines) >= 3
    assert all(re.fullmatch(r"\d+,\d+", line) for line in lines[1:])
    assert f"logging {dev_b}" in err  # (*) is the first non-loopback interface


def test_sighup_reopens_and_loses_no_line(pair, loggers, tmp_path):
    ns_b, dev_b, _, _ = pair["b"]
    path, rotated = str(tmp_path / "netio.csv"), str(tmp_path / "netio.csv.1")
    logger = loggers(ns_b, path, "--interval", INTERVAL, env={"METRICS_REQUEST": f"networkStats/({dev_b})"})
    logger.wait_lines(2)
    _send(pair, 10)
    os.rename(path, rotated)
    logger.process.send_signal(signal.SIGHUP)
    _send(pair, 10)
    time.sleep(0.3)
    logger.wait_lines(3, path)
    logger.stop()
    old, new = logger.lines(rotated), logger.lines(path)
    assert old[0] == new[0] == "elapsedRx,elapsedTx"
    assert _sum_csv(old[1:])[0] + _sum_csv(new[1:])[0] == 20 * WIRE


def test_vanished_interface_is_said_once_and_resumes(netns, loggers, tmp_path):
    ns = netns()
    run("ip", "-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
    path = str(tmp_path / "netio.csv")
    logger = loggers(ns, path, "--interval", INTERVAL, env={"METRICS_REQUEST": "networkStats/(wan0)"})
    logger.wait_lines(2)
    run("ip", "-n", ns, "link", "del", "wan0")
    time.sleep(1.0)
    during = len(logger.lines())
    time.sleep(0.6)
    assert len(logger.lines()) == during  # nothing printed while it is gone
    run("ip", "-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
    logger.wait_lines(during + 2)
    returncode, stderr = logger.stop()
    assert returncode == 0
    assert stderr.count("interface wan0 vanished") == 1
    assert stderr.count("interface wan0 is back") == 1


def test_missing_interface_at_start_is_said_once(netns, loggers, tmp_path):
    ns = netns()
    path = str(tmp_path / "netio.csv")
    logger = loggers(ns, path, "--interval", INTERVAL, env={"METRICS_REQUEST": "networkStats/(nosuch0)"})
    time.sleep(1.2)
    returncode, stderr = logger.stop()
    assert returncode == 0
    assert logger.lines() == ["elapsedRx,elapsedTx"]
    assert stderr.count("interface nosuch0 not found") == 1


def test_counter_reset_counts_from_the_new_value():
    said = []
    tracker = DeltaTracker(said.append)
    assert tracker.update(["eth0"], {"eth0": (100, 50)}) == {}  # first reading: the baseline
    assert tracker.update(["eth0"], {"eth0": (160, 70)}) == {"eth0": (60, 20)}
    assert tracker.update(["eth0"], {"eth0": (10, 90)}) == {"eth0": (0, 20)}  # rx reset: never negative
    assert tracker.update(["eth0"], {"eth0": (15, 95)}) == {"eth0": (5, 5)}  # counting from the new value
    assert len(said) == 1 and "went backwards" in said[0]


def test_metrics_request_parsing():
    assert interface_from_metrics_request(None) == "lo"
    assert interface_from_metrics_request("") == "lo"
    assert interface_from_metrics_request("networkStats/(eth0),networkStats/(wlan0)") == "wlan0"
    assert interface_from_metrics_request("cpuStats/(all), networkStats/(*)") == "*"
    for bad in ("networkStats/eth0", "networkStats/()", "networkStats/(a)(b)", "networkStats/(" + "x" * 16 + ")"):
        with pytest.raises(ConfigError, match="METRICS_REQUEST"):
            interface_from_metrics_request(bad)


@pytest.mark.parametrize("env, message", [
    ({"METRICS_REQUEST": "networkStats/eth0"}, "netio-exporter: METRICS_REQUEST: expected items like"),
    ({"READING_INTERVAL_SEC": "abc"}, "netio-exporter: READING_INTERVAL_SEC: expected a number of seconds"),
    ({"READING_INTERVAL_SEC": "-5"}, "netio-exporter: READING_INTERVAL_SEC: expected a number of seconds"),
])
def test_bad_environment_exits_2(env, message):
    result = subprocess.run([sys.executable, "-m", "exporter", "-l", "-"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_unwritable_file_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporter", "-l", str(tmp_path / "no" / "such" / "dir.csv")],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "cannot open" in result.stderr and "No such file or directory" in result.stderr


# A csv file that already holds whole lines and leaves 70 bytes of the tmpfs's only page: the 18th
# "0,0" line from a quiet namespace is cut by the full disk.
_CSV_SEED = "elapsedRx,elapsedTx\n" + "0,0\n" * 1000 + "12,34\n"


# A jsonl line of the link collector alone: a few lines fit on the 4 KiB disk before it fills.
_LINK_ONLY = " ".join(f"--no-collector.{name}" for name in ("tcp", "netstack", "netstat", "softnet", "sockstat"))


@pytest.mark.parametrize("log_format", ["csv", "jsonl"])
def test_a_full_disk_leaves_only_whole_lines(netns, tmp_path, log_format):
    """A 4 KiB tmpfs mounted (and unmounted) by the test in a mount namespace of its own fills up: the
    last write is short, the retry fails with ENOSPC, and the partial line is cut away before exit."""
    require(shutil.which("unshare") is not None, "unshare not installed (util-linux)")
    ns = netns()
    mount = tmp_path / "small"
    mount.mkdir()
    seed = _CSV_SEED if log_format == "csv" else ""
    script = (f'mount -t tmpfs -o size=4k netio-test {mount} || exit 90\n'
              f'printf %s "$SEED" > {mount}/log\n'
              f'ip netns exec {ns} {sys.executable} -m exporter -l {mount}/log --interval 0.01 '
              f'--log-format {log_format} {_LINK_ONLY if log_format == "jsonl" else ""}\n'
              f'echo "exit=$?" >&2\n'
              f'cat {mount}/log\n'
              f'umount {mount}\n')
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={**os.environ, "SEED": seed, "METRICS_REQUEST": "networkStats/(lo)"},
                            capture_output=True, text=True, timeout=120)
    assert "exit=1" in result.stderr, result.stderr
    assert f"cannot write to {mount}/log: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    content = result.stdout
    assert content.startswith(seed) and content.endswith("\n") and len(content) > len(seed)
    assert 4096 - len(content.encode()) < (70 if log_format == "csv" else 3200)  # the disk did fill
    lines = content.splitlines()
    if log_format == "csv":
        assert lines[0] == "elapsedRx,elapsedTx" and all(re.fullmatch(r"\d+,\d+", line) for line in lines[1:])
    else:
        assert all(json.loads(line)["counters"]["netio_network_receive_bytes_total"] for line in lines)


def test_closed_stdout_is_a_clear_error():
    result = subprocess.run(["sh", "-c", f"exec {sys.executable} -m exporter -l - --interval 0.01 >&-"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert result.stderr == "netio-exporter: cannot open standard output: it is closed\n"


def test_stdout_whose_reader_left_is_a_clear_error():
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write gets EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "exporter", "-l", "-", "--interval", "0.01"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=20)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "netio-exporter: cannot write to standard output: Broken pipe\n" in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
