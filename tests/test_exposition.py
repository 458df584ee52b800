"""render_text() is a faster encoder of the same families: its output must parse to exactly what
prometheus_client's generate_latest gives for them, and promtool must accept it."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import require
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


def test_tricky_families_encode_like_generate_latest():
    families = _tricky_families()
    assert _parsed(render_text(families)) == _parsed(_reference(families))


def test_a_real_scrape_encodes_like_generate_latest():
    families = Scrape([LinkCollector()]).families()
    assert _parsed(render_text(families)) == _parsed(_reference(families))


def test_promtool_accepts_the_tricky_families():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=render_text(_tricky_families()), capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
