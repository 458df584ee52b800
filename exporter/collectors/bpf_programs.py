"""bpf_programs: what the kernel skipped of the exporter's eBPF programs, for every collector at once.

A tracing program that fires again on a CPU where it is already running (a softirq interrupting it)
is not run; the kernel counts the skipped run in the program's ``recursion_misses``. Every program of
every loaded object (``exporter.bpf.libbpf.loaded_programs``) is reported here, summed by program
name (a collector that loads one object per interface has one series per program), so no collector
exports the family itself. Always on (``SELF_COLLECTORS``); absent programs mean no series.
"""

from __future__ import annotations

from ..exposition import Family
from . import Collector


def _family() -> Family:
    return Family.counter("netio_bpf_program_missed_runs",
                          "Runs of the exporter's eBPF program that the kernel skipped because the program was "
                          "already running on that CPU (bpf_prog_info recursion_misses): events it did not see.")


class BpfProgramsCollector(Collector):
    name = "bpf_programs"

    def __init__(self):
        from ..bpf import libbpf  # here, not at every scrape (libbpf.so itself loads with the first object)
        self._libbpf = libbpf

    def describe_families(self) -> list[Family]:
        return [_family()]

    def read(self) -> list[Family]:
        family = _family()
        missed: dict[str, int] = {}
        for name, fd in self._libbpf.loaded_programs():
            info = self._libbpf.program_info(fd)
            if info is not None:
                missed[name] = missed.get(name, 0) + info["recursion_misses"]
        for name in sorted(missed):
            family.add((("program", name),), missed[name])
        return [family]
