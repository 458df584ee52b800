"""The metric contract of ../shared/DESIGN.md as data, and the PromQL scanners the dashboard and
deploy tests check queries with."""

from __future__ import annotations

import itertools
import re


def _expand(*patterns: str) -> set[str]:
    """``"a_{b,c}_d"`` -> ``{"a_b_d", "a_c_d"}`` (brace expansion, as DESIGN.md writes the names)."""
    names = set()
    for pattern in patterns:
        parts = re.split(r"\{([^}]*)\}", pattern)
        choices = [[part] if i % 2 == 0 else part.split(",") for i, part in enumerate(parts)]
        names.update("".join(combination) for combination in itertools.product(*choices))
    return names


# The metric contract of DESIGN.md: the names and labels a dashboard or alert may use, by collector
# (None: the exporter's own metrics, always exported).
CONTRACT: dict[str | None, set[str]] = {
    "link": _expand(
        "netio_network_{receive,transmit}_{bytes,packets,errors,dropped}_total",
        "netio_network_receive_multicast_total", "netio_network_transmit_collisions_total",
        "netio_network_receive_{length,over,crc,frame,fifo,missed}_errors_total",
        "netio_network_transmit_{aborted,carrier,fifo,heartbeat,window}_errors_total",
        "netio_network_{receive,transmit}_compressed_total", "netio_network_receive_nohandler_total",
        "netio_network_receive_otherhost_dropped_total", "netio_network_up", "netio_network_mtu_bytes",
        "netio_network_carrier_changes_total", "netio_network_info"),
    "tcp": _expand(
        "netio_tcp_connections", "netio_tcp_{sent,acked,received,retransmitted}_bytes_total",
        "netio_tcp_{sent,received,retransmitted}_segments_total",
        "netio_tcp_{busy,rwnd_limited,sndbuf_limited}_seconds_total", "netio_tcp_connections_closed_total",
        "netio_tcp_rtt_seconds_{bucket,gcount,gsum}", "netio_tcp_accounting_info"),
    "netstack": _expand("netio_netstack_{cpu_seconds,invocations,rx_samples,rx_samples_lost}_total",
                        "netio_netstack_rx_sampling_cpus"),
    "mac": _expand("netio_mac_{download,upload}_{bytes,packets}_total", "netio_mac_info",
                   "netio_mac_untracked_{bytes,packets}_total", "netio_mac_table_{entries,max_entries}"),
    "netns": _expand("netio_netns_info", "netio_netns_skipped_total"),
    "drops": {"netio_drops_total"},
    "netstat": _expand("netio_netstat_tcpext_listenoverflows_total", "netio_netstat_udp{,6}_rcvbuferrors_total",
                       "netio_netstat_tcp_retranssegs_total", "netio_netstat_tcp_currestab"),
    "softnet": _expand("netio_softnet_{processed,dropped,time_squeeze,received_rps,flow_limit_count}_total",
                       "netio_softnet_backlog_len"),
    "sockstat": _expand("netio_sockstat_{sockets_used,inuse,orphan,tw,alloc,memory_bytes}"),
    "tcp_archive": _expand("netio_tcp_archive_{records,bytes_written,files,deleted_files,errors,dropped_records}_total",
                           "netio_tcp_archive_size_bytes", "netio_tcp_archive_method_info",
                           "netio_tcp_archive_poll_duration_seconds_{bucket,count,sum}"),
    None: _expand("netio_exporter_build_info", "netio_scrape_collector_{success,duration_seconds}",
                  "process_{cpu_seconds_total,resident_memory_bytes,virtual_memory_bytes,open_fds,max_fds}",
                  "process_start_time_seconds", "up", "scrape_duration_seconds"),
    # Always on, but without series while no eBPF program is loaded.
    "bpf_programs": {"netio_bpf_program_missed_runs_total"},
    # Not the exporter's: kube-state-metrics, for the DaemonSet's alert.
    "kube-state-metrics": {"kube_daemonset_status_number_unavailable"},
}
CONTRACT_LABELS = {
    "device", "address", "operstate", "ifalias", "kind",  # link
    "state", "local_port", "le",  # tcp
    "cpu", "entry", "category", "reason",  # netstack
    "mac", "ipv4", "ipv6",  # mac
    "method",  # tcp accounting, tcp archive
    "netns", "inode",  # netns (reason: above)
    "function",  # drops (reason: above)
    "protocol",  # sockstat
    "version", "collector", "program",  # self
    "namespace", "daemonset",  # kube-state-metrics
    "host", "instance", "job",  # Prometheus: the target's labels (host by relabelling)
}
COLLECTOR_OF = {name: collector for collector, names in CONTRACT.items() for name in names}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:netio|process|kube)_[a-z0-9_]+)\b", expr))
    names.update(re.findall(r"(?<![\w.])(up|scrape_duration_seconds)\s*[{\[]", expr))
    return names


def label_names(expr: str) -> set[str]:
    labels = set()
    for matchers in re.findall(r"\{([^{}]*)\}", re.sub(r"\{\{.*?\}\}", "", expr)):
        labels.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in grouping.split(",") if label.strip())
    labels.update(re.findall(r"label_values\(.*,\s*(\w+)\s*\)", expr))
    return labels
