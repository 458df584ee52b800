"""What the BPF programs a process holds cost: run-time statistics scoped to an fd, read from fdinfo."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import tempfile
from pathlib import Path

from exporter.bpf.libbpf import raw_syscall


def enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run_time_ns and run_cnt are kept while the returned fd is
    open (the kernel turns them off when it closes, also if we die), without touching the sysctl."""
    attr = ctypes.create_string_buffer(struct.pack("=I", 0), 64)  # enable_stats.type = BPF_STATS_RUN_TIME
    return raw_syscall("bpf", 32, attr, 64)  # 32: BPF_ENABLE_STATS


def program_stats(pid: int) -> dict[int, tuple[int, int]]:
    """{prog_id: (run_time_ns, run_cnt)} of the programs ``pid`` holds, from /proc/PID/fdinfo."""
    stats = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as file:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in file if ":\t" in line)
        except OSError:
            continue
        if "prog_id" in fields and "run_cnt" in fields:  # a program fd (link fds show prog_id only)
            stats[int(fields["prog_id"])] = (int(fields["run_time_ns"]), int(fields["run_cnt"]))
    return stats


def program_names(ids) -> dict[int, str]:
    names = {}
    for prog_id in ids:
        shown = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "--json"],
                               capture_output=True, text=True)
        try:
            names[prog_id] = json.loads(shown.stdout).get("name", str(prog_id))
        except ValueError:
            names[prog_id] = str(prog_id)
    return names


class HookCost:
    """bench/hook_cost.bpf.c, compiled and loaded: empty and partial programs to attach one by one, to
    price a hook's dispatch and a program's pieces beside the collectors' programs."""

    def __init__(self):
        from exporter.bpf import build, libbpf
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "hook_cost.bpf.o"
            build.compile_object(Path(__file__).with_name("hook_cost.bpf.c"), path)
            self._object = libbpf.BpfObject(str(path))
        self._attachment = libbpf.Attachment

    def attach(self, *programs: str):
        """The programs attached, until the returned attachment's close()."""
        attachment = self._attachment()
        try:
            for program in programs:
                attachment.attach(self._object, program)
        except BaseException:
            attachment.close()
            raise
        return attachment

    def close(self) -> None:
        self._object.close()
