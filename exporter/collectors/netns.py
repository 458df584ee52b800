"""netns: the host's other network namespaces (containers, pods, ``ip netns`` ones), for the collectors
that report per namespace with a ``netns`` label (link and tcp).

This collector turns the per-namespace view on (``--collector.netns``, off by default) and reports the
namespaces themselves: ``netio_netns_info{netns,inode}`` and what could not be covered,
``netio_netns_skipped_total{reason}``. Discovery and the readers made inside each namespace live in
exporter/netlink/namespaces.py, shared by the collectors of a scrape.
"""

from __future__ import annotations

from .. import flags
from ..exposition import Family
from . import Collector, Flags, Registration, namespaces


def _families() -> tuple[Family, Family]:
    return (Family.info("netio_netns_info", "Network namespaces the per-namespace series cover: netns is the "
                                            "label they carry, inode the namespace's inode; the value is 1."),
            Family.counter("netio_netns_skipped", "Network namespaces (or processes whose namespace could not be "
                                                  "read) left out, by reason: permission, gone, error."))


class NetnsCollector(Collector):
    name = "netns"
    # Discovery reads other users' /proc/PID/ns/net (CAP_SYS_PTRACE); a namespace found later is entered
    # with setns (CAP_SYS_ADMIN).
    capabilities_after_start = ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE")

    def __init__(self, shared):
        self._namespaces = shared

    def describe_families(self) -> list[Family]:
        return list(_families())

    def read(self) -> list[Family]:
        info, skipped = _families()
        for namespace in self._namespaces.current():
            info.add((("netns", namespace.label), ("inode", str(namespace.inode))))
        for reason, count in sorted(self._namespaces.skipped.items()):
            skipped.add((("reason", reason),), count)
        return [info, skipped]

    def close(self) -> None:
        self._namespaces.close()


def _add_arguments(options: Flags) -> None:
    options.add("--collector.netns.include", dest="netns_include", type=flags.regex, metavar="RE",
                help="only namespaces whose netns label fully matches RE (a /run/netns name, pod:<uid>, "
                     "container:<id> or inode:<n>)")


REGISTRATION = Registration(
    name="netns", help="link and TCP figures of every other network namespace (containers, pods), with a netns "
                       "label; needs CAP_SYS_ADMIN and CAP_SYS_PTRACE", default=False,
    add_arguments=_add_arguments, build=lambda args: NetnsCollector(namespaces(args)))
