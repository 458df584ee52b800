"""Command line: each bad value exits 2 with one line naming the flag; --help and README list every flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("args, message", [
    (["--port", "abc"], "--port: expected a port number 1-65535, got 'abc'"),
    (["-p", "70000"], "--port: expected a port number 1-65535, got '70000'"),
    (["-a", "example"], "--address: expected an IPv4 or IPv6 address such as 0.0.0.0 or ::, got 'example'"),
    (["-l", "-", "--interval", "0"], "--interval: expected a number of seconds from 0.01 to 1e+07, got '0'"),
    (["-l", "-", "--interval", "x"], "--interval: expected a number of seconds from 0.01 to 1e+07, got 'x'"),
    (["-l", "-", "--interval", "1e-300"], "--interval: expected a number of seconds from 0.01 to 1e+07, got '1e-300'"),
    (["-p", "\u0667\u0660\u0667\u0660"], "--port: expected a port number 1-65535, got '\u0667\u0660\u0667\u0660'"),
    (["-a", "[::1"], "--address: expected an IPv4 or IPv6 address such as 0.0.0.0 or ::, got '[::1'"),
    (["-a", "[127.0.0.1]"], "--address: expected an IPv4 or IPv6 address"),
    (["-l", ""], "--log-file: expected a file name or '-' for standard output, got ''"),
    (["--collector.mac"], "--collector.mac: needs --collector.mac.device"),
    (["-l", "-", "--log-format", "xml"], "--log-format: expected csv or jsonl, got 'xml'"),
    (["--collector.link.device-include", "("], "--collector.link.device-include: invalid regular expression '('"),
    (["--collector.link.device-include", "a", "--collector.link.device-exclude", "b"],
     "--collector.link.device-exclude: not allowed with --collector.link.device-include"),
    (["-P", "-l", "-"], "--log-file: not allowed with --prometheus"),
    (["-l", "-", "-p", "80"], "--port: log mode (-l) runs no HTTP server"),
    (["--interval", "5"], "--interval: applies to log mode only"),
    (["-l", "-", "--collector.link.device-include", "eth0"], "--collector.link.device-include/exclude: the csv log"),
    (["-l", "-", "--no-collector.link"], "--no-collector.link: log mode logs the link counters"),
    (["--collector.tcp.local-ports", "22,x"], "--collector.tcp.local-ports: expected comma-separated port numbers"),
    (["--no-collector.tcp", "--collector.tcp.local-ports", "22"], "--collector.tcp.local-ports: the tcp collector is off"),
    (["-f", "-1"], "--frequency: expected a sampling frequency in Hz 0-10000, got '-1'"),
    (["--no-collector.netstack", "-f", "99"], "--frequency: the netstack collector is off"),
    (["--collector.mac.device", "a b"], "--collector.mac.device: expected an interface name"),
    (["--collector.mac.device", "x" * 16], "--collector.mac.device: expected an interface name"),
    (["--collector.mac.device", "eth0", "--collector.mac.max-entries", "0"],
     "--collector.mac.max-entries: expected a number of clients 1-1000000, got '0'"),
    (["--collector.mac.device", "eth0", "--collector.mac.idle-timeout", "0"],
     "--collector.mac.idle-timeout: expected a number of seconds from 0.01 to 1e+07, got '0'"),
    (["--collector.mac.device", "eth0", "--collector.mac.attach", "xdp"],
     "--collector.mac.attach: expected auto, tcx or clsact, got 'xdp'"),
    (["--collector.mac.attach", "tcx"], "--collector.mac.attach: the mac collector runs only with"),
    (["-l", "-", "--collector.mac.device", "eth0"], "--collector.mac.device: the csv log (-l) carries link counters only"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_values_exit_2_with_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"netio-exporter: {message}"), result.stderr
    assert result.stderr.count("\n") == 1


def _flags() -> list[str]:
    return [option for action in build_parser()._actions for option in action.option_strings]


def test_help_lists_every_flag():
    result = _run("--help")
    assert result.returncode == 0
    for flag in _flags():
        assert flag in result.stdout, flag


def test_readme_documents_every_flag():
    readme = (ROOT / "README.md").read_text()
    for flag in _flags():
        if flag.startswith("--"):
            assert f"`{flag}" in readme or f", {flag}" in readme or f"{flag}`" in readme, flag


def test_version():
    from exporter import __version__
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"netio-exporter {__version__}"
