"""sockstat collector: the parser on recorded files, and TCP and UDP socket counts moving by exactly the
sockets a test opens in a namespace of its own (inuse, tw and ``sockets used`` are per namespace)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import in_netns, samples, value
from exporter.collectors.sockstat import SockstatCollector
from exporter.exposition import render_text
from exporter.procfs.sockstat import Sockstat, parse_sockstat

# Recorded on Linux 6.18.
SOCKSTAT = b"""\
sockets: used 15
TCP: inuse 1 orphan 2 tw 3 alloc 4 mem 206
UDP: inuse 5 mem 249
UDPLITE: inuse 0
RAW: inuse 1
FRAG: inuse 2 memory 4096
"""
SOCKSTAT6 = b"""\
TCP6: inuse 6
UDP6: inuse 0
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
"""


def test_pages_become_bytes_and_frag_memory_is_bytes_already():
    stat = parse_sockstat(SOCKSTAT6, 4096, parse_sockstat(SOCKSTAT, 4096))
    assert stat == Sockstat(15, {
        "TCP": {"inuse": 1, "orphan": 2, "tw": 3, "alloc": 4, "memory_bytes": 206 * 4096},
        "UDP": {"inuse": 5, "memory_bytes": 249 * 4096}, "UDPLITE": {"inuse": 0}, "RAW": {"inuse": 1},
        "FRAG": {"inuse": 2, "memory_bytes": 4096}, "TCP6": {"inuse": 6}, "UDP6": {"inuse": 0},
        "UDPLITE6": {"inuse": 0}, "RAW6": {"inuse": 0}, "FRAG6": {"inuse": 0, "memory_bytes": 0}})


def test_keys_of_later_kernels_are_left_out():
    assert parse_sockstat(b"TCP: inuse 1 pressure 0\n", 4096) == Sockstat(None, {"TCP": {"inuse": 1}})


@pytest.mark.parametrize("data", [b"TCP inuse 1\n", b"TCP: inuse\n", b"TCP: inuse x\n"])
def test_malformed_lines_are_refused(data):
    with pytest.raises(ValueError):
        parse_sockstat(data, 4096)


def test_families(tmp_path):
    (tmp_path / "sockstat").write_bytes(SOCKSTAT)
    (tmp_path / "sockstat6").write_bytes(SOCKSTAT6)
    collector = SockstatCollector(str(tmp_path))
    text = render_text(collector.read()).decode()
    parsed = samples(text)
    assert value(parsed, "netio_sockstat_sockets_used") == 15
    assert value(parsed, "netio_sockstat_inuse", protocol="TCP6") == 6
    assert value(parsed, "netio_sockstat_tw", protocol="TCP") == 3
    assert value(parsed, "netio_sockstat_memory_bytes", protocol="UDP") == 249 * collector._page_size
    assert value(parsed, "netio_sockstat_memory_bytes", protocol="RAW") is None  # RAW has no memory field
    assert value(parsed, "netio_sockstat_orphan", protocol="UDP") is None
    assert "# TYPE netio_sockstat_inuse gauge" in text
    assert [family.name for family in collector.describe_families()] == [
        "netio_sockstat_sockets_used", "netio_sockstat_inuse", "netio_sockstat_orphan", "netio_sockstat_tw",
        "netio_sockstat_alloc", "netio_sockstat_memory_bytes"]


def _sockstat(collector: SockstatCollector, ns: str) -> dict:
    with in_netns(ns):
        return samples(render_text(collector.read()).decode())


def test_tcp_inuse_and_time_wait_move_by_the_sockets_opened(netns):
    """A listener and K accepted connections are 1 + 2K TCP sockets; closing the clients first leaves K
    in TIME_WAIT (counted in tw, not in inuse)."""
    ns = netns()
    collector = SockstatCollector("/proc/thread-self/net")
    connections = 7
    before = _sockstat(collector, ns)
    with in_netns(ns):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(connections)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(connections)]
        servers = [listener.accept()[0] for _ in range(connections)]
        datagram_sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    opened = _sockstat(collector, ns)
    for sock in clients + servers:  # clients first: they close actively and enter TIME_WAIT
        sock.close()
    deadline = time.monotonic() + 5
    while True:
        closed = _sockstat(collector, ns)
        if value(closed, "netio_sockstat_tw", protocol="TCP") == connections or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    listener.close()
    for sock in datagram_sockets:
        sock.close()

    def moved(after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(opened, "netio_sockstat_inuse", protocol="TCP") == 1 + 2 * connections
    assert moved(opened, "netio_sockstat_inuse", protocol="UDP") == 0  # unbound datagram sockets are not hashed
    assert moved(opened, "netio_sockstat_sockets_used") == 1 + 2 * connections + 3
    assert moved(closed, "netio_sockstat_inuse", protocol="TCP") == 1  # the listener alone
    assert moved(closed, "netio_sockstat_tw", protocol="TCP") == connections
