"""The NET_RX stages: which category a sampled kernel stack belongs to.

Each stack (function names, innermost frame first) goes into exactly one category, so the categories
sum to the recorded NET_RX samples. The rule:

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
   this includes the cost of the tracepoints that measure it) and stacks with no marker at all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["CATEGORIES", "classify", "stage_of_function"]

CATEGORIES = ("driver_poll", "gro", "xdp_generic", "tc_classify", "nf_ingress", "nf_conntrack", "bridging",
              "nf_prerouting_v4", "nf_prerouting_v6", "forwarding_v4", "forwarding_v6",
              "local_delivery_v4", "local_delivery_v6", "other")

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


