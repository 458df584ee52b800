"""Metric families as plain data, and their Prometheus text encoding.

Collectors build ``Family`` objects: cheap tuples instead of prometheus_client ``Sample``s with a
dict per sample. ``to_metric()`` turns one into a prometheus_client ``Metric`` (the Collector
protocol); ``render_text()`` writes the text exposition format 0.0.4 directly and produces what
``prometheus_client.generate_latest`` would for the same families (tests/test_exposition.py
proves it), several times faster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

Labels = tuple[tuple[str, str], ...]

# Text format types by family type (prometheus_client's munging of OpenMetrics types).
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "gaugehistogram": "histogram"}
# Samples generate_latest moves out of a gauge histogram into gauges of their own, in this order.
_SPLIT_SUFFIXES = ("_gcount", "_gsum")


class Family:
    """One metric family. For counters ``name`` omits ``_total``, as in prometheus_client.

    ``samples`` holds ``(suffix, labels, value)``: the sample is named ``name + suffix`` and
    ``labels`` is a tuple of ``(label, value)`` pairs, shared between samples where possible.
    """

    __slots__ = ("name", "type", "help", "samples")

    def __init__(self, name: str, type: str, help: str, samples: list | None = None):
        if type not in _TEXT_TYPES:
            raise ValueError(f"unsupported metric type {type!r}")
        self.name = name
        self.type = type
        self.help = help
        self.samples = [] if samples is None else samples

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.type!r}, {len(self.samples)} samples)"


def to_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.help, family.type)
    name = family.name
    metric.samples = [Sample(name + suffix, dict(labels), value, None, None, None)
                      for suffix, labels, value in family.samples]
    return metric


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _render_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_label_value(value)}"' for key, value in labels) + "}"


def format_value(value) -> str:
    if type(value) is int:
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def render_text(families: Iterable[Family]) -> bytes:
    """Encode families in the Prometheus text format, version 0.0.4."""
    out: list[str] = []
    label_text: dict[Labels, str] = {}
    for family in families:
        name = family.name
        exposed = name + "_total" if family.type == "counter" else name
        help_text = _escape_help(family.help)
        out.append(f"# HELP {exposed} {help_text}\n# TYPE {exposed} {_TEXT_TYPES[family.type]}\n")
        split: dict[str, list[str]] = {}
        for suffix, labels, value in family.samples:
            text = label_text.get(labels)
            if text is None:
                text = label_text[labels] = _render_labels(labels)
            line = f"{name}{suffix}{text} {value if type(value) is int else format_value(value)}\n"
            if suffix in _SPLIT_SUFFIXES:
                split.setdefault(suffix, []).append(line)
            else:
                out.append(line)
        for suffix in sorted(split):
            out.append(f"# HELP {name}{suffix} {help_text}\n# TYPE {name}{suffix} gauge\n")
            out.extend(split[suffix])
    return "".join(out).encode()
