"""Command line: flags, netio-logger's environment variables, and which mode runs."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from . import __version__, flags
from .collectors import Command, Flags, Registration
from .collectors import registrations as collector_registrations

PROG = "netio-exporter"
DEFAULT_INTERVAL = 300.0
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_PORT = 7070
DEFAULT_USER_PERIOD_MS = 500

_DESCRIPTION = """\
Network I/O of this Linux host for Prometheus. Reads the kernel when Prometheus scrapes /metrics."""

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


def _log_file(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a file name or '-' for standard output, got ''")
    return text


def _description(registrations: list[Registration]) -> str:
    lines = [_DESCRIPTION, "", "collectors:"]
    for registration in registrations:
        state = "on" if registration.default and registration.enabled_by is None else "off"
        lines.append(f"  {registration.name:<10} {registration.help} (default {state})")
    commands = [command for registration in registrations for command in registration.commands]
    if commands:
        lines += ["", "commands (netio-exporter NAME --help):"]
        lines += [f"  {command.name:<10} {command.help}" for command in commands]
    lines.append("With -l it runs no server and logs counter deltas every --interval seconds instead.")
    return "\n".join(lines)


class _ParserWithCollectors(_Parser):
    collector_flags: list[Flags]  # each registered collector's flags, for the checks and the defaults


def build_parser() -> _ParserWithCollectors:
    registrations = collector_registrations()
    parser = _ParserWithCollectors(prog=PROG, description=_description(registrations), epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-P", "--prometheus", action="store_true",
                      help="serve /metrics and a plain landing page at /, nothing else (the default mode "
                           "serves a live page at / instead)")
    mode.add_argument("-l", "--log-file", metavar="FILE|-", type=_log_file,
                      help="log mode: no HTTP server; append counter deltas to FILE ('-' is standard output); "
                           "SIGHUP reopens FILE for log rotation")

    web = parser.add_argument_group("HTTP server")
    web.add_argument("-a", "--address", type=flags.address, metavar="ADDRESS",
                     help=f"address to listen on, IPv4 or IPv6; '::' also accepts IPv4 (default {DEFAULT_ADDRESS})")
    web.add_argument("-p", "--port", type=flags.port, metavar="PORT", help=f"port to listen on (default {DEFAULT_PORT})")
    web.add_argument("--user-period", type=flags.bounded_int(10, 60000, "milliseconds"), metavar="MS",
                     help="the live page's update period in milliseconds; the page's sampler reads the collectors "
                          f"only while a page is open (default {DEFAULT_USER_PERIOD_MS}; not with -P)")
    web.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                     help="TLS, response headers and basic auth, in Prometheus exporter-toolkit's web config "
                          "format; re-read when it or its certificate files change")

    log = parser.add_argument_group("log mode")
    log.add_argument("--interval", type=flags.seconds, metavar="S",
                     help=f"seconds between lines; wins over READING_INTERVAL_SEC (default {DEFAULT_INTERVAL:g})")
    log.add_argument("--log-format", type=flags.choice("csv", "jsonl"), metavar="csv|jsonl",
                     help="csv: netio-logger's elapsedRx,elapsedTx byte deltas of the METRICS_REQUEST interface; "
                          "jsonl: one JSON object per interval with the counter deltas and gauge values of every "
                          "enabled collector (default csv)")

    collector_flags = parser.collector_flags = []
    for registration in registrations:
        group = parser.add_argument_group(f"collector {registration.name}")
        state = "on" if registration.default and registration.enabled_by is None else "off"
        if registration.switch:
            group.add_argument(f"--collector.{registration.name}", dest=_enabled_dest(registration),
                               action=argparse.BooleanOptionalAction, default=None,
                               help=f"{registration.help} (default {state})")
        else:
            parser.set_defaults(**{_enabled_dest(registration): None})
        collector_flags.append(Flags(group, registration))
        if registration.add_arguments is not None:
            registration.add_arguments(collector_flags[-1])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _enabled_dest(registration: Registration) -> str:
    return f"collector_{registration.name}"


def resolve(parser: _ParserWithCollectors, args: argparse.Namespace) -> list[Registration]:
    """Check the combinations argparse cannot see and fill in the defaults; the registrations to build."""
    log_mode = args.log_file is not None
    csv_log = log_mode and args.log_format in (None, "csv")  # netio-logger's: the link reader only
    if log_mode:
        for flag, value in (("--address", args.address), ("--port", args.port), ("--user-period", args.user_period),
                            ("--web.config.file", args.web_config_file)):
            if value is not None:
                parser.error(f"{flag}: log mode (-l) runs no HTTP server; drop {flag} or -l")
    else:
        for flag, value in (("--interval", args.interval), ("--log-format", args.log_format)):
            if value is not None:
                parser.error(f"{flag}: applies to log mode only; add -l FILE or drop {flag}")
        if args.prometheus and args.user_period is not None:
            parser.error("--user-period: -P serves no live page; drop --user-period or -P")
    enabled = []
    for record in parser.collector_flags:
        registration = record.registration
        switch = getattr(args, _enabled_dest(registration))
        given = [flag for dest, flag in record.flags.items() if getattr(args, dest) is not None]
        if registration.enabled_by is not None:
            trigger = record.flags[registration.enabled_by]
            if switch and getattr(args, registration.enabled_by) is None:
                parser.error(f"--collector.{registration.name}: needs {trigger}")
            on = switch is not False and getattr(args, registration.enabled_by) is not None
            if not on and given and switch is None:
                parser.error(f"{given[0]}: the {registration.name} collector runs only with {trigger}")
        else:
            on = registration.default if switch is None else switch
        if not on and given:
            parser.error(f"{given[0]}: the {registration.name} collector is off (--no-collector.{registration.name})")
        if csv_log and not registration.log_mode and given:
            parser.error(f"{given[0]}: the csv log (-l) carries link counters only; "
                         f"add --log-format jsonl or drop {given[0]}")
        for dest, default in record.defaults.items():
            if getattr(args, dest) is None:
                setattr(args, dest, default)
        if on and registration.check is not None:
            message = registration.check(args)
            if message:
                parser.error(message)
        if on and (registration.log_mode or not csv_log):
            enabled.append(registration)
    if csv_log:
        if args.collector_link is False:
            parser.error("--no-collector.link: log mode logs the link counters; it cannot run without them")
        if args.device_include or args.device_exclude:
            parser.error("--collector.link.device-include/exclude: the csv log follows METRICS_REQUEST; "
                         "use them with --log-format jsonl or with the HTTP server")
    return enabled


def _run_command(command: Command, argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} {command.name}", description=command.help)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-"):  # a subcommand a collector brings (netio-exporter NAME ...)
        commands = {command.name: command for registration in collector_registrations()
                    for command in registration.commands}
        if argv[0] in commands:
            return _run_command(commands[argv[0]], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    enabled = resolve(parser, args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s netio-exporter %(levelname)s %(message)s")

    if args.log_file is not None:
        return _run_log_mode(parser, args, enabled)

    web_config = None
    if args.web_config_file is not None:  # before the server's import: it needs ssl only for TLS
        from .webconfig import Watcher, WebConfigError
        try:
            web_config = Watcher(args.web_config_file)
        except WebConfigError as error:
            parser.exit(2, f"{PROG}: --web.config.file: {error}\n")
    from .collectors import Scrape, self_collectors
    scrape = Scrape([registration.build(args) for registration in enabled], self_collectors())
    from .server import MetricsApp, serve
    live = None
    if not args.prometheus:
        from .live import LiveFeed
        live = LiveFeed(scrape, (args.user_period or DEFAULT_USER_PERIOD_MS) / 1000)
    address, port = args.address or DEFAULT_ADDRESS, args.port or DEFAULT_PORT
    from .privileges import drop_after_start
    drop_after_start(scrape.collectors, port)  # the collectors are loaded: keep only what they still use
    try:
        serve(MetricsApp(scrape, live), address, port, web_config)
    except OSError as error:
        print(f"{PROG}: cannot listen on {f'[{address}]' if ':' in address else address}:{port}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        if live is not None:
            live.close()
        scrape.close()
    return 0


def _run_log_mode(parser: argparse.ArgumentParser, args: argparse.Namespace, enabled: list[Registration]) -> int:
    from .logmode import ConfigError, LogMode, SinkError, interface_from_metrics_request
    try:
        interval = args.interval
        if interval is None:
            env = os.environ.get("READING_INTERVAL_SEC")
            try:
                interval = DEFAULT_INTERVAL if env is None else flags.parse_seconds(env)
            except ValueError as error:
                raise ConfigError(f"READING_INTERVAL_SEC: {error}")
        csv_interface = None
        if args.log_format in (None, "csv"):
            csv_interface = interface_from_metrics_request(os.environ.get("METRICS_REQUEST"))
    except ConfigError as error:
        parser.exit(2, f"{PROG}: {error}\n")
    recorder = None
    if csv_interface is None:  # jsonl: every enabled collector, as the live page reads them
        from .collectors import Scrape, self_collectors
        from .live import Recorder
        recorder = Recorder(Scrape([registration.build(args) for registration in enabled], self_collectors()))
    try:
        return LogMode(args.log_file, interval, csv_interface, recorder).run()
    except SinkError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    finally:
        if recorder is not None:
            recorder.scrape.close()


def entry_point() -> None:
    sys.exit(main())
