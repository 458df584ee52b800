"""netstack: CPU cost of the kernel network stack, measured by eBPF (exporter/bpf/netstack_*.bpf.c).

``netio_netstack_cpu_seconds_total{cpu,entry}`` and ``netio_netstack_invocations_total{cpu,entry}``:
``net_rx_softirq`` and ``net_tx_softirq`` from softirq entry to exit; ``tx_syscall`` and ``rx_syscall``
for syscalls that entered the send/receive path of an AF_INET/AF_INET6 socket (the
sock_send_length/sock_recv_length tracepoints), whatever their number or result. The four are
exclusive in time: NET softirqs running inline in a syscall and the time a task is switched out
are taken out of the syscall's clock, so the entries can be summed. A syscall's time is charged
to the CPU it finished its socket call on. Hardirqs and non-network softirqs that interrupt a
syscall stay in its time. Counters are 64-bit nanoseconds in the kernel: they do not wrap.

``netio_netstack_rx_samples_total{category}``: a cpu-clock perf event on every CPU samples at
``frequency_hz`` (fixed period); a sample taken while the CPU runs the NET_RX softirq records the
kernel stack. Each distinct stack is symbolised once with /proc/kallsyms and put in exactly one
category, so the categories sum to all NET_RX samples. The rule:

1. Walk the stack from the innermost frame outwards and stop at ``net_rx_action`` (frames outside
   it belong to whatever the softirq interrupted, such as the send syscall of a loopback sender).
2. The first frame whose function is a stage marker decides: the innermost stage wins, so time in
   conntrack called from the PREROUTING hook is ``nf_conntrack``, not ``nf_prerouting_v4``.
   A netfilter hook (``nf_hook_slow``) takes the stage of the function that called it: from
   ``__netif_receive_skb_core`` ``nf_ingress``, from ``ip_rcv``/``ipv6_rcv`` ``nf_prerouting_v*``,
   from ``ip_local_deliver``/``ip6_input`` ``local_delivery_v*``, from ``ip_forward``/``ip6_forward``
   ``forwarding_v*``; other hooks (bridge, POSTROUTING, LOCAL_OUT) let the walk go on outwards.
3. Markers (``_STAGE_FUNCTIONS`` below, by name with any ``.cold``/``.isra`` suffix stripped):
   ``xdp_generic`` generic XDP; ``tc_classify`` tc/tcx classifiers and actions; ``nf_conntrack``
   connection tracking; ``bridging`` the bridge (``br_*``); ``gro`` generic receive offload;
   ``nf_prerouting_v4/v6`` IP receive up to and including the route lookup (header checks, the
   PREROUTING hook, routing); ``forwarding_v4/v6`` ``ip_forward`` and what it calls, including the
   transmit to the next device; ``local_delivery_v4/v6`` ``ip_local_deliver``/``ip6_input``, the
   LOCAL_IN hook, early demux and the transport protocols (TCP, UDP, ICMP, raw) down to the socket;
   ``driver_poll`` NAPI and the driver's poll, the backlog, the core receive dispatch
   (``__netif_receive_skb_core``, packet taps) and ``net_rx_action`` itself: what is left when no
   more specific stage is on the stack.
4. ``other``: the softirq's own entry and exit (the walk meets ``handle_softirqs`` before any marker:
   this includes the cost of the tracepoints that measure it), stacks with no marker at all, and
   samples that found no room (more than 16384 distinct stacks between two scrapes) or no stack.

The programs load when the collector is constructed; if that fails (no root or capabilities, no
BTF, no libbpf, no compiled objects) ``read()`` raises ``CollectorUnavailable`` with one message
saying what is missing, and the exporter goes on without it. Closing, exiting or being killed
detaches everything: the kernel objects live as long as this process's fds.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import time
from collections.abc import Iterable

from ..bpf.kallsyms import KallsymsUnreadable, KernelSymbols, kallsyms_shows_addresses
from ..exposition import Family
from .. import flags
from . import Collector, CollectorUnavailable, Flags, Registration, log

DEFAULT_FREQUENCY_HZ = 1000
ENTRIES = ("net_rx_softirq", "net_tx_softirq", "tx_syscall", "rx_syscall")  # map index order
CATEGORIES = ("driver_poll", "gro", "xdp_generic", "tc_classify", "nf_ingress", "nf_conntrack", "bridging",
              "nf_prerouting_v4", "nf_prerouting_v6", "forwarding_v4", "forwarding_v6",
              "local_delivery_v4", "local_delivery_v6", "other")

_TIME_PROGRAMS = ("softirq_exit", "softirq_entry", "sched_switch", "sys_enter",
                  "sock_send_length", "sock_recv_length")

# Syscalls that can reach a socket's sendmsg/recvmsg: read/write and their vector forms, the send and
# recv calls, sendfile, splice, io_uring_enter. sys_enter sees the number of the ABI the task called
# in, so the 32-bit compat numbers are in the set too (an unrelated native call that shares a number
# only costs a clock read). arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl;
# include/uapi/asm-generic/unistd.h (arm64) and arch/arm/tools/syscall.tbl (its compat tasks).
_NETWORK_SYSCALLS = {
    "x86_64": (0, 1, 19, 20, 40, 44, 45, 46, 47, 275, 299, 307, 327, 328, 426,
               3, 4, 102, 145, 146, 187, 239, 313, 337, 345, 369, 370, 371, 372, 378, 379, 417),
    "aarch64": (63, 64, 65, 66, 71, 76, 206, 207, 211, 212, 243, 269, 286, 287, 426,
                3, 4, 145, 146, 187, 239, 289, 290, 291, 292, 296, 297, 340, 365, 374, 392, 393, 417),
}
_SYSCALL_SET_BITS = 512  # SYSCALL_SET_BITS in netstack_time.bpf.c

_CATEGORY_INDEX = {category: index for index, category in enumerate(CATEGORIES)}
_OTHER = _CATEGORY_INDEX["other"]
_STACK_CACHE_SIZE = 20_000
_ADDRESS_CACHE_SIZE = 100_000
_STACK_FORMAT = "<48Q"  # struct stack in netstack_rx_stacks.bpf.c: STACK_DEPTH frames, innermost first

_STAGE_FUNCTIONS = {
    "driver_poll": ("net_rx_action", "__napi_poll", "napi_poll", "process_backlog", "napi_threaded_poll",
                    "__netif_receive_skb", "__netif_receive_skb_core", "__netif_receive_skb_one_core",
                    "__netif_receive_skb_list_core", "netif_receive_skb", "netif_receive_skb_list_internal",
                    "napi_complete_done"),
    "xdp_generic": ("do_xdp_generic", "netif_receive_generic_xdp", "bpf_prog_run_generic_xdp",
                    "generic_xdp_tx"),
    "tc_classify": ("tcf_classify", "sch_handle_ingress", "sch_handle_egress", "tc_run", "tcx_run",
                    "tcf_action_exec"),
    "nf_prerouting_v4": ("ip_rcv", "ip_rcv_core", "ip_rcv_finish", "ip_rcv_finish_core", "ip_list_rcv",
                         "ip_sublist_rcv", "ip_list_rcv_finish", "ip_sublist_rcv_finish",
                         "ip_route_input_noref", "ip_route_input_slow", "ip_route_input_rcu",
                         "ip_route_use_hint", "ip_route_input_mc"),
    "nf_prerouting_v6": ("ipv6_rcv", "ip6_rcv_core", "ip6_rcv_finish", "ip6_rcv_finish_core", "ipv6_list_rcv",
                         "ip6_sublist_rcv", "ip6_list_rcv_finish", "ip6_route_input", "ip6_route_input_lookup"),
    "forwarding_v4": ("ip_forward", "ip_forward_finish"),
    "forwarding_v6": ("ip6_forward", "ip6_forward_finish"),
    "local_delivery_v4": ("ip_local_deliver", "ip_local_deliver_finish", "ip_protocol_deliver_rcu",
                          "tcp_v4_rcv", "tcp_v4_do_rcv", "tcp_v4_early_demux", "udp_rcv", "__udp4_lib_rcv",
                          "udp_v4_early_demux", "icmp_rcv", "raw_local_deliver", "igmp_rcv", "udp_unicast_rcv_skb"),
    "local_delivery_v6": ("ip6_input", "ip6_input_finish", "ip6_protocol_deliver_rcu", "tcp_v6_rcv",
                          "tcp_v6_do_rcv", "tcp_v6_early_demux", "udpv6_rcv", "__udp6_lib_rcv",
                          "udp_v6_early_demux", "icmpv6_rcv", "ip6_mc_input", "rawv6_rcv"),
}
_STAGE_PREFIXES = (  # checked after the exact names
    ("nf_conntrack_", "nf_conntrack"), ("__nf_conntrack_", "nf_conntrack"), ("nf_ct_", "nf_conntrack"),
    ("__nf_ct_", "nf_conntrack"), ("ipv4_conntrack", "nf_conntrack"), ("ipv6_conntrack", "nf_conntrack"),
    ("nf_confirm", "nf_conntrack"), ("ipv4_confirm", "nf_conntrack"), ("ipv6_confirm", "nf_conntrack"),
    ("br_", "bridging"), ("nbp_", "bridging"),
    ("cls_", "tc_classify"), ("tcf_", "tc_classify"), ("tcx_", "tc_classify"),
    ("napi_gro_", "gro"), ("dev_gro_", "gro"), ("gro_", "gro"), ("skb_gro_", "gro"), ("napi_skb_finish", "gro"),
)
_GRO_INFIXES = ("_gro_receive", "_gro_complete")
_NF_HOOKS = frozenset({"nf_hook_slow", "nf_hook_slow_list"})
_NF_HOOK_STAGE_BY_CALLER = {
    "__netif_receive_skb_core": "nf_ingress", "nf_hook_ingress": "nf_ingress",
    "ip_rcv": "nf_prerouting_v4", "ip_sublist_rcv": "nf_prerouting_v4", "ip_list_rcv": "nf_prerouting_v4",
    "ipv6_rcv": "nf_prerouting_v6", "ip6_sublist_rcv": "nf_prerouting_v6", "ipv6_list_rcv": "nf_prerouting_v6",
    "ip_local_deliver": "local_delivery_v4", "ip6_input": "local_delivery_v6",
    "ip_forward": "forwarding_v4", "ip6_forward": "forwarding_v6",
}
# Reached before net_rx_action: the sample is in the softirq's own entry or exit (including the
# tracepoints that measure it), not in any receive stage.
_SOFTIRQ_BOUNDARY = frozenset({"handle_softirqs", "__do_softirq", "do_softirq", "run_ksoftirqd",
                               "irq_exit_rcu", "__irq_exit_rcu", "__local_bh_enable_ip", "bpf_trace_run1",
                               "bpf_trace_run2"})
_FUNCTION_STAGE = {name: stage for stage, names in _STAGE_FUNCTIONS.items() for name in names}


def _base_name(name: str) -> str:
    return name.split(".", 1)[0]  # tcp_v4_rcv.cold, __netif_receive_skb_core.constprop.0


@functools.lru_cache(maxsize=8192)
def stage_of_function(name: str) -> str | None:
    """The category a function marks on its own, or None (nf hooks are handled by ``classify``)."""
    stage = _FUNCTION_STAGE.get(name)
    if stage is not None:
        return stage
    for prefix, prefixed_stage in _STAGE_PREFIXES:
        if name.startswith(prefix):
            return prefixed_stage
    if any(infix in name for infix in _GRO_INFIXES):
        return "gro"
    return None


def classify(functions: Iterable[str]) -> str:
    """The category of one NET_RX stack, given its function names innermost first (see the rule above).

    Names are consumed lazily and the walk stops at the first decision, so callers may pass a
    generator that symbolises frame by frame.
    """
    after_hook = False
    for function in functions:
        name = _base_name(function)
        if name in _NF_HOOKS:
            after_hook = True
            continue
        if after_hook:
            after_hook = False
            stage = _NF_HOOK_STAGE_BY_CALLER.get(name)
            if stage is not None:
                return stage
        if name in _SOFTIRQ_BOUNDARY:
            return "other"
        stage = stage_of_function(name)
        if stage is not None:
            return stage
    return "other"


# "ffffffff81000000 T _stext" or "ffffffffc0a01000 t veth_poll\t[veth]": text symbols only
def _network_syscall_set(machine: str) -> bytes:
    """`struct syscall_set` for this architecture; every bit set where the numbers are not known here."""
    numbers = _NETWORK_SYSCALLS.get(machine)
    if numbers is None:
        return b"\xff" * (_SYSCALL_SET_BITS // 8)
    return sum(1 << number for number in numbers).to_bytes(_SYSCALL_SET_BITS // 8, "little")


def _online_cpus() -> list[int]:
    try:
        with open("/sys/devices/system/cpu/online") as file:
            text = file.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _unavailable(error: Exception) -> CollectorUnavailable:
    from ..bpf.build import BpfObjectMissing
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
    name = "netstack"

    def __init__(self, frequency_hz: int = DEFAULT_FREQUENCY_HZ):
        if not isinstance(frequency_hz, int) or frequency_hz < 0 or frequency_hz > 100_000:
            raise ValueError(f"frequency_hz: expected 0-100000, got {frequency_hz!r}")
        self.frequency_hz = frequency_hz
        self._lock = threading.Lock()
        self._objects: list = []
        self._attachment = None
        self._error: CollectorUnavailable | None = None
        self._symbols: KernelSymbols | None = None
        self._stack_categories: dict[bytes, int] = {}  # raw stack -> category index
        self._category_samples = [0] * len(CATEGORIES)  # drained from the kernel, cumulative
        self._generation = 0
        self._function_at: dict[int, str] = {}  # frame address -> function name
        self._symbols_thread: threading.Thread | None = None
        try:
            self._load()
        except Exception as error:  # the exporter must never die for this collector
            self._error = _unavailable(error)
            return
        if self.frequency_hz:  # ready before the first scrape needs it, without delaying start-up
            self._symbols_thread = threading.Thread(target=self._build_symbols, name="netstack-kallsyms",
                                                    daemon=True)
            self._symbols_thread.start()

    def _build_symbols(self) -> None:
        try:
            self._symbols = KernelSymbols()
        except Exception:  # built again, and its error reported, by the scrape that needs the symbols
            pass

    def _load(self) -> None:
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise CollectorUnavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux): netstack needs a "
                                       "kernel built with CONFIG_DEBUG_INFO_BTF=y")
        from ..bpf import build, libbpf
        if self.frequency_hz and not kallsyms_shows_addresses():
            log.warning("netstack: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict; grant "
                        "CAP_SYSLOG or run as root): NET_RX stack sampling is off, CPU time is still measured")
            self.frequency_hz = 0
        time_path = str(build.object_path("netstack_time"))
        stacks_path = str(build.object_path("netstack_rx_stacks")) if self.frequency_hz else None
        self._ncpus = libbpf.possible_cpus()
        try:
            time_object = libbpf.BpfObject(time_path)
            self._objects.append(time_object)
            self._totals = time_object.map("totals")
            time_object.map("network_syscalls").update(struct.pack("=I", 0), _network_syscall_set(os.uname().machine))
            if stacks_path:
                stacks_object = libbpf.BpfObject(
                    stacks_path, reuse_maps={"softirq_state": time_object.map("softirq_state")})
                self._objects.append(stacks_object)
                self._generations = (stacks_object.map("samples_0"), stacks_object.map("samples_1"))
                self._generation_map = stacks_object.map("generation")
                self._unrecorded = stacks_object.map("unrecorded")
            self._attachment = self._attach()
        except BaseException:
            self._close_objects()
            raise

    def _attach(self):
        """Attach every program of the loaded objects (all or none): the Attachment that holds them."""
        from ..bpf import libbpf
        attachment = libbpf.Attachment()
        try:
            time_object, *stacks_object = self._objects  # netstack_time, then netstack_rx_stacks if sampling
            for program in _TIME_PROGRAMS:
                attachment.attach(time_object, program)
            if stacks_object:
                period_ns = max(1, 1_000_000_000 // self.frequency_hz)
                for cpu in _online_cpus():
                    attachment.attach_perf_event(stacks_object[0], "sample_net_rx",
                                                 libbpf.open_cpu_clock(cpu, period_ns))
        except BaseException:
            attachment.close()
            raise
        return attachment

    def _close_objects(self) -> None:
        while self._objects:
            self._objects.pop().close()

    def close(self) -> None:
        with self._lock:
            if self._attachment is not None:
                self._attachment.close()
                self._attachment = None
            self._close_objects()
            if self._error is None:
                self._error = CollectorUnavailable("netstack collector closed")

    def describe_families(self) -> list[Family]:
        return _families()

    def read(self) -> list[Family]:
        with self._lock:
            if self._error is not None:
                raise self._error
            seconds, invocations, samples = _families()
            self._read_totals(seconds.samples, invocations.samples)
            if not self.frequency_hz:
                return [seconds, invocations]
            self._read_samples(samples.samples)
            return [seconds, invocations, samples]

    def _read_totals(self, seconds: list, invocations: list) -> None:
        stride = 16  # struct totals {u64 nanoseconds; u64 invocations}, per CPU
        keys, values, count = self._totals.lookup_batch(stride * self._ncpus)
        online = set(_online_cpus())
        per_entry = {}
        for index, (entry,) in enumerate(struct.iter_unpack("<I", keys)):
            per_entry[entry] = values[index * stride * self._ncpus:(index + 1) * stride * self._ncpus]
        shown = [cpu for cpu in range(self._ncpus)
                 if cpu in online or any(struct.unpack_from("<QQ", blob, cpu * stride) != (0, 0)
                                         for blob in per_entry.values())]
        for entry_index, entry in enumerate(ENTRIES):
            blob = per_entry.get(entry_index)
            for cpu in shown:
                nanoseconds, calls = struct.unpack_from("<QQ", blob, cpu * stride) if blob else (0, 0)
                labels = (("cpu", str(cpu)), ("entry", entry))
                seconds.append(("_total", labels, nanoseconds / 1e9))
                invocations.append(("_total", labels, calls))

    def _read_samples(self, out: list) -> None:
        if self._symbols is None:  # before draining: a failure must leave the samples in the kernel
            if self._symbols_thread is not None:
                self._symbols_thread.join()
            if self._symbols is None:
                try:
                    self._symbols = KernelSymbols()  # raises what the background build met
                except KallsymsUnreadable as error:
                    raise CollectorUnavailable(str(error)) from None
        # Flip the generation the programs count into, then drain the other one: the kernel tables
        # only hold the stacks of one scrape interval and never fill up for good.
        drained = self._generations[self._generation]
        self._generation ^= 1
        self._generation_map.update(b"\0\0\0\0", struct.pack("<I", self._generation))
        time.sleep(0.001)  # a program that read the old generation finishes within microseconds
        keys, values, count = drained.lookup_and_delete_batch()
        totals = self._category_samples
        cache = self._stack_categories
        key_size = drained.key_size
        for index, (samples,) in enumerate(struct.iter_unpack("<Q", values)):
            stack = keys[index * key_size:(index + 1) * key_size]
            category = cache.get(stack)
            if category is None:
                if len(cache) >= _STACK_CACHE_SIZE:
                    cache.clear()
                category = cache[stack] = self._classify_stack(stack)
            totals[category] += samples
        unrecorded = self._unrecorded.lookup(b"\0\0\0\0")
        unrecorded_samples = struct.unpack("<Q", unrecorded)[0] if unrecorded else 0
        for index, (category, total) in enumerate(zip(CATEGORIES, totals)):
            out.append(("_total", (("category", category),), total + (unrecorded_samples if index == _OTHER else 0)))

    def _classify_stack(self, stack: bytes) -> int:
        functions = self._function_at
        if len(functions) >= _ADDRESS_CACHE_SIZE:
            functions.clear()
        return _CATEGORY_INDEX[classify(self._functions(struct.unpack(_STACK_FORMAT, stack)))]

    def _functions(self, addresses):
        """Function names of a stack's frames, innermost first, looked up lazily and cached by address."""
        cache = self._function_at
        function = self._symbols.function
        for address in addresses:
            if not address:
                return
            name = cache.get(address)
            if name is None:
                name = cache[address] = function(address) or "?"
            yield name


def _families() -> tuple[Family, Family, Family]:
    return (Family.counter("netio_netstack_cpu_seconds",
                   "CPU time of the network stack by CPU and entry (NET_RX/NET_TX softirq, send/receive "
                   "syscalls on IP sockets); the entries are exclusive in time and can be summed."),
            Family.counter("netio_netstack_invocations",
                   "Invocations of the network stack by CPU and entry (softirq runs, IP socket syscalls)."),
            Family.counter("netio_netstack_rx_samples",
                   "Kernel stack samples taken during the NET_RX softirq, by the stage they were in; the "
                   "categories are mutually exclusive and sum to all NET_RX samples."))


def _add_arguments(options: Flags) -> None:
    options.add("-f", "--frequency", dest="frequency", type=flags.bounded_int(0, 10000, "a sampling frequency in Hz"),
                metavar="HZ", default=DEFAULT_FREQUENCY_HZ,
                help="NET_RX stack-sampling frequency per CPU in Hz; 0 turns sampling off")


REGISTRATION = Registration(
    name="netstack", help="CPU time of NET_RX/NET_TX softirqs and socket send/receive syscalls, with eBPF "
                          "(reports itself unavailable without eBPF)",
    add_arguments=_add_arguments, build=lambda args: NetstackCollector(args.frequency))
