"""netstack: CPU cost of the kernel network stack, measured by eBPF (exporter/bpf/netstack_*.bpf.c).

``netio_netstack_cpu_seconds_total{cpu,entry}`` and ``netio_netstack_invocations_total{cpu,entry}``:
``net_rx_softirq`` and ``net_tx_softirq`` from softirq entry to exit, always; with
``--collector.netstack.syscalls`` also ``tx_syscall`` and ``rx_syscall``, the syscalls that entered the
send/receive path of an AF_INET/AF_INET6 socket (the sock_send_length/sock_recv_length tracepoints),
whatever their number or result. Without the flag no program runs on sys_enter or sched_switch and the
syscall series are absent. The entries are exclusive in time: NET softirqs running inline in a syscall
and the time a task is switched out are taken out of the syscall's clock, so they can be summed. A
syscall's time is charged to the CPU it finished its socket call on. Hardirqs and non-network softirqs
that interrupt a syscall stay in its time. Counters are 64-bit nanoseconds in the kernel: no wrap.

``netio_netstack_rx_samples_total{category}``: a cpu-clock perf event on every online CPU (CPUs that
come online later are armed at the next scrape) samples at ``-f`` Hz (fixed period); a sample taken
while the CPU runs the NET_RX softirq records the kernel stack. Each distinct stack is symbolised once
(``symbols.py``: kallsyms, read again when /proc/modules changes) and put in exactly one category
(``stages.py``), so the categories sum to the recorded samples; samples that could not be recorded count
in ``netio_netstack_rx_samples_lost_total{reason}``. ``netio_netstack_rx_sampling_cpus`` shows how many
CPUs are sampled (0 when kallsyms hides addresses).

Modules: ``stages`` (categories and the classifier), ``syscalls`` (the per-architecture syscall
tables), ``symbols`` (kernel symbols and online CPUs), ``programs`` (load, attach, drain) and
``collector``. The programs load when the collector is constructed; if that fails (no root or
capabilities, no BTF, no libbpf, no compiled objects) ``read()`` raises ``CollectorUnavailable`` with
one message saying what is missing, and the exporter goes on without it. Closing, exiting or being
killed detaches everything: the kernel objects live as long as this process's fds.
"""

from __future__ import annotations

from ... import flags
from .. import Flags, Registration
from .collector import DEFAULT_FREQUENCY_HZ, NetstackCollector
from .programs import ENTRIES, LOST_REASONS
from .stages import CATEGORIES, classify

__all__ = ["CATEGORIES", "DEFAULT_FREQUENCY_HZ", "ENTRIES", "LOST_REASONS", "NetstackCollector", "REGISTRATION",
           "classify"]


def _add_arguments(options: Flags) -> None:
    options.add("-f", "--frequency", dest="frequency", type=flags.bounded_int(0, 10000, "a sampling frequency in Hz"),
                metavar="HZ", default=DEFAULT_FREQUENCY_HZ,
                help="NET_RX stack-sampling frequency per CPU in Hz; 0 turns sampling off")
    options.add("--collector.netstack.syscalls", dest="netstack_syscalls", action="store_true",
                help="netstack: also measure send/receive syscalls on IP sockets (tx_syscall, rx_syscall); "
                     "costs every syscall and context switch of the host a program run")


REGISTRATION = Registration(
    name="netstack", help="CPU time of the NET_RX/NET_TX softirqs and what NET_RX spends it on (with "
                          "--collector.netstack.syscalls also socket send/receive syscalls), with eBPF "
                          "(reports itself unavailable without eBPF)",
    add_arguments=_add_arguments,
    build=lambda args: NetstackCollector(args.frequency, syscalls=bool(args.netstack_syscalls)))
