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
Network I/O of this Linux host for Prometheus. Reads the kernel when Prometheus scrapes /metrics:
interface counters and attributes over rtnetlink (collector "link"), TCP sockets over sock_diag
("tcp"), the network stack's CPU time with eBPF ("netstack"), and per-client traffic by MAC on
gateway interfaces with eBPF at tc ("mac", with --collector.mac.device).
With -l it runs no server and logs counter deltas every --interval seconds instead."""

_EPILOG = """\
environment (log mode, csv, as netio-logger reads them):
  METRICS_REQUEST       comma-separated items; the last networkStats/(NAME) names the
                        interface, (*) the first non-loopback one (default networkStats/(lo))
  READING_INTERVAL_SEC  seconds between lines; --interval wins (default 300)

examples:
  netio-exporter -P --port 7070
  netio-exporter -a :: --collector.link.device-exclude 'veth.*|lo'
  netio-exporter --collector.tcp.local-ports 22,443 -f 0
  netio-exporter --collector.mac.device br-lan --collector.mac.idle-timeout 600
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


def _bounded_int(low: int, high: int, what: str):
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected {what} {low}-{high}, got {text!r}")
        return int(text)
    return parse


def _local_ports(text: str) -> frozenset[int]:
    from .collectors.tcp import parse_local_ports
    try:
        return parse_local_ports(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _interface(text: str) -> str:
    if not text or len(text.encode()) > 15 or "/" in text or any(c.isspace() for c in text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected an interface name (1-15 bytes, no '/' or spaces), got {text!r}")
    return text


def _attach_mode(text: str) -> str:
    from .collectors.mac import ATTACH_MODES
    if text not in ATTACH_MODES:
        raise argparse.ArgumentTypeError(f"expected {', '.join(ATTACH_MODES[:-1])} or {ATTACH_MODES[-1]}, got {text!r}")
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
    collectors.add_argument("--collector.tcp", dest="collector_tcp", action=argparse.BooleanOptionalAction,
                            default=True, help="TCP connection states and tcp_info totals over sock_diag (default on)")
    collectors.add_argument("--collector.tcp.local-ports", dest="local_ports", type=_local_ports, metavar="LIST",
                            help="comma-separated local ports: adds a local_port label (these ports, else "
                                 "'other') to the TCP metrics; off by default to keep cardinality fixed")
    collectors.add_argument("--collector.netstack", dest="collector_netstack",
                            action=argparse.BooleanOptionalAction, default=True,
                            help="CPU time of NET_RX/NET_TX softirqs and socket send/receive syscalls, with eBPF "
                                 "(default on; reports itself unavailable without eBPF)")
    collectors.add_argument("-f", "--frequency", type=_bounded_int(0, 10000, "a sampling frequency in Hz"),
                            metavar="HZ", help="netstack: NET_RX stack-sampling frequency per CPU in Hz; 0 turns "
                                               "sampling off (default 1000)")
    collectors.add_argument("--collector.mac.device", dest="mac_devices", action="append", type=_interface,
                            metavar="IFACE", help="count traffic per client MAC on IFACE with eBPF at tc; "
                                                  "repeatable; turns the mac collector on")
    collectors.add_argument("--collector.mac.max-entries", dest="mac_max_entries", metavar="N",
                            type=_bounded_int(1, 1_000_000, "a number of clients"),
                            help="mac: clients tracked per interface; frames of others count as untracked "
                                 "(default 4096)")
    collectors.add_argument("--collector.mac.idle-timeout", dest="mac_idle_timeout", type=_seconds, metavar="S",
                            help="mac: forget clients idle for S seconds; their series vanish (default 3600)")
    collectors.add_argument("--collector.mac.attach", dest="mac_attach", type=_attach_mode, metavar="MODE",
                            help="mac: auto (TCX links where the kernel has them, else clsact), tcx or clsact "
                                 "(default auto)")

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
        for flag, value in (("--collector.tcp.local-ports", args.local_ports), ("--frequency", args.frequency),
                            ("--collector.mac.device", args.mac_devices)):
            if value is not None:
                parser.error(f"{flag}: log mode (-l) logs link counters only; drop {flag} or -l")
    else:
        for flag, value in (("--interval", args.interval), ("--log-format", args.log_format)):
            if value is not None:
                parser.error(f"{flag}: applies to log mode only; add -l FILE or drop {flag}")
    if not args.collector_tcp and args.local_ports is not None:
        parser.error("--collector.tcp.local-ports: the tcp collector is off (--no-collector.tcp)")
    if not args.collector_netstack and args.frequency is not None:
        parser.error("--frequency: the netstack collector is off (--no-collector.netstack)")
    if args.mac_devices is None:
        for flag, value in (("--collector.mac.max-entries", args.mac_max_entries),
                            ("--collector.mac.idle-timeout", args.mac_idle_timeout),
                            ("--collector.mac.attach", args.mac_attach)):
            if value is not None:
                parser.error(f"{flag}: the mac collector runs only with --collector.mac.device IFACE")


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
    scrape = Scrape(_collectors(args, device_filter))
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


def _collectors(args: argparse.Namespace, device_filter) -> list:
    """The enabled collectors, each imported only when used (pyroute2 and libbpf stay unloaded otherwise)."""
    collectors = []
    if args.collector_link:
        from .collectors.link import LinkCollector
        collectors.append(LinkCollector(device_filter))
    if args.collector_tcp:
        from .collectors.tcp import TcpCollector
        collectors.append(TcpCollector(args.local_ports))
    if args.collector_netstack:
        from .collectors.netstack import NetstackCollector
        collectors.append(NetstackCollector(1000 if args.frequency is None else args.frequency))
    if args.mac_devices:
        from .collectors.mac import MacCollector
        collectors.append(MacCollector(args.mac_devices, args.mac_max_entries or 4096,
                                       args.mac_idle_timeout or 3600.0, args.mac_attach or "auto"))
    return collectors


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
