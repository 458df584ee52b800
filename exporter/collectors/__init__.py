"""Collectors: one module per kernel interface, and the scrape that runs them.

A collector subclasses ``Collector``: it names itself, declares its families in ``describe_families()``
(no kernel access) and reads the kernel in ``read()``, raising on failure. ``Scrape`` runs the enabled
collectors, isolates their failures and adds the exporter's own metrics. Both follow the
prometheus_client Collector protocol, so either can be registered in any registry.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import __version__
from ..exposition import Family, to_metric

log = logging.getLogger("netio_exporter")


class CollectorUnavailable(Exception):
    """The collector cannot run here (privileges, kernel features); the message says what is missing."""


class Collector:
    name = ""

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

    def __init__(self, collectors: list[Collector]):
        self.collectors = collectors
        self._last_errors: dict[str, str | None] = {}
        self._log_lock = threading.Lock()

    def families(self) -> list[Family]:
        families: list[Family] = []
        success, duration = _scrape_families()
        for collector in self.collectors:
            labels = (("collector", collector.name),)
            start = time.perf_counter()
            try:
                families.extend(collector.read())
                ok = 1
                self._note(collector.name, None)
            except Exception as error:  # a collector's failure must not end the scrape
                ok = 0
                self._note(collector.name, _describe_error(error))
            duration.samples.append(("", labels, time.perf_counter() - start))
            success.samples.append(("", labels, ok))
        families.append(_build_info())
        families.append(success)
        families.append(duration)
        return families

    def _note(self, name: str, error: str | None) -> None:
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
        for collector in self.collectors:
            collector.close()

    # prometheus_client Collector protocol
    def describe(self):
        families = [family for collector in self.collectors for family in collector.describe_families()]
        families += [_build_info(), *_scrape_families()]
        return [to_metric(family) for family in families]

    def collect(self):
        return [to_metric(family) for family in self.families()]


def _build_info() -> Family:
    return Family("netio_exporter_build_info", "gauge", "netio-exporter's version; the value is always 1.",
                  [("", (("version", __version__),), 1)])


def _scrape_families() -> tuple[Family, Family]:
    return (Family("netio_scrape_collector_success", "gauge",
                   "Whether the collector's read of the kernel succeeded (1) or failed (0) in this scrape."),
            Family("netio_scrape_collector_duration_seconds", "gauge",
                   "How long the collector's read of the kernel took in this scrape."))


def _describe_error(error: Exception) -> str:
    if isinstance(error, CollectorUnavailable):
        return str(error)
    if isinstance(error, PermissionError):
        return f"permission denied ({error}); run as root or grant the capabilities the README lists"
    return f"{type(error).__name__}: {error}"
