"""Fixtures: network namespaces the tests make (deleted at teardown) and running exporters (ended by pid).
The machinery itself is in tests/support, shared with bench/."""

from __future__ import annotations

import pytest

from tests.support import ExporterProcess, close_registered, require_namespaces, run, unique_name


@pytest.fixture
def netns():
    """Factory of network namespaces with loopback up; all deleted at teardown."""
    require_namespaces()
    made = []

    def make() -> str:
        name = unique_name("netio-t")
        run("ip", "netns", "add", name)
        made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def exporter():
    """Factory: ``exporter(ns, *flags)`` starts netio-exporter in ``ns``; all stopped at teardown."""
    started = []

    def start(ns: str, *args: str, **kwargs) -> ExporterProcess:
        process = ExporterProcess(ns, *args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def _close_registered():
    """What a test handed to tests.support.close_after_test is closed after it."""
    yield
    close_registered()
