"""The netstack collector: the programs' maps as metric families (see the package's docstring)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ...bpf.kallsyms import KallsymsUnreadable, kallsyms_shows_addresses
from ...exposition import Family
from .. import Collector, CollectorUnavailable, log
from .programs import LOST_REASONS, STACK, NetstackPrograms
from .stages import CATEGORIES, classify
from .symbols import CurrentSymbols, online_cpus

__all__ = ["DEFAULT_FREQUENCY_HZ", "NetstackCollector"]

DEFAULT_FREQUENCY_HZ = 1000
_CATEGORY_INDEX = {category: index for index, category in enumerate(CATEGORIES)}
_CATEGORY_ROWS = tuple((("category", category),) for category in CATEGORIES)  # one object: see Family
_LOST_ROWS = tuple((("reason", reason),) for reason in LOST_REASONS)
_STACK_CACHE_SIZE = 20_000
_ADDRESS_CACHE_SIZE = 100_000


def _unavailable(error: Exception) -> CollectorUnavailable:
    from ...bpf.build import BpfObjectMissing
    if isinstance(error, CollectorUnavailable):
        return error
    if isinstance(error, BpfObjectMissing):
        return CollectorUnavailable(f"netstack needs compiled eBPF programs: {error}")
    errno_value = getattr(error, "errno", None)
    first, *libbpf_log = str(error).splitlines()
    if errno_value in (1, 13):  # EPERM, EACCES: libbpf's log only repeats it
        return CollectorUnavailable(
            f"cannot load eBPF programs ({first}): run as root, or grant CAP_BPF and CAP_PERFMON "
            "(CAP_SYS_ADMIN on kernels before 5.8) and CAP_SYSLOG for NET_RX stack symbols")
    detail = " | ".join(libbpf_log[-6:])  # one log line: the tail of libbpf's log says what failed
    return CollectorUnavailable(f"cannot load eBPF programs: {first}" + (f" ({detail})" if detail else ""))


class NetstackCollector(Collector):
    """``frequency_hz`` NET_RX samples per second of CPU time on each CPU (0: no sampling);
    ``syscalls`` also measures the send/receive syscalls. The kernel sources are injectable for tests:
    ``kallsyms_path``, ``modules_path`` and ``online_cpus`` (a function returning the online CPUs)."""

    name = "netstack"

    def __init__(self, frequency_hz: int = DEFAULT_FREQUENCY_HZ, syscalls: bool = False, *,
                 kallsyms_path: str = "/proc/kallsyms", modules_path: str = "/proc/modules",
                 online_cpus: Callable[[], list[int]] = online_cpus):
        if not isinstance(frequency_hz, int) or frequency_hz < 0 or frequency_hz > 100_000:
            raise ValueError(f"frequency_hz: expected 0-100000, got {frequency_hz!r}")
        self.frequency_hz = frequency_hz
        self.syscalls = bool(syscalls)
        self._kallsyms_path = kallsyms_path
        self._modules_path = modules_path
        self._online_cpus = online_cpus
        self._lock = threading.Lock()
        self.programs: NetstackPrograms | None = None  # public for benchmarks: attach()/detach()
        self._error: CollectorUnavailable | None = None
        self._sampling_failed: set[int] = set()  # CPUs whose sampling event could not be opened
        self._symbols: CurrentSymbols | None = None
        self._stack_categories: dict[bytes, int] = {}  # raw stack -> category index
        self._category_samples = [0] * len(CATEGORIES)  # drained from the kernel, cumulative
        self._function_at: dict[int, str] = {}  # frame address -> function name
        self._symbols_thread: threading.Thread | None = None
        sampling = frequency_hz > 0
        try:
            if not os.path.exists("/sys/kernel/btf/vmlinux"):
                raise CollectorUnavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux): netstack needs a "
                                           "kernel built with CONFIG_DEBUG_INFO_BTF=y")
            if sampling and not kallsyms_shows_addresses(kallsyms_path):
                log.warning("netstack: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict; grant "
                            "CAP_SYSLOG or run as root): NET_RX stack sampling is off "
                            "(netio_netstack_rx_sampling_cpus 0), CPU time is still measured")
                sampling = False
            self.programs = NetstackPrograms(frequency_hz if sampling else 0, self.syscalls)
            self.programs.attach(self._online_cpus())
        except Exception as error:  # the exporter must never die for this collector
            self._error = _unavailable(error)
            self.close_programs()
            return
        if sampling:  # ready before the first scrape needs it, without delaying start-up
            self._symbols_thread = threading.Thread(target=self._build_symbols, name="netstack-kallsyms",
                                                    daemon=True)
            self._symbols_thread.start()

    @property
    def capabilities_after_start(self) -> tuple[str, ...]:
        """What a scrape may still need while sampling (exporter.privileges keeps these): CAP_SYSLOG to read
        kallsyms again when modules can change, CAP_PERFMON to open the event of a CPU that can come online."""
        if self._error is not None or not self.sampling:
            return ()
        needed = ["CAP_SYSLOG"] if os.path.exists(self._modules_path) else []
        if len(self.programs.sampled_cpus) < self.programs.possible_cpus:
            needed.append("CAP_PERFMON")
        return tuple(needed)

    @property
    def sampling(self) -> bool:
        """Whether NET_RX stacks are sampled (asked for with -f, and kallsyms shows addresses)."""
        return self.programs is not None and self.programs.frequency_hz > 0

    def _build_symbols(self) -> None:
        try:
            self._symbols = CurrentSymbols(self._kallsyms_path, self._modules_path)
        except Exception:  # built again, and its error reported, by the scrape that needs the symbols
            pass

    def close_programs(self) -> None:
        if self.programs is not None:
            self.programs.close()
            self.programs = None

    def close(self) -> None:
        with self._lock:
            self.close_programs()
            if self._error is None:
                self._error = CollectorUnavailable("netstack collector closed")

    def describe_families(self) -> list[Family]:
        return list(_families())

    def read(self) -> list[Family]:
        with self._lock:
            if self._error is not None:
                raise self._error
            seconds, invocations, samples, lost, sampled_cpus = _families()
            online = self._online_cpus()
            self._read_totals(online, seconds, invocations)
            if self.frequency_hz == 0:  # sampling not asked for: no sampling families
                return [seconds, invocations]
            if not self.sampling:  # asked for, impossible here: say so
                sampled_cpus.add((), 0)
                return [seconds, invocations, sampled_cpus]
            self._arm_new_cpus(online)
            self._read_samples(samples, lost)
            sampled_cpus.add((), len(self.programs.sampled_cpus & set(online)))
            return [seconds, invocations, samples, lost, sampled_cpus]

    def _arm_new_cpus(self, online: list[int]) -> None:
        if not self.programs.attached:
            return
        for cpu in online:
            if cpu in self.programs.sampled_cpus or cpu in self._sampling_failed:
                continue
            try:
                for armed in self.programs.arm_sampling([cpu]):
                    log.info("netstack: CPU %d came online: NET_RX sampling armed on it", armed)
            except OSError as error:
                self._sampling_failed.add(cpu)
                log.warning("netstack: CPU %d came online but cannot be sampled (%s): its NET_RX stacks "
                            "are not counted", cpu, error)

    def _read_totals(self, online: list[int], seconds: Family, invocations: Family) -> None:
        totals = self.programs.read_totals()
        online_set = set(online)
        ncpus = len(next(iter(totals.values()))) if totals else 0
        shown = [cpu for cpu in range(ncpus)
                 if cpu in online_set or any(per_cpu[cpu] != (0, 0) for per_cpu in totals.values())]
        for entry_index, entry in enumerate(self.programs.entries):
            per_cpu = totals.get(entry_index)
            for cpu in shown:
                nanoseconds, calls = per_cpu[cpu] if per_cpu else (0, 0)
                labels = (("cpu", str(cpu)), ("entry", entry))
                seconds.add(labels, nanoseconds / 1e9)
                invocations.add(labels, calls)

    def _current_symbols(self) -> CurrentSymbols:
        """The symbols, built (or re-read after a module change) before draining: a failure leaves the
        samples in the kernel for the next scrape."""
        if self._symbols is None and self._symbols_thread is not None:
            self._symbols_thread.join()
            self._symbols_thread = None
        if self._symbols is None:
            try:
                self._symbols = CurrentSymbols(self._kallsyms_path, self._modules_path)
            except KallsymsUnreadable as error:
                raise CollectorUnavailable(str(error)) from None
            return self._symbols
        try:
            if self._symbols.refresh():
                log.info("netstack: the loaded modules changed: kernel symbols read again")
                self._stack_categories.clear()
                self._function_at.clear()
        except (KallsymsUnreadable, OSError) as error:  # keep sampling with the symbols read before
            log.warning("netstack: the loaded modules changed but kallsyms cannot be read again (%s): "
                        "functions of newly loaded modules stay unnamed", error)
        return self._symbols

    def _read_samples(self, samples: Family, lost: Family) -> None:
        symbols = self._current_symbols()
        stacks, lost_counts = self.programs.drain_samples()
        totals = self._category_samples
        cache = self._stack_categories
        for stack, count in stacks:
            category = cache.get(stack)
            if category is None:
                if len(cache) >= _STACK_CACHE_SIZE:
                    cache.clear()
                category = cache[stack] = self._classify_stack(symbols, stack)
            totals[category] += count
        samples.add_column(_CATEGORY_ROWS, tuple(totals))
        lost.add_column(_LOST_ROWS, lost_counts)

    def _classify_stack(self, symbols: CurrentSymbols, stack: bytes) -> int:
        if len(self._function_at) >= _ADDRESS_CACHE_SIZE:
            self._function_at.clear()
        return _CATEGORY_INDEX[classify(self._functions(symbols, STACK.unpack(stack)))]

    def _functions(self, symbols: CurrentSymbols, addresses):
        """Function names of a stack's frames, innermost first, looked up lazily and cached by address."""
        cache = self._function_at
        for address in addresses:
            if not address:
                return
            name = cache.get(address)
            if name is None:
                name = cache[address] = symbols.function(address) or "?"
            yield name


def _families() -> tuple[Family, Family, Family, Family, Family]:
    return (Family.counter("netio_netstack_cpu_seconds",
                           "CPU time of the network stack by CPU and entry (NET_RX/NET_TX softirq; with "
                           "--collector.netstack.syscalls also send/receive syscalls on IP sockets); the entries "
                           "are exclusive in time and can be summed."),
            Family.counter("netio_netstack_invocations",
                           "Invocations of the network stack by CPU and entry (softirq runs; with "
                           "--collector.netstack.syscalls also IP socket syscalls)."),
            Family.counter("netio_netstack_rx_samples",
                           "Kernel stack samples recorded during the NET_RX softirq, by the stage they were in; "
                           "the categories are mutually exclusive and sum to the recorded samples."),
            Family.counter("netio_netstack_rx_samples_lost",
                           "NET_RX stack samples that could not be recorded, by reason (table_full: more distinct "
                           "stacks than the table holds between two scrapes; stack_unreadable)."),
            Family.gauge("netio_netstack_rx_sampling_cpus",
                         "CPUs whose NET_RX stack sampling is armed; 0 when -f asks for sampling but it is "
                         "impossible here (/proc/kallsyms hides kernel addresses); absent with -f 0."))
