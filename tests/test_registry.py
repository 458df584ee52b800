"""The collector registry: every collector is wired by its module's REGISTRATION alone, families are unique
across collectors, and the exported families stay what users and dashboards rely on (golden file)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from exporter import cli, collectors
from exporter.collectors import Collector, Command, Registration, Scrape, registrations, self_collectors
from exporter.exposition import Family, render_text
from tests.support import samples, value

GOLDEN = Path(__file__).parent / "golden" / "families.json"
# A device that does not exist: the mac collector builds (and reports itself unavailable) without touching
# any interface, so its describe() can be read anywhere.
_NO_DEVICE = "netio-none0"


def _built() -> dict[str, Collector]:
    parser = cli.build_parser()
    args = parser.parse_args(["--collector.mac.device", _NO_DEVICE])
    return {registration.name: registration.build(args) for registration in cli.resolve(parser, args)}


def _describe(collector: Collector) -> list[list[str]]:
    return [[metric.name, metric.type, metric.documentation] for metric in collector.describe()]


def test_families_match_the_golden_file():
    """Names, types and help of every collector's families. A deliberate change updates the golden file
    (`python -m tests.test_registry` rewrites it) together with README and dashboard."""
    built = _built()
    try:
        described = {name: _describe(collector) for name, collector in built.items()}
        described.update({collector.name: _describe(collector) for collector in self_collectors()})
    finally:
        for collector in built.values():
            collector.close()
    assert described == json.loads(GOLDEN.read_text())


def test_no_two_collectors_export_the_same_family():
    built = _built()
    try:
        Scrape(list(built.values()), self_collectors())  # raises on a duplicate
        names = [family.name for collector in built.values() for family in collector.describe_families()]
    finally:
        for collector in built.values():
            collector.close()
    assert len(names) == len(set(names))


def test_scrape_refuses_duplicate_families():
    class Twin(Collector):
        name = "twin"

        def describe_families(self):
            return [Family.gauge("netio_network_up", "a clash")]

    built = _built()
    try:
        with pytest.raises(ValueError, match="netio_network_up"):
            Scrape([built["link"], Twin()])
    finally:
        for collector in built.values():
            collector.close()


def test_family_builders_add_the_suffixes():
    counter = Family.counter("netio_x", "x")
    counter.add((("a", "1"),), 3)
    histogram = Family.gauge_histogram("netio_h", "h")
    histogram.add_histogram((), [("1.0", 2), ("+Inf", 3)], 3, 4.5)
    text = render_text([counter, histogram]).decode()
    assert 'netio_x_total{a="1"} 3\n' in text
    assert 'netio_h_bucket{le="+Inf"} 3\n' in text and "netio_h_gcount 3\n" in text and "netio_h_gsum 4.5\n" in text
    with pytest.raises(ValueError):
        Family.counter("netio_x_total", "x")
    with pytest.raises(ValueError):
        Family.info("netio_x", "x")


# --- a throwaway collector, added through the registry alone ---------------------------------------

class _Echo(Collector):
    name = "echo"

    def __init__(self, greeting: str):
        self.greeting = greeting

    def describe_families(self):
        return [Family.info("netio_echo_info", "What --collector.echo.greeting said.")]

    def read(self):
        family = self.describe_families()[0]
        family.add((("greeting", self.greeting),))
        return [family]


def _echo_module() -> types.ModuleType:
    module = types.ModuleType("exporter.collectors.echo")

    def add_arguments(options):
        options.add("--collector.echo.greeting", dest="echo_greeting", default="hello", metavar="TEXT",
                    help="what to say")

    def add_shout_arguments(parser):
        parser.add_argument("words", nargs="*")

    def shout(args):
        print(" ".join(args.words).upper())
        return 0

    module.REGISTRATION = Registration(name="echo", help="a throwaway collector of the registry test",
                                       add_arguments=add_arguments, build=lambda args: _Echo(args.echo_greeting),
                                       commands=(Command("shout", "say it louder", add_shout_arguments, shout),))
    return module


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(sys.modules, "exporter.collectors.echo", _echo_module())
    monkeypatch.setattr(collectors, "COLLECTORS", collectors.COLLECTORS + ("echo",))


def test_a_collector_added_through_the_registry_alone(echo_registered, capsys):
    assert [registration.name for registration in registrations()][-1] == "echo"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--collector.echo, --no-collector.echo" in help_text
    assert "--collector.echo.greeting TEXT" in help_text and "(default hello)" in help_text

    parser = cli.build_parser()
    args = parser.parse_args(["--collector.echo.greeting", "hi"])
    echo = [registration for registration in cli.resolve(parser, args) if registration.name == "echo"][0]
    scrape = Scrape([echo.build(args)])
    parsed = samples(render_text(scrape.families()).decode())
    assert value(parsed, "netio_echo_info", greeting="hi") == 1
    assert value(parsed, "netio_scrape_collector_success", collector="echo") == 1

    parser = cli.build_parser()
    args = parser.parse_args(["--no-collector.echo"])
    assert "echo" not in [registration.name for registration in cli.resolve(parser, args)]
    with pytest.raises(SystemExit) as exit_info:
        parser = cli.build_parser()
        cli.resolve(parser, parser.parse_args(["--no-collector.echo", "--collector.echo.greeting", "x"]))
    assert exit_info.value.code == 2
    assert "--collector.echo.greeting: the echo collector is off (--no-collector.echo)" in capsys.readouterr().err


def test_a_collector_brings_a_subcommand(echo_registered, capsys):
    assert cli.main(["shout", "a", "b"]) == 0
    assert capsys.readouterr().out == "A B\n"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "shout      say it louder" in capsys.readouterr().out


def test_help_lists_collectors_in_registry_order():
    result = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, check=True)
    positions = [result.stdout.index(f"collector {registration.name}:") for registration in registrations()]
    assert positions == sorted(positions)


if __name__ == "__main__":  # python -m tests.test_registry: rewrite the golden file from the current code
    built = _built()
    described = {name: _describe(collector) for name, collector in built.items()}
    described.update({collector.name: _describe(collector) for collector in self_collectors()})
    GOLDEN.write_text("{\n" + ",\n".join(  # one family a line: diffs read like the change
        f" {json.dumps(name)}: [\n" + ",\n".join(f"  {json.dumps(row)}" for row in rows) + "\n ]"
        for name, rows in described.items()) + "\n}\n")
    for collector in built.values():
        collector.close()
