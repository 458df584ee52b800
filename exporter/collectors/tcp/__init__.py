"""tcp: connection states and the kernel's per-socket tcp_info totals, summed over every socket.

The unit is the socket (a loopback connection is two). Two ways to count, chosen once at start:
- kernel (kernel.py, whenever the eBPF programs load): every socket counts at its close and over a socket
  iterator at each scrape, so connections that open and close between two scrapes count in full;
- polling (polling.py, the fallback): sock_diag dumps at scrape time, which miss what a socket does after
  its last scrape, and short-lived connections entirely.
In both, the sockets open at start count from zero (a restart never spikes a rate), sockets that appear
later count in full. ``netio_tcp_accounting_info{method}`` says which method counts.
With ``--collector.netns``, every other network namespace is counted by the same method, with a ``netns``
label (kernel.py's NamespaceTotals: the close aggregates and a sock_diag dump of the namespace).
"""

from __future__ import annotations

import logging

from ...exposition import Family, format_value
from ...netlink.sock_diag import STATE_NAMES, TCP_INFO_COUNTER_NAMES
from ... import flags
from .. import Collector, Flags, Registration, namespaces
from .polling import SockDiagPolling
from .reading import RTT_BOUNDS_US

log = logging.getLogger("netio_exporter")

_PREFIX = "netio_tcp_"

# tcp_info counter -> (metric name without netio_tcp_ and _total, divisor to base units, help)
COUNTERS = {
    "total_retrans": ("retransmitted_segments", 1, "Segments retransmitted by TCP sockets (tcp_info total_retrans)."),
    "bytes_acked": ("acked_bytes", 1, "Bytes of TCP sockets acknowledged by their peers "
                                      "(tcp_info bytes_acked; a connect()'s SYN and a FIN count one each)."),
    "bytes_received": ("received_bytes", 1,
                       "Bytes received by TCP sockets (tcp_info bytes_received; a FIN counts one)."),
    "segs_out": ("sent_segments", 1, "Segments sent by TCP sockets (tcp_info segs_out)."),
    "segs_in": ("received_segments", 1, "Segments received by TCP sockets (tcp_info segs_in)."),
    "busy_time": ("busy_seconds", 1_000_000, "Time TCP sockets were busy sending data (tcp_info busy_time)."),
    "rwnd_limited": ("rwnd_limited_seconds", 1_000_000,
                     "Time TCP sockets were limited by the peer's receive window (tcp_info rwnd_limited)."),
    "sndbuf_limited": ("sndbuf_limited_seconds", 1_000_000,
                       "Time TCP sockets were limited by their send buffer (tcp_info sndbuf_limited)."),
    "bytes_sent": ("sent_bytes", 1, "Bytes sent by TCP sockets, retransmissions included (tcp_info bytes_sent)."),
    "bytes_retrans": ("retransmitted_bytes", 1, "Bytes retransmitted by TCP sockets (tcp_info bytes_retrans)."),
}
assert tuple(COUNTERS) == TCP_INFO_COUNTER_NAMES

STATES = ("established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
          "close", "close_wait", "last_ack", "listen", "closing")
METHODS = ("kernel", "polling")
_RTT_LE = tuple(format_value(bound / 1e6) for bound in RTT_BOUNDS_US)  # as generate_latest writes le


def _families() -> tuple[Family, list[Family], Family, Family, Family]:
    connections = Family.gauge(_PREFIX + "connections", "TCP sockets by state (a loopback connection is two).")
    counters = [Family.counter(_PREFIX + name, help) for name, _, help in COUNTERS.values()]
    closed = Family.counter(_PREFIX + "connections_closed",
                            "TCP sockets that closed, each once: at TCP_CLOSE (method kernel), or when it left "
                            "the dump or entered a state without tcp_info (method polling).")
    rtt = Family.gauge_histogram(_PREFIX + "rtt_seconds", "Smoothed round-trip time of established TCP sockets.")
    method = Family.info(_PREFIX + "accounting_info",
                         "How the TCP totals are counted: kernel (socket iterator and close hooks, short-lived "
                         "connections included) or polling (sock_diag at scrape time); the value is 1.")
    return connections, counters, closed, rtt, method


def _start_accounting(groups: int, group_of_port: dict[int, int], kernel: bool):
    """The kernel method if its programs load (and ``kernel``), else polling, said in one log line."""
    if kernel:
        try:
            from .kernel import KernelAccounting
            return KernelAccounting(groups, group_of_port)
        except Exception as error:  # no BPF, no BTF, no privileges, no compiled object: never fatal
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("tcp: eBPF accounting unavailable (%s): counting by sock_diag polling, whose totals "
                        "miss connections that open and close between two scrapes", reason)
    return SockDiagPolling(groups, group_of_port)


class TcpCollector(Collector):
    """With ``namespaces`` (``--collector.netns``) the same families also cover every other network
    namespace, each by the same method (``namespace_reader()`` of the accounting, made inside it) and with a
    ``netns`` label first; a namespace that vanished, or cannot be read, has no series."""

    name = "tcp"

    def __init__(self, local_ports: frozenset[int] | None = None, kernel: bool = True, namespaces=None):
        if local_ports:
            ports = sorted(local_ports)
            self._groups = [(("local_port", str(port)),) for port in ports] + [(("local_port", "other"),)]
            group_of_port = {port: index for index, port in enumerate(ports)}
        else:
            self._groups = [()]
            group_of_port = {}
        self._accounting = _start_accounting(len(self._groups), group_of_port, kernel)
        self.method = self._accounting.method
        self._namespaces = namespaces

    def close(self) -> None:
        self._accounting.close()

    def describe_families(self) -> list[Family]:
        connections, counters, closed, rtt, method = _families()
        return [connections, *counters[:self._accounting.width], closed, rtt, method]

    def read(self) -> list[Family]:
        connections, counters, closed, rtt, method = _families()
        counters = counters[:self._accounting.width]
        self._add(self._accounting.read(), self._groups, connections, counters, closed, rtt)
        if self._namespaces is not None:
            for namespace, readings in self._namespaces.read_each("tcp", self._accounting.namespace_reader,
                                                                  lambda reader: reader.read()):
                netns = (("netns", namespace.label),)
                self._add(readings, [netns + group for group in self._groups], connections, counters, closed, rtt)
        method.add((("method", self.method),))
        return [connections, *counters, closed, rtt, method]

    @staticmethod
    def _add(readings: list, groups: list, connections: Family, counters: list[Family], closed: Family,
             rtt: Family) -> None:
        divisors = [divisor for _, divisor, _ in COUNTERS.values()]
        for group, reading in zip(groups, readings):
            by_name = dict.fromkeys(STATES, 0)
            for state, name in STATE_NAMES.items():
                by_name[name] += reading.states[state]
            for name in STATES:
                connections.add(group + (("state", name),), by_name[name])
            for family, total, divisor in zip(counters, reading.counters, divisors):
                family.add(group, total if divisor == 1 else total / divisor)
            closed.add(group, reading.closed)
            cumulative, buckets = 0, []
            for le, count in zip(_RTT_LE + ("+Inf",), reading.rtt_buckets):
                cumulative += count
                buckets.append((le, cumulative))
            rtt.add_histogram(group, buckets, cumulative, reading.rtt_sum_us / 1e6)


def _add_arguments(options: Flags) -> None:
    options.add("--collector.tcp.local-ports", dest="local_ports", type=flags.port_list, metavar="LIST",
                help="comma-separated local ports: adds a local_port label (these ports, else 'other') to the "
                     "TCP metrics; off by default to keep cardinality fixed")


REGISTRATION = Registration(
    name="tcp", help="TCP connection states and tcp_info totals: eBPF socket iterator and close hooks "
                     "(short-lived connections included), else sock_diag polling",
    add_arguments=_add_arguments, build=lambda args: TcpCollector(args.local_ports, namespaces=namespaces(args)))
