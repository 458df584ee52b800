"""Loading, attaching and draining the netstack eBPF objects (exporter/bpf/netstack_*.bpf.c).

Three objects, each loaded only when its part is on, so a part that is off costs nothing:
``netstack_softirq`` (always: NET_RX/NET_TX time, two tracepoint programs), ``netstack_syscalls`` (with
``--collector.netstack.syscalls``: sys_enter, sched_switch and the socket length tracepoints) and
``netstack_rx_stacks`` (when sampling: a perf_event program on a cpu-clock event per CPU). The last two
share netstack_softirq's maps (netstack_shared.h). All are ordinary ``BpfObject``s, so the self
collector reports their programs' missed runs.
"""

from __future__ import annotations

import os
import struct
import time

from ...bpf import build, libbpf
from .syscalls import network_syscall_set

__all__ = ["ENTRIES", "SOFTIRQ_ENTRIES", "LOST_REASONS", "NetstackPrograms"]

ENTRIES = ("net_rx_softirq", "net_tx_softirq", "tx_syscall", "rx_syscall")  # softirq_state's `net`, then `totals`
SOFTIRQ_ENTRIES = ENTRIES[:2]
LOST_REASONS = ("table_full", "stack_unreadable")  # `lost` index order (netstack_rx_stacks.bpf.c)

_SOFTIRQ_PROGRAMS = ("softirq_exit", "softirq_entry")
_SYSCALL_PROGRAMS = ("sched_switch", "sys_enter", "sock_send_length", "sock_recv_length")
_TOTALS = struct.Struct("<QQ")  # struct totals {nanoseconds; invocations}, per CPU
_SOFTIRQ_STATE = struct.Struct("<QII4Q")  # struct softirq_state {start; vec; unused; struct totals net[2]}
_KEY = struct.Struct("<I")
_COUNT = struct.Struct("<Q")
STACK_DEPTH = 48  # struct stack in netstack_rx_stacks.bpf.c: frames, innermost first, zero-padded
STACK = struct.Struct(f"<{STACK_DEPTH}Q")


class NetstackPrograms:
    """The loaded objects, their attachments and the reads of their maps. Raises what loading raises
    (``BpfError``, ``BpfObjectMissing``) after closing whatever it had loaded. ``max_stacks`` resizes the
    per-scrape stack tables (MAX_STACKS in netstack_rx_stacks.bpf.c; tests make them small)."""

    def __init__(self, frequency_hz: int, syscalls: bool, max_stacks: int | None = None):
        self.frequency_hz = frequency_hz
        self._max_stacks = max_stacks
        self.syscalls = syscalls
        self.sampled_cpus: set[int] = set()  # CPUs with an armed cpu-clock event
        self._objects: list[libbpf.BpfObject] = []
        self._attachment: libbpf.Attachment | None = None
        self._sampling: libbpf.Attachment | None = None
        self._generation = 0
        self.possible_cpus = self._ncpus = libbpf.possible_cpus()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load_object(self, name: str, **kwargs) -> libbpf.BpfObject:
        loaded = libbpf.BpfObject(str(build.object_path(name)), **kwargs)
        self._objects.append(loaded)
        return loaded

    def _load(self) -> None:
        self._softirq = self._load_object("netstack_softirq")
        self._softirq_state = self._softirq.map("softirq_state", key_size=_KEY.size, value_size=_SOFTIRQ_STATE.size)
        self._syscall_object = self._stacks_object = None
        if self.syscalls:
            self._syscall_object = self._load_object("netstack_syscalls", reuse_maps={
                name: self._softirq.map(name) for name in ("softirq_state", "totals", "cpu_clock")})
            self._totals = self._syscall_object.map("totals", key_size=_KEY.size, value_size=_TOTALS.size)
            self._syscall_object.map("network_syscalls", key_size=_KEY.size).update(
                _KEY.pack(0), network_syscall_set(os.uname().machine))
        if self.frequency_hz:
            self._stacks_object = self._load_object(
                "netstack_rx_stacks", reuse_maps={"softirq_state": self._softirq.map("softirq_state")},
                max_entries={name: self._max_stacks for name in ("samples_0", "samples_1")} if self._max_stacks else None)
            self._generations = tuple(self._stacks_object.map(name, key_size=STACK.size, value_size=_COUNT.size)
                                      for name in ("samples_0", "samples_1"))
            self._generation_map = self._stacks_object.map("generation", key_size=_KEY.size, value_size=_KEY.size)
            self._lost = self._stacks_object.map("lost", key_size=_KEY.size, value_size=_COUNT.size)

    @property
    def entries(self) -> tuple[str, ...]:
        """The entries these programs measure (the syscall entries only with the syscall object)."""
        return ENTRIES if self.syscalls else SOFTIRQ_ENTRIES

    @property
    def attached(self) -> bool:
        return self._attachment is not None

    def attach(self, cpus) -> None:
        """Attach the tracing programs, and the sampler to a cpu-clock event on each of ``cpus``."""
        if self._attachment is not None:
            return
        attachment = libbpf.Attachment()
        try:
            for program in _SOFTIRQ_PROGRAMS:
                attachment.attach(self._softirq, program)
            for program in _SYSCALL_PROGRAMS if self._syscall_object else ():
                attachment.attach(self._syscall_object, program)
        except BaseException:
            attachment.close()
            raise
        self._attachment = attachment
        if self._stacks_object is not None:
            self._sampling = libbpf.Attachment()
            self.arm_sampling(cpus)

    def arm_sampling(self, cpus) -> list[int]:
        """Open and attach a cpu-clock event on each CPU of ``cpus`` that has none (CPUs that came
        online); returns the CPUs newly armed. Raises for the first CPU that fails."""
        if self._sampling is None:
            return []
        period_ns = max(1, 1_000_000_000 // self.frequency_hz)
        armed = []
        for cpu in cpus:
            if cpu not in self.sampled_cpus:
                self._sampling.attach_perf_event(self._stacks_object, "sample_net_rx",
                                                 libbpf.open_cpu_clock(cpu, period_ns))
                self.sampled_cpus.add(cpu)
                armed.append(cpu)
        return armed

    def detach(self) -> None:
        for attachment in (self._sampling, self._attachment):
            if attachment is not None:
                attachment.close()
        self._sampling = self._attachment = None
        self.sampled_cpus = set()

    def close(self) -> None:
        self.detach()
        while self._objects:
            self._objects.pop().close()

    def read_totals(self) -> dict[int, list[tuple[int, int]]]:
        """{entry index: [(nanoseconds, invocations) for each possible CPU]} for ``entries``."""
        blob = self._softirq_state.lookup(_KEY.pack(0), _SOFTIRQ_STATE.size * self._ncpus)
        per_cpu = list(_SOFTIRQ_STATE.iter_unpack(blob))
        totals = {entry: [(state[3 + 2 * entry], state[4 + 2 * entry]) for state in per_cpu]
                  for entry in range(len(SOFTIRQ_ENTRIES))}
        if self.syscalls:
            stride = _TOTALS.size * self._ncpus
            keys, values, _ = self._totals.lookup_batch(stride)
            for index, (entry,) in enumerate(_KEY.iter_unpack(keys)):
                totals[len(SOFTIRQ_ENTRIES) + entry] = list(_TOTALS.iter_unpack(values[index * stride:(index + 1) * stride]))
        return totals

    def drain_samples(self) -> tuple[list[tuple[bytes, int]], tuple[int, ...]]:
        """The stacks recorded since the last drain with their sample counts, and the cumulative lost
        samples by ``LOST_REASONS``.

        Flips the generation the sampler counts into, then empties the other one: the kernel tables
        hold one scrape interval's stacks and never fill up for good.
        """
        drained = self._generations[self._generation]
        self._generation ^= 1
        self._generation_map.update(_KEY.pack(0), _KEY.pack(self._generation))
        time.sleep(0.001)  # a program that read the old generation finishes within microseconds
        keys, values, count = drained.lookup_and_delete_batch()
        size = STACK.size
        stacks = [(keys[index * size:(index + 1) * size], samples)
                  for index, (samples,) in enumerate(_COUNT.iter_unpack(values))]
        lost = tuple(_COUNT.unpack(self._lost.lookup(_KEY.pack(reason)) or bytes(_COUNT.size))[0]
                     for reason in range(len(LOST_REASONS)))
        return stacks, lost
