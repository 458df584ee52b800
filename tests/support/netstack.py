"""A loaded netstack collector for the netstack tests (test_netstack*.py) and what it needs."""

from __future__ import annotations

import os

from exporter.collectors.netstack import NetstackCollector

from .kernel import require


def require_bpf() -> None:
    require(os.geteuid() == 0, "needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "kernel has no BTF (/sys/kernel/btf/vmlinux)")


def loaded_collector(**kwargs) -> NetstackCollector:
    """A NetstackCollector(**kwargs) whose programs loaded (skip, or fail under CI, if they cannot)."""
    require_bpf()
    made = NetstackCollector(**kwargs)
    require(made._error is None, f"netstack collector cannot load: {made._error}")
    return made
