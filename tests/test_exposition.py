"""render_text() is a faster encoder of the same families: its output must parse to exactly what
prometheus_client's generate_latest gives for them, and promtool must accept it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import require
from exporter.collectors import Scrape
from exporter.collectors.link import LinkCollector
from exporter.exposition import Family, render_text, to_metric


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return [to_metric(family) for family in self.families]


def _reference(families) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return generate_latest(registry)


def _parsed(text: bytes):
    """Families as the parser sees them. Values compare as float64, Prometheus's sample type:
    render_text writes integer counters exactly ("18446744073709551615") where generate_latest
    writes a float ("1.8446744073709552e+19"); both parse to the same float64."""
    return [(family.name, family.type, family.documentation,
             [(sample.name, sample.labels, float(sample.value)) for sample in family.samples])
            for family in text_string_to_metric_families(text.decode())]


def _tricky_families() -> list[Family]:
    odd = (("device", 'we"ird\\name\nx'), ("kind", "é"))
    return [
        Family("netio_test_bytes", "counter", "Help with \\ backslash\nand newline.",
               [("_total", odd, 2**64 - 1), ("_total", (("device", "b"),), 0)]),
        Family("netio_test_ratio", "gauge", "Floats.",
               [("", (("x", "a"),), 0.1), ("", (("x", "b"),), 1e-7), ("", (("x", "c"),), 12345678.5),
                ("", (("x", "d"),), float("inf")), ("", (("x", "e"),), -3.0)]),
        Family("netio_test_empty", "gauge", "No samples at all."),
        Family("netio_test_rtt_seconds", "gaugehistogram", "A gauge histogram.",
               [("_bucket", (("state", "x"), ("le", "1e-05")), 1), ("_bucket", (("state", "x"), ("le", "+Inf")), 3),
                ("_gcount", (("state", "x"),), 3), ("_gsum", (("state", "x"),), 0.25)]),
        Family("netio_test_plain", "gauge", "No labels.", [("", (), 7)]),
    ]


def _columnar_families() -> list[Family]:
    odd = (("device", 'we"ird\\name\nx'), ("kind", "é"))
    rows = (odd, (("device", "b"),), ())
    return [
        Family("netio_test_bytes", "counter", "Columns sharing one rows tuple.",
               columns=[("_total", rows, (2**64 - 1, 0, 5))]),
        Family("netio_test_mixed", "gauge", "Samples first, then columns.",
               [("", (("x", "s"),), 1)],
               [("", rows, [0.1, 1e-7, 12345678.5]), ("", ((("device", "c"),),), [float("-inf")]), ("", (), [])]),
        Family("netio_test_inf", "gauge", "Non-finite floats in a column.",
               columns=[("", rows, (float("inf"), 1, -2.5))]),
        Family("netio_test_rtt_seconds", "gaugehistogram", "A gauge histogram in columns.",
               columns=[("_bucket", ((("le", "1e-05"),), (("le", "+Inf"),)), (1, 3)),
                        ("_gcount", ((),), (3,)), ("_gsum", ((),), (0.25,))]),
    ]


def test_tricky_families_encode_like_generate_latest():
    families = _tricky_families()
    assert _parsed(render_text(families)) == _parsed(_reference(families))


def test_columnar_families_encode_like_generate_latest():
    families = _columnar_families()
    assert _parsed(render_text(families)) == _parsed(_reference(families))
    assert render_text(families) == render_text(families)  # the second time from the rows' cached text


def test_a_columns_labels_follow_its_rows_not_a_stale_cache():
    for _ in range(3):  # fresh rows tuples with other values each time: never text cached for older ones
        for name in ("a", "b", "c"):
            family = Family("netio_test_up", "gauge", "x", columns=[("", ((("device", name),),), (1,))])
            assert render_text([family]).endswith(f'netio_test_up{{device="{name}"}} 1\n'.encode())


def test_a_column_needs_one_value_per_row():
    family = Family("netio_test_up", "gauge", "x", columns=[("", ((("device", "a"),),), (1, 2))])
    with pytest.raises(ValueError):
        render_text([family])


def test_a_real_scrape_encodes_like_generate_latest():
    families = Scrape([LinkCollector()]).families()
    assert _parsed(render_text(families)) == _parsed(_reference(families))


def test_link_columns_with_fields_missing_for_some_interfaces_and_changing_attributes():
    """A field a kernel did not send for an interface is absent, not zero; attribute changes show at
    the next read, and unchanged interfaces keep one rows tuple (what render_text's cache keys on)."""
    from exporter.netlink.rtnl import STATS64_FIELDS, Link, LinkReading

    a = Link(1, 0, "a", "00:00:00:00:00:01", "up", 1500, "veth", "", 3)
    b = Link(2, 0, "b", "", "down", 65536, "", "alias", None)
    full, short = tuple(range(len(STATS64_FIELDS))), (7, 8, 9)
    collector = LinkCollector()
    collector.close()
    collector._reader = type("Reader", (), {"read": lambda self: readings})()

    readings = [LinkReading(a, full), LinkReading(b, short)]
    families = collector.read()
    assert _parsed(render_text(families)) == _parsed(_reference(families))
    parsed = {(name, labels.get("device")): value for _, _, _, samples in _parsed(render_text(families))
              for name, labels, value in samples}
    assert parsed["netio_network_receive_packets_total", "b"] == 7  # rx_packets, the first field
    assert ("netio_network_receive_nohandler_total", "b") not in parsed
    assert parsed["netio_network_receive_nohandler_total", "a"] == STATS64_FIELDS.index("rx_nohandler")
    assert ("netio_network_carrier_changes_total", "b") not in parsed

    readings = [LinkReading(a, full), LinkReading(b, full)]
    first = collector.read()[0].columns[0][1]
    assert collector.read()[0].columns[0][1] is first  # same interfaces: the same rows tuple
    readings = [LinkReading(a._replace(mtu=9000), full), LinkReading(b, full)]
    families = collector.read()
    assert families[0].columns[0][1] == first
    assert ("", first, (9000, 65536)) in next(f for f in families if f.name == "netio_network_mtu_bytes").columns


def test_promtool_accepts_the_tricky_and_columnar_families():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    for families in (_tricky_families(), _columnar_families()):
        result = subprocess.run([promtool, "check", "metrics"], input=render_text(families), capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr
