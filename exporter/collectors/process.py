"""process: the exporter's own CPU, memory and file descriptors, as prometheus_client's ProcessCollector.

Same names, types, help and values as ProcessCollector on Linux. ProcessCollector reads
/proc/self/stat; the same kernel figures come cheaper from /proc/self/statm (memory, in pages),
times() (CPU, in clock ticks), /proc/self/fd and the RLIMIT_NOFILE soft limit; the start time is read
from /proc/self/stat once. statm and the fd directory stay open (a scrape on a thread woken for it runs
cold: the path walks of opening them cost several times what reading costs), and the open files are
counted by the directory's size (fs/proc/fd.c, proc_fd_getattr: the number of open files since Linux 6.2)
rather than by listing it, which costs ~30 µs of a cold scrape here; older kernels report 0 there, and the
directory is listed. The count is the open files themselves: ProcessCollector's listing also counts the
one it opened to list. (The kernel sums its per-CPU memory counters for statm and estimates them
for stat: the two resident sizes may differ by some hundred KiB.)

Always on and registered outside the collector flags (``SELF_COLLECTORS``): no success series.
"""

from __future__ import annotations

import os
import resource
import threading

from ..exposition import Family, Template
from . import Collector


def _built_families() -> list[Family]:
    return [Family.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
            Family.gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
            Family.gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
            Family.counter("process_cpu_seconds", "Total user and system CPU time spent in seconds."),
            Family.gauge("process_open_fds", "Number of open file descriptors."),
            Family.gauge("process_max_fds", "Maximum number of open file descriptors.")]


_FAMILIES = Template(_built_families())


class ProcessCollector(Collector):
    name = "process"

    def __init__(self):
        ticks = os.sysconf("SC_CLK_TCK")
        self._pagesize = resource.getpagesize()
        with open("/proc/stat", "rb") as stat:
            boot_time = next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
        with open("/proc/self/stat", "rb") as stat:
            self._start_time = float(stat.read().rsplit(b")", 1)[-1].split()[19]) / ticks + boot_time
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._listing = threading.Lock()  # listdir rewinds the directory's one offset: one listing at a time

    def close(self) -> None:
        os.close(self._statm)
        os.close(self._fd_dir)

    def _listed_fds(self) -> int:
        with self._listing:
            return len(os.listdir(self._fd_dir)) - 1  # not the descriptor listdir opened to list

    def describe_families(self) -> list[Family]:
        return _built_families()

    def read(self) -> list[Family]:
        families = virtual, resident, start, cpu, fds, max_fds = _FAMILIES.new()
        size, resident_pages = os.pread(self._statm, 256, 0).split()[:2]  # offset 0: the kernel makes it anew
        times = os.times()  # tms_utime / SC_CLK_TCK, tms_stime / SC_CLK_TCK: ProcessCollector's arithmetic
        virtual.add((), int(size) * self._pagesize)
        resident.add((), int(resident_pages) * self._pagesize)
        start.add((), self._start_time)
        cpu.add((), times.user + times.system)
        fds.add((), os.fstat(self._fd_dir).st_size or self._listed_fds())
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return families[:-1]
        max_fds.add((), limit)
        return families
