"""Metric families as plain data, and their Prometheus text encoding.

Collectors build ``Family`` objects: cheap tuples instead of prometheus_client ``Sample``s with a
dict per sample. ``to_metric()`` turns one into a prometheus_client ``Metric`` (the Collector
protocol); ``render_text()`` writes the text exposition format 0.0.4 directly and produces what
``prometheus_client.generate_latest`` would for the same families (tests/test_exposition.py
proves it), several times faster. prometheus_client is imported only by ``to_metric()``: serving
``/metrics`` does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import concat

Labels = tuple[tuple[str, str], ...]
Rows = tuple[Labels, ...]

# Text format types by family type (prometheus_client's munging of OpenMetrics types).
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "gaugehistogram": "histogram"}
# Samples generate_latest moves out of a gauge histogram into gauges of their own, in this order.
_SPLIT_SUFFIXES = ("_gcount", "_gsum")


class Family:
    """One metric family. For counters ``name`` omits ``_total``, as in prometheus_client.

    Samples come in two forms, ``samples`` first, then ``columns``:

    - ``samples`` holds ``(suffix, labels, value)``: the sample is named ``name + suffix`` and
      ``labels`` is a tuple of ``(label, value)`` pairs, shared between samples where possible;
    - ``columns`` holds ``(suffix, rows, values)``: one sample ``name + suffix`` per row, with labels
      ``rows[i]`` and value ``values[i]`` (an int or a float). Pass the same ``rows`` tuple object to
      every column that has those labels, and again at the next scrape while they are unchanged:
      ``render_text`` keeps the rows' label text across scrapes, keyed by that object.
    """

    __slots__ = ("name", "type", "help", "samples", "columns")

    def __init__(self, name: str, type: str, help: str, samples: list | None = None,
                 columns: list[tuple[str, Rows, Sequence]] | None = None):
        if type not in _TEXT_TYPES:
            raise ValueError(f"unsupported metric type {type!r}")
        self.name = name
        self.type = type
        self.help = help
        self.samples = [] if samples is None else samples
        self.columns = [] if columns is None else columns

    # Builders: the family's type decides the sample suffixes, so collectors never write them.
    @classmethod
    def counter(cls, name: str, help: str) -> Family:
        """A counter; ``name`` without ``_total``, which ``add``/``add_column`` append."""
        if name.endswith("_total"):
            raise ValueError(f"{name}: a counter family is named without _total")
        return cls(name, "counter", help)

    @classmethod
    def gauge(cls, name: str, help: str) -> Family:
        return cls(name, "gauge", help)

    @classmethod
    def info(cls, name: str, help: str) -> Family:
        """A gauge whose labels carry the information and whose value is 1 (``add(labels)``)."""
        if not name.endswith("_info"):
            raise ValueError(f"{name}: an info family's name ends in _info")
        return cls(name, "gauge", help)

    @classmethod
    def gauge_histogram(cls, name: str, help: str) -> Family:
        """A gauge histogram: ``_bucket{le}``, ``_gcount`` and ``_gsum`` through ``add_histogram``."""
        return cls(name, "gaugehistogram", help)

    @classmethod
    def histogram(cls, name: str, help: str) -> Family:
        """A histogram of observations: ``_bucket{le}``, ``_count`` and ``_sum`` through ``add_histogram``."""
        return cls(name, "histogram", help)

    def add(self, labels: Labels = (), value=1) -> None:
        """One sample; a counter's is named ``_total``."""
        self.samples.append(("_total" if self.type == "counter" else "", labels, value))

    def add_column(self, rows: Rows, values: Sequence) -> None:
        """One sample per row (see ``columns``); a counter's are named ``_total``."""
        self.columns.append(("_total" if self.type == "counter" else "", rows, values))

    def add_histogram(self, labels: Labels, buckets: Iterable[tuple[str, int]], count: int, total: float) -> None:
        """A (gauge) histogram's samples for one label set: ``buckets`` as (le text, cumulative count)
        pairs ending with ``+Inf``, then the count and sum of the observations."""
        if self.type not in ("histogram", "gaugehistogram"):
            raise ValueError(f"{self.name}: add_histogram needs a histogram or gauge histogram")
        gauge = "g" if self.type == "gaugehistogram" else ""
        self.samples.extend(("_bucket", labels + (("le", le),), value) for le, value in buckets)
        self.samples.append((f"_{gauge}count", labels, count))
        self.samples.append((f"_{gauge}sum", labels, total))

    def __repr__(self) -> str:
        count = len(self.samples) + sum(len(values) for _, _, values in self.columns)
        return f"Family({self.name!r}, {self.type!r}, {count} samples)"


class Template:
    """Families made once by the builders; ``new()`` makes empty ones like them for a scrape, from their
    fields directly: about two thirds of the builders' cost, which a collector making dozens of families
    at every scrape notices (a scrape on a worker thread woken for it runs cold)."""

    __slots__ = ("_fields",)

    def __init__(self, families: Iterable[Family]):
        self._fields = tuple((family.name, family.type, family.help) for family in families)

    def new(self) -> list[Family]:
        return [Family(*fields) for fields in self._fields]


def to_metric(family: Family):
    """The family as a prometheus_client ``Metric``."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

    metric = Metric(family.name, family.help, family.type)
    name = family.name
    metric.samples = [Sample(name + suffix, dict(labels), value, None, None, None)
                      for suffix, labels, value in family.samples]
    for suffix, rows, values in family.columns:
        metric.samples += [Sample(name + suffix, dict(labels), value, None, None, None)
                           for labels, value in zip(rows, values, strict=True)]
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


# id(rows) -> (rows, each row's label text and the space before the value, and by sample name the
# column's text with %d for each value). The entry holds rows, so no other object can take its id
# while the entry lives. Cleared when full: label sets that change every scrape cost what they would
# without the cache.
_row_text_cache: dict[int, tuple[Rows, tuple[str, ...], dict[str, str]]] = {}
_ROW_TEXT_CACHE_ENTRIES = 1024  # room for per-namespace label rows (--collector.netns)


def _row_texts(rows: Rows) -> tuple[Rows, tuple[str, ...], dict[str, str]]:
    entry = _row_text_cache.get(id(rows))
    if entry is None:
        if len(_row_text_cache) >= _ROW_TEXT_CACHE_ENTRIES:
            _row_text_cache.clear()
        entry = _row_text_cache[id(rows)] = (rows, tuple(_render_labels(labels) + " " for labels in rows), {})
    return entry


def _family_format(family: Family, suffix: str, rows: Rows) -> str:
    """The whole text of a family that is one integer column, with %d for each value (for _run_text,
    which keeps what it makes of it)."""
    return _header(family.name, family.type, family.help).replace("%", "%%") + _lines_format(
        family.name + suffix, _row_texts(rows)[1])


def _lines_format(sample: str, row_texts: tuple[str, ...]) -> str:
    """``sample{labels} %d`` lines, one per row (``_row_texts``), for one ``%`` of a column's values."""
    return "".join(f"{sample}{text.replace('%', '%%')}%d\n" for text in row_texts)


# A run of consecutive families that are each one integer column -> (their rows, held so that no other
# object takes their ids while the entry lives; the run's whole text with %d for each value), keyed by
# each family's name, type, help, suffix and id(rows), flat. Cleared when full.
_run_cache: dict[tuple, tuple[tuple[Rows, ...], str]] = {}
_RUN_CACHE_ENTRIES = 256


def _run_text(run: list[Family], key: list, values: list) -> str:
    """The text of ``run`` by one ``%``: a collector's families over the same interfaces come in runs."""
    key = tuple(key)
    cached = _run_cache.get(key)
    if cached is None:
        if len(_run_cache) >= _RUN_CACHE_ENTRIES:
            _run_cache.clear()
        columns = [family.columns[0] for family in run]
        cached = _run_cache[key] = (tuple(rows for _, rows, _ in columns), "".join(
            _family_format(family, suffix, rows) for family, (suffix, rows, _) in zip(run, columns)))
    return cached[1] % tuple(values)


def _column_text(sample: str, rows: Rows, values: Sequence) -> str:
    """``sample{labels} value`` lines, one per row: integer columns (nearly all) by one ``%``."""
    entry = _row_texts(rows)
    total = sum(values)
    if type(total) is int:
        format = entry[2].get(sample)
        if format is None:
            format = entry[2][sample] = _lines_format(sample, entry[1])
        return format % tuple(values)
    texts = map(format_value, values) if not math.isfinite(total) else map(str, values)  # str(): finite floats
    # sample{labels} value\nsample{labels} value\n...: the name is the separator
    return sample + ("\n" + sample).join(map(concat, entry[1], texts)) + "\n"


# (name, type, help) -> the family's "# HELP" and "# TYPE" lines; cleared when full.
_header_cache: dict[tuple[str, str, str], str] = {}
_HEADER_CACHE_ENTRIES = 1024


def _header(name: str, type: str, help: str) -> str:
    text = _header_cache.get((name, type, help))
    if text is None:
        if len(_header_cache) >= _HEADER_CACHE_ENTRIES:
            _header_cache.clear()
        exposed = name + "_total" if type == "counter" else name
        text = _header_cache[name, type, help] = (f"# HELP {exposed} {_escape_help(help)}\n"
                                                  f"# TYPE {exposed} {_TEXT_TYPES[type]}\n")
    return text


def render_text(families: Iterable[Family]) -> bytes:
    """Encode families in the Prometheus text format, version 0.0.4."""
    out: list[str] = []
    label_text: dict[Labels, str] = {}
    run: list[Family] = []  # consecutive families that are each one integer column (most): one % for all
    key: list = []
    run_values: list[int] = []
    for family in families:
        columns = family.columns
        if not family.samples and len(columns) == 1:
            suffix, rows, values = columns[0]
            if rows and len(rows) == len(values) and suffix not in _SPLIT_SUFFIXES and type(sum(values)) is int:
                run.append(family)
                key += (family.name, family.type, family.help, suffix, id(rows))
                run_values += values
                continue
        if run:
            out.append(_run_text(run, key, run_values))
            run, key, run_values = [], [], []
        name = family.name
        out.append(_header(name, family.type, family.help))
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
        for suffix, rows, values in family.columns:
            if len(rows) != len(values):
                raise ValueError(f"{name}{suffix}: {len(rows)} label rows for {len(values)} values")
            if not rows:
                continue
            text = _column_text(name + suffix, rows, values)
            if suffix in _SPLIT_SUFFIXES:
                split.setdefault(suffix, []).append(text)
            else:
                out.append(text)
        if split:
            for suffix in sorted(split):
                out.append(_header(name + suffix, "gauge", family.help))
                out.extend(split[suffix])
    if run:
        out.append(_run_text(run, key, run_values))
    return "".join(out).encode()
