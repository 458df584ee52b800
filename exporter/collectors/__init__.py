"""Collectors: one module per kernel interface, the registry that wires them, and the scrape that runs them.

A collector subclasses ``Collector``: it names itself, declares its families in ``describe_families()``
(no kernel access) and reads the kernel in ``read()``, raising on failure. ``Scrape`` runs the enabled
collectors, isolates their failures and adds the exporter's own metrics. Both follow the
prometheus_client Collector protocol, so either can be registered in any registry.

Adding a collector: write ``collectors/NAME.py`` with its ``Collector`` subclass and a module-level
``REGISTRATION = Registration(...)`` (name, help, default, flags, build), then add ``"NAME"`` to
``COLLECTORS`` below. The command line (``--collector.NAME``/``--no-collector.NAME``, the collector's own
flags, the checks that its flags are not given while it is off, the help text) and construction follow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from ..exposition import Family, Template, to_metric

log = logging.getLogger("netio_exporter")

# The collectors with flags, in the order of --help, /metrics and the landing page.
COLLECTORS = ("link", "tcp", "tcp_archive", "netstack", "drops", "mac", "netstat", "softnet", "sockstat",
              "netns")
# Always on, no flag and no success series: the exporter's own figures.
SELF_COLLECTORS = ("process", "bpf_programs")


class Flags:
    """The flags of one collector, added to its argument group.

    Every flag's argparse default is None, so the command line can tell a flag given from one left at
    its default: ``default`` is filled in after parsing (and shown in ``--help``). ``dest`` names
    the attribute ``build`` reads.
    """

    def __init__(self, group, registration: Registration):
        self._group = group
        self.registration = registration
        self.flags: dict[str, str] = {}  # dest -> the flag as users write it
        self.defaults: dict[str, object] = {}

    def add(self, *names: str, dest: str, help: str, default=None, **kwargs) -> None:
        if default is not None:
            help = f"{help} (default {default:g})" if isinstance(default, float) else f"{help} (default {default})"
        self._group.add_argument(*names, dest=dest, default=None, help=help, **kwargs)
        self.flags[dest] = max(names, key=len)
        self.defaults[dest] = default

    def exclusive(self) -> Flags:
        """Flags of which at most one may be given."""
        flags = Flags(self._group.add_mutually_exclusive_group(), self.registration)
        flags.flags, flags.defaults = self.flags, self.defaults  # one record for the collector
        return flags


@dataclass(frozen=True)
class Command:
    """A subcommand (``netio-exporter NAME ...``) a collector brings: its parser and what runs it."""
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Registration:
    """How the command line knows a collector.

    ``build(args)`` makes the collector from the parsed flags (defaults filled in). ``default``: on
    unless ``--no-collector.NAME``; ``enabled_by`` names a flag (its dest) whose presence turns an
    otherwise-off collector on (mac: ``--collector.mac.device``). ``check(args)`` returns an error
    message for combinations argparse cannot see, or None. ``log_mode``: the collector also runs in
    log mode (-l); the flags of the others are refused there. ``commands``: subcommands it brings.
    """
    name: str
    help: str
    build: Callable[[argparse.Namespace], Collector]
    default: bool = True
    add_arguments: Callable[[Flags], None] | None = None
    check: Callable[[argparse.Namespace], str | None] | None = None
    enabled_by: str | None = None
    log_mode: bool = False
    commands: tuple[Command, ...] = field(default=())
    switch: bool = True  # False: no --collector.NAME/--no-collector.NAME pair (enabled_by alone turns it on)


def registrations() -> list[Registration]:
    """The registered collectors, in ``COLLECTORS`` order."""
    return [importlib.import_module(f"{__name__}.{name}").REGISTRATION for name in COLLECTORS]


def namespaces(args: argparse.Namespace):
    """The network namespaces every collector that reports per namespace shares (one discovery, one
    opener thread), when ``--collector.netns`` is on; else None."""
    if not getattr(args, "collector_netns", None):
        return None
    shared = getattr(args, "_namespaces", None)
    if shared is None:
        from ..netlink.namespaces import Namespaces
        shared = args._namespaces = Namespaces(args.netns_include)
    return shared


def self_collectors() -> list[Collector]:
    from .bpf_programs import BpfProgramsCollector
    from .process import ProcessCollector
    return [ProcessCollector(), BpfProgramsCollector()]


class CollectorUnavailable(Exception):
    """The collector cannot run here (privileges, kernel features); the message says what is missing."""


class Collector:
    name = ""
    # Capabilities read() still uses once the collector is built; exporter.privileges drops the rest.
    capabilities_after_start: tuple[str, ...] = ()

    def describe_families(self) -> list[Family]:
        raise NotImplementedError

    def read(self) -> list[Family]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # prometheus_client Collector protocol
    def describe(self):
        return [to_metric(family) for family in self.describe_families()]

    def collect(self):
        return [to_metric(family) for family in self.read()]


class Scrape:
    """Runs collectors on demand and reports ``netio_scrape_collector_*`` and build info.

    A collector that raises is reported with success 0 and logged once per distinct error;
    the others are unaffected. Safe to call from several threads at once.
    """

    def __init__(self, collectors: list[Collector], self_collectors: list[Collector] | None = None):
        self.collectors = collectors
        self.self_collectors = [] if self_collectors is None else self_collectors
        self._last_errors: dict[str, str | None] = {}
        self._log_lock = threading.Lock()
        names = [family.name for family in self._described()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"families exported by more than one collector: {', '.join(duplicates)}")

    def families(self) -> list[Family]:
        families: list[Family] = []
        build_info, success, duration = _OWN_FAMILIES.new()
        for collector in self.collectors:
            labels = (("collector", collector.name),)
            start = time.perf_counter()
            read, error = self.read(collector)
            families.extend(read)
            duration.add(labels, time.perf_counter() - start)
            success.add(labels, 0 if error else 1)
        build_info.add(_BUILD_INFO_LABELS)
        families += (build_info, success, duration)
        for collector in self.self_collectors:
            families.extend(self.read(collector)[0])
        return families

    def read(self, collector: Collector) -> tuple[list[Family], str | None]:
        """One collector's families and None, or no families and why it failed (logged once per distinct
        error). The live page's sampler and the jsonl log read through here too."""
        try:
            families = collector.read()
        except Exception as error:  # a collector's failure must not end the scrape
            message = _describe_error(error)
            self._note(collector.name, message)
            return [], message
        self._note(collector.name, None)
        return families, None

    def _note(self, name: str, error: str | None) -> None:
        if self._last_errors.get(name) == error:  # most scrapes: as before (no lock needed to see that)
            return
        with self._log_lock:
            previous = self._last_errors.get(name)
            if error == previous:
                return
            self._last_errors[name] = error
        if error is not None:
            log.error("collector %s failed: %s", name, error)
        elif previous is not None:
            log.info("collector %s recovered", name)

    def close(self) -> None:
        for collector in self.collectors + self.self_collectors:
            collector.close()

    def _described(self) -> list[Family]:
        families = [family for collector in self.collectors for family in collector.describe_families()]
        families += _own_families()
        return families + [family for collector in self.self_collectors for family in collector.describe_families()]

    # prometheus_client Collector protocol
    def describe(self):
        return [to_metric(family) for family in self._described()]

    def collect(self):
        return [to_metric(family) for family in self.families()]


def _own_families() -> list[Family]:
    """The scrape's own: build info, then each collector's success and duration."""
    return [Family.info("netio_exporter_build_info", "netio-exporter's version; the value is always 1."),
            Family.gauge("netio_scrape_collector_success",
                         "Whether the collector's read of the kernel succeeded (1) or failed (0) in this scrape."),
            Family.gauge("netio_scrape_collector_duration_seconds",
                         "How long the collector's read of the kernel took in this scrape.")]


_OWN_FAMILIES = Template(_own_families())
_BUILD_INFO_LABELS = (("version", __version__),)


def _describe_error(error: Exception) -> str:
    if isinstance(error, CollectorUnavailable):
        return str(error)
    if isinstance(error, PermissionError):
        return f"permission denied ({error}); run as root or grant the capabilities the README lists"
    return f"{type(error).__name__}: {error}"
