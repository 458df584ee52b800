"""softnet collector: the parser on rows of every layout the kernel has written, and live values under
traffic the test sends (softnet_stat is the whole host's: other traffic only adds)."""

from __future__ import annotations

import socket

import pytest

from tests.support import in_netns, samples, value
from exporter.collectors.softnet import SoftnetCollector
from exporter.exposition import render_text
from exporter.procfs.softnet import Softnet, parse_softnet

ZEROS6 = "00000000 " * 6
# Linux 2.6.32 (9 columns: no received_rps), 2.6.35-3.10 (10), 3.11-5.9 (11, flow_limit_count).
OLD_9 = f"0000a2c6 00000002 00000003 {ZEROS6}\n0001b000 00000000 00000001 {ZEROS6}\n".encode()
OLD_10 = f"0000a2c6 00000002 00000003 {ZEROS6}0000000a\n".encode()
OLD_11 = f"0000a2c6 00000002 00000003 {ZEROS6}0000000a 00000004\n".encode()
# Linux 5.10-6.x (13: backlog length and cpu id); CPU 1 offline, so the rows are CPUs 0 and 2.
ROWS_13 = (f"0000a2c6 00000002 00000003 {ZEROS6}0000000a 00000004 00000007 00000000\n"
           f"ffffffff 00000000 00000000 {ZEROS6}00000000 00000000 00000000 00000002\n").encode()
# This kernel (6.18, 15 columns: input and process queue lengths apart), recorded.
ROWS_15 = b"""\
001307dc 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
0015b0b0 00000011 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000000 00000005 00000001 00000004 00000001
"""


@pytest.mark.parametrize("data, expected", [
    (OLD_9, Softnet((0, 1), {"processed": (0xa2c6, 0x1b000), "dropped": (2, 0), "time_squeeze": (3, 1)})),
    (OLD_10, Softnet((0,), {"processed": (0xa2c6,), "dropped": (2,), "time_squeeze": (3,), "received_rps": (10,)})),
    (OLD_11, Softnet((0,), {"processed": (0xa2c6,), "dropped": (2,), "time_squeeze": (3,), "received_rps": (10,),
                            "flow_limit_count": (4,)})),
    (ROWS_13, Softnet((0, 2), {"processed": (0xa2c6, 0xffffffff), "dropped": (2, 0), "time_squeeze": (3, 0),
                               "received_rps": (10, 0), "flow_limit_count": (4, 0), "backlog_len": (7, 0)})),
    (ROWS_15, Softnet((0, 1), {"processed": (0x1307dc, 0x15b0b0), "dropped": (0, 0x11), "time_squeeze": (0, 2),
                               "received_rps": (0, 3), "flow_limit_count": (0, 0), "backlog_len": (0, 5)})),
], ids=["9 columns", "10 columns", "11 columns", "13 columns", "15 columns"])
def test_rows_are_read_by_their_column_count(data, expected):
    assert parse_softnet(data) == expected


@pytest.mark.parametrize("data", [b"00000001 00000002\n", b"zz " * 13 + b"\n"])
def test_malformed_rows_are_refused(data):
    with pytest.raises(ValueError):
        parse_softnet(data)


def test_families_label_cpu_and_leave_out_what_the_kernel_lacks(tmp_path):
    (tmp_path / "softnet_stat").write_bytes(ROWS_13)
    parsed = samples(render_text(SoftnetCollector(str(tmp_path)).read()).decode())
    assert value(parsed, "netio_softnet_processed_total", cpu="2") == 0xffffffff
    assert value(parsed, "netio_softnet_dropped_total", cpu="0") == 2
    assert value(parsed, "netio_softnet_time_squeeze_total", cpu="0") == 3
    assert value(parsed, "netio_softnet_received_rps_total", cpu="0") == 10
    assert value(parsed, "netio_softnet_flow_limit_count_total", cpu="0") == 4
    assert value(parsed, "netio_softnet_backlog_len", cpu="0") == 7
    assert value(parsed, "netio_softnet_processed_total", cpu="1") is None  # offline: no row
    (tmp_path / "softnet_stat").write_bytes(OLD_9)
    names = {family.name for family in SoftnetCollector(str(tmp_path)).read()}
    assert names == {"netio_softnet_processed", "netio_softnet_dropped", "netio_softnet_time_squeeze"}


def _online_cpus() -> set[str]:
    cpus = set()
    with open("/sys/devices/system/cpu/online") as online:
        for part in online.read().strip().split(","):
            low, _, high = part.partition("-")
            cpus.update(str(cpu) for cpu in range(int(low), int(high or low) + 1))
    return cpus


def test_live_values_move_under_traffic(netns):
    """Loopback packets pass through the backlog of the sending CPU: processed grows by at least the
    datagrams sent, summed over CPUs."""
    collector = SoftnetCollector()
    datagrams = 500

    def processed():
        parsed = samples(render_text(collector.read()).decode())
        per_cpu = {dict(labels)["cpu"]: number for (name, labels), number in parsed.items()
                   if name == "netio_softnet_processed_total"}
        assert set(per_cpu) == _online_cpus()
        return sum(per_cpu.values())

    with in_netns(netns()):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.settimeout(5)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = processed()
    for _ in range(datagrams):  # one at a time: the receive buffer holds a few hundred
        sender.sendto(b"x", receiver.getsockname())
        receiver.recv(16)
    after = processed()
    sender.close()
    receiver.close()
    assert after - before >= datagrams
