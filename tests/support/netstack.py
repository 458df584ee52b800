"""A loaded netstack collector for the netstack tests (test_netstack*.py) and what it needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from exporter.collectors.netstack import NetstackCollector

from .kernel import require, run


def require_bpf() -> None:
    require(os.geteuid() == 0, "needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "kernel has no BTF (/sys/kernel/btf/vmlinux)")


def loaded_collector(**kwargs) -> NetstackCollector:
    """A NetstackCollector(**kwargs) whose programs loaded (skip, or fail under CI, if they cannot)."""
    require_bpf()
    made = NetstackCollector(**kwargs)
    require(made._error is None, f"netstack collector cannot load: {made._error}")
    return made


def prerouting_chain(ns: str, directory: Path, rules: int = 1000) -> None:
    """An nftables prerouting chain of ``rules`` rules that match nothing in namespace ``ns``: every
    packet it receives walks all of them in NET_RX."""
    require(shutil.which("nft") is not None, "nft not installed (apt-get install nftables)")
    lines = "\n".join(f"    ip saddr 192.0.2.{i % 250} ip daddr 198.51.100.{i // 250} counter" for i in range(rules))
    ruleset = directory / "prerouting.nft"
    ruleset.write_text("table ip netio_test {\n  chain prerouting {\n    type filter hook prerouting priority 0; "
                       f"policy accept;\n{lines}\n  }}\n}}\n")
    run("ip", "netns", "exec", ns, "nft", "-f", str(ruleset))
