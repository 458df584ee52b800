"""Command line: flags, netio-logger's environment variables, and which mode runs."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import sys

from . import __version__

PROG = "netio-exporter"
DEFAULT_INTERVAL = 300.0

_DESCRIPTION = """\
Network I/O of this Linux host for Prometheus. Reads the kernel when Prometheus scrapes
/metrics: interface counters and attributes over rtnetlink (collector "link").
With -l it runs no server and logs counter deltas every --interval seconds instead."""

_EPILOG = """\
environment (log mode, csv, as netio-logger reads them):
  METRICS_REQUEST       comma-separated items; the last networkStats/(NAME) names the
                        interface, (*) the first non-loopback one (default networkStats/(lo))
  READING_INTERVAL_SEC  seconds between lines; --interval wins (default 300)

examples:
  netio-exporter -P --port 7070
  netio-exporter -a :: --collector.link.device-exclude 'veth.*|lo'
  METRICS_REQUEST='networkStats/(eth0)' READING_INTERVAL_SEC=60 netio-exporter -l -
  netio-exporter -l /var/log/netio.jsonl --log-format jsonl --interval 10"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # "argument -p/--port: expected ..." -> "--port: expected ...": one line naming the flag
        message = re.sub(r"argument (?:-\w/)?(--[\w.-]+)", r"\1", message)
        self.exit(2, f"{PROG}: {message}\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IPv4 or IPv6 address such as 0.0.0.0 or ::, got {text!r}")


def _seconds(text: str) -> float:
    from .logmode import ConfigError, parse_seconds
    try:
        return parse_seconds(text, "")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text!r}")


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {error}")
    return text


def _log_format(text: str) -> str:
    if text not in ("csv", "jsonl"):
        raise argparse.ArgumentTypeError(f"expected csv or jsonl, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-P", "--prometheus", action="store_true",
                      help="serve /metrics and a landing page at / (the default mode does the same for now)")
    mode.add_argument("-l", "--log-file", metavar="FILE|-",
                      help="log mode: no HTTP server; append counter deltas to FILE ('-' is standard output); "
                           "SIGHUP reopens FILE for log rotation")

    web = parser.add_argument_group("HTTP server")
    web.add_argument("-a", "--address", type=_address, metavar="ADDRESS",
                     help="address to listen on, IPv4 or IPv6; '::' also accepts IPv4 (default 0.0.0.0)")
    web.add_argument("-p", "--port", type=_port, metavar="PORT", help="port to listen on (default 7070)")

    log = parser.add_argument_group("log mode")
    log.add_argument("--interval", type=_seconds, metavar="S",
                     help="seconds between lines; wins over READING_INTERVAL_SEC (default 300)")
    log.add_argument("--log-format", type=_log_format, metavar="csv|jsonl",
                     help="csv: netio-logger's elapsedRx,elapsedTx byte deltas of the METRICS_REQUEST interface; "
                          "jsonl: one JSON object per interval with the deltas of every link counter of every "
                          "selected interface (default csv)")

    collectors = parser.add_argument_group("collectors")
    collectors.add_argument("--collector.link", dest="collector_link", action=argparse.BooleanOptionalAction,
                            default=True, help="interface counters and attributes over rtnetlink (default on)")
    devices = collectors.add_mutually_exclusive_group()
    devices.add_argument("--collector.link.device-include", dest="device_include", type=_regex, metavar="RE",
                         help="only interfaces whose name fully matches RE (for /metrics and the jsonl log)")
    devices.add_argument("--collector.link.device-exclude", dest="device_exclude", type=_regex, metavar="RE",
                         help="all interfaces but those whose name fully matches RE")

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.log_file is not None:
        for flag, value in (("--address", args.address), ("--port", args.port)):
            if value is not None:
                parser.error(f"{flag}: log mode (-l) runs no HTTP server; drop {flag} or -l")
        if args.log_format != "jsonl" and (args.device_include or args.device_exclude):
            parser.error("--collector.link.device-include/exclude: the csv log follows METRICS_REQUEST; "
                         "use them with --log-format jsonl or with the HTTP server")
        if not args.collector_link:
            parser.error("--no-collector.link: log mode logs the link counters; it cannot run without them")
    else:
        for flag, value in (("--interval", args.interval), ("--log-format", args.log_format)):
            if value is not None:
                parser.error(f"{flag}: applies to log mode only; add -l FILE or drop {flag}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s netio-exporter %(levelname)s %(message)s")

    from .collectors.link import DeviceFilter
    device_filter = DeviceFilter(args.device_include, args.device_exclude)

    if args.log_file is not None:
        return _run_log_mode(parser, args, device_filter)

    from .collectors import Scrape
    from .server import MetricsApp, serve
    collectors = []
    if args.collector_link:
        from .collectors.link import LinkCollector
        collectors.append(LinkCollector(device_filter))
    scrape = Scrape(collectors)
    try:
        serve(MetricsApp(scrape), args.address or "0.0.0.0", args.port or 7070)
    except OSError as error:
        host = args.address or "0.0.0.0"
        print(f"{PROG}: cannot listen on {f'[{host}]' if ':' in host else host}:{args.port or 7070}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        scrape.close()
    return 0


def _run_log_mode(parser: argparse.ArgumentParser, args: argparse.Namespace, device_filter) -> int:
    from .logmode import ConfigError, LogMode, SinkError, interface_from_metrics_request, parse_seconds
    try:
        interval = args.interval
        if interval is None:
            env = os.environ.get("READING_INTERVAL_SEC")
            interval = DEFAULT_INTERVAL if env is None else parse_seconds(env, "READING_INTERVAL_SEC")
        csv_interface = None
        if args.log_format in (None, "csv"):
            csv_interface = interface_from_metrics_request(os.environ.get("METRICS_REQUEST"))
    except ConfigError as error:
        parser.exit(2, f"{PROG}: {error}\n")
    try:
        return LogMode(args.log_file, interval, csv_interface, device_filter).run()
    except SinkError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1


def entry_point() -> None:
    sys.exit(main())
