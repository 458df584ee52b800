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
   A BPF program (``bpf_prog_*``) also takes its caller's stage: ``tc_classify`` from
   ``__netif_receive_skb_core``/``__dev_queue_xmit`` (where the tc and TCX hooks are inlined),
   ``xdp_generic`` from the generic XDP functions.
3. Markers (``_STAGE_FUNCTIONS`` below, by name with any ``.cold``/``.isra`` suffix stripped):
   ``xdp_generic`` generic XDP; ``tc_classify`` tc/tcx classifiers and actions; ``nf_conntrack``
   connection tracking; ``bridging`` the bridge (``br_*``); ``gro`` generic receive offload;
   ``nf_prerouting_v4/v6`` IP receive up to and including the route lookup (header checks, the
   PREROUTING hook, early demux, routing); ``forwarding_v4/v6`` ``ip_forward`` and what it calls,
   including the transmit to the next device; ``local_delivery_v4/v6`` ``ip_local_deliver``/``ip6_input``,
   the LOCAL_IN hook and the transport protocols (TCP, UDP, ICMP, raw) down to the socket, and what the
   local stack sends while it receives (TCP ACKs, ICMP replies: ``ip_local_out``, ``ip6_xmit``...);
   ``driver_poll`` NAPI and the driver's poll, the backlog, the core receive dispatch
   (``__netif_receive_skb_core``, packet taps) and ``net_rx_action`` itself: what is left when no
   more specific stage is on the stack.
4. The IP output path (``ip_output``, ``ip_finish_output2``, ``ip6_output``...: ``_IP_OUTPUT_STAGE``) is
   reached from ``ip_forward``/``ip6_forward`` by tail calls, so their frames are no longer on the
   stack: an output frame means ``forwarding_v*`` unless a local-delivery frame is further out (a
   reply the local stack sends), and a more specific stage inside it (conntrack, tc) still wins.
5. ``other``: the softirq's own entry and exit (the walk meets ``handle_softirqs`` before any marker:
   this includes the cost of the tracepoints that measure it) and stacks with no marker at all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["BPF_PROGRAM_PREFIX", "CATEGORIES", "classify", "stage_of_function"]

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
                         "ip_route_use_hint", "ip_route_input_mc", "ip_error", "tcp_v4_early_demux", "udp_v4_early_demux"),
    "nf_prerouting_v6": ("ipv6_rcv", "ip6_rcv_core", "ip6_rcv_finish", "ip6_rcv_finish_core", "ipv6_list_rcv",
                         "ip6_sublist_rcv", "ip6_list_rcv_finish", "ip6_route_input", "ip6_route_input_lookup",
                         "tcp_v6_early_demux", "udp_v6_early_demux"),
    "forwarding_v4": ("ip_forward", "ip_forward_finish"),
    "forwarding_v6": ("ip6_forward", "ip6_forward_finish"),
    "local_delivery_v4": ("ip_local_deliver", "ip_local_deliver_finish", "ip_protocol_deliver_rcu",
                          "tcp_v4_rcv", "tcp_v4_do_rcv", "udp_rcv", "__udp4_lib_rcv", "icmp_rcv", "raw_local_deliver",
                          "igmp_rcv", "udp_unicast_rcv_skb",
                          # what the local stack sends while it receives (TCP ACKs, ICMP replies)
                          "ip_local_out", "__ip_local_out", "ip_queue_xmit", "__ip_queue_xmit", "ip_send_skb",
                          "ip_push_pending_frames", "ip_build_and_send_pkt", "ip_send_unicast_reply"),
    "local_delivery_v6": ("ip6_input", "ip6_input_finish", "ip6_protocol_deliver_rcu", "tcp_v6_rcv",
                          "tcp_v6_do_rcv", "udpv6_rcv", "__udp6_lib_rcv", "icmpv6_rcv", "ip6_mc_input", "rawv6_rcv",
                          "ip6_xmit", "ip6_local_out", "__ip6_local_out", "ip6_send_skb", "ip6_push_pending_frames"),
}
_STAGE_PREFIXES = (  # checked after the exact names
    ("nf_conntrack_", "nf_conntrack"), ("__nf_conntrack_", "nf_conntrack"), ("nf_ct_", "nf_conntrack"),
    ("__nf_ct_", "nf_conntrack"), ("ipv4_conntrack", "nf_conntrack"), ("ipv6_conntrack", "nf_conntrack"),
    ("nf_confirm", "nf_conntrack"), ("ipv4_confirm", "nf_conntrack"), ("ipv6_confirm", "nf_conntrack"),
    ("br_", "bridging"), ("nbp_", "bridging"),
    ("cls_", "tc_classify"), ("tcf_", "tc_classify"), ("tcx_", "tc_classify"),
    ("napi_gro_", "gro"), ("dev_gro_", "gro"), ("gro_", "gro"), ("skb_gro_", "gro"), ("napi_skb_finish", "gro"),
)
# The IP output path. In NET_RX it sends what is forwarded, or what the local stack sends while it
# receives (then a local-delivery frame is further out). ip_forward and ip6_forward reach it by tail
# calls, so their own frames are gone from the stack by then.
_IP_OUTPUT_STAGE = {
    "ip_output": "forwarding_v4", "ip_finish_output": "forwarding_v4", "__ip_finish_output": "forwarding_v4",
    "ip_finish_output2": "forwarding_v4", "ip_fragment": "forwarding_v4", "ip_do_fragment": "forwarding_v4",
    "ip6_output": "forwarding_v6", "ip6_finish_output": "forwarding_v6", "__ip6_finish_output": "forwarding_v6",
    "ip6_finish_output2": "forwarding_v6", "ip6_fragment": "forwarding_v6",
}
# A BPF program's frame (bpf_prog_<tag>_<name>; symbols.py names all run-time generated code so, also
# programs kallsyms did not list when it was read) takes the stage of its caller, as a netfilter hook does. The tc
# ingress and egress hooks (sch_handle_ingress/egress, tcx_run) are inlined into these callers.
BPF_PROGRAM_PREFIX = "bpf_prog_"
_BPF_PROGRAM_STAGE_BY_CALLER = {
    "__netif_receive_skb_core": "tc_classify", "__dev_queue_xmit": "tc_classify",
    "bpf_prog_run_generic_xdp": "xdp_generic", "do_xdp_generic": "xdp_generic",
    "netif_receive_generic_xdp": "xdp_generic",
}
_LOCAL_DELIVERY = frozenset({"local_delivery_v4", "local_delivery_v6"})
_GRO_INFIXES = ("_gro_receive", "_gro_complete")
_NF_HOOKS = frozenset({"nf_hook_slow", "nf_hook_slow_list"})
_NF_HOOK_STAGE_BY_CALLER = {
    "__netif_receive_skb_core": "nf_ingress", "nf_hook_ingress": "nf_ingress",
    "ip_rcv": "nf_prerouting_v4", "ip_sublist_rcv": "nf_prerouting_v4", "ip_list_rcv": "nf_prerouting_v4",
    "ipv6_rcv": "nf_prerouting_v6", "ip6_sublist_rcv": "nf_prerouting_v6", "ipv6_list_rcv": "nf_prerouting_v6",
    "ip_local_deliver": "local_delivery_v4", "ip6_input": "local_delivery_v6",
    "ip_forward": "forwarding_v4", "ip6_forward": "forwarding_v6",
}
# The callers of net_rx_action: reached before it, the sample is in the softirq's own entry or exit
# (including the tracepoints that measure it), not in any receive stage.
_SOFTIRQ_BOUNDARY = frozenset({"handle_softirqs", "__do_softirq", "do_softirq", "run_ksoftirqd",
                               "irq_exit_rcu", "__irq_exit_rcu"})
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
    callee_stages = None  # after a netfilter hook or a BPF program: the stage its caller gives it
    output = None  # the forwarding stage of an IP output frame met, decided by what is further out
    for function in functions:
        name = _base_name(function)
        if name in _NF_HOOKS:
            callee_stages = _NF_HOOK_STAGE_BY_CALLER
            continue
        if name.startswith(BPF_PROGRAM_PREFIX):
            callee_stages = _BPF_PROGRAM_STAGE_BY_CALLER
            continue
        if callee_stages is not None:
            stage = callee_stages.get(name)
            callee_stages = None
            if stage is not None:
                return stage if output is None or stage in _LOCAL_DELIVERY else output
        if name in _SOFTIRQ_BOUNDARY:
            return output or "other"
        if output is None:
            output = _IP_OUTPUT_STAGE.get(name)
            if output is not None:
                continue
        stage = stage_of_function(name)
        if stage is not None:
            return stage if output is None or stage in _LOCAL_DELIVERY else output
    return output or "other"


