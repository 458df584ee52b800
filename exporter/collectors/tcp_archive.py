"""tcp_archive: the per-connection archive's switch, flags and self metrics, and the ``tcp-csv`` command.

The archive itself (exporter/archive/) runs on its own thread and clock; a scrape only reads its
counters, so it never slows or changes a scrape. Only the exporter's own network namespace is archived.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import flags
from ..exposition import Family, format_value
from . import Collector, Command, Flags, Registration

DEFAULT_INTERVAL_MS = 100
DEFAULT_ROTATE_SECONDS = 600.0
DEFAULT_MAX_BYTES = 1 << 30
_PREFIX = "netio_tcp_archive_"


def _families() -> dict[str, Family]:
    return {
        "records": Family.counter(_PREFIX + "records", "Records written to the tcp archive, by kind."),
        "bytes": Family.counter(_PREFIX + "bytes_written", "Compressed bytes the tcp archive wrote."),
        "files": Family.counter(_PREFIX + "files", "Files the tcp archive created."),
        "deleted": Family.counter(_PREFIX + "deleted_files",
                                  "Files the tcp archive deleted, oldest first, to stay under its byte limit."),
        "errors": Family.counter(_PREFIX + "errors", "Failed writes of the tcp archive, by kind "
                                                     "(disk_full, permission, read_only, io)."),
        "dropped": Family.counter(_PREFIX + "dropped_records",
                                  "Records the tcp archive lost: the kernel's ring buffer was full, or a write "
                                  "failed."),
        "size": Family.gauge(_PREFIX + "size_bytes", "Bytes the tcp archive's files take now."),
        "poll": Family.histogram(_PREFIX + "poll_duration_seconds",
                                 "How long one poll of the connections took (change detection, lookups, records)."),
        "method": Family.info(_PREFIX + "method_info",
                              "Where final records come from: kernel (a record at every close) or polling "
                              "(the last poll of each connection); the value is 1."),
    }


class TcpArchiveCollector(Collector):
    name = "tcp_archive"

    def __init__(self, directory: str, interval_ms: int, rotate_seconds: float, max_bytes: int):
        from ..archive import Archive
        self._archive = Archive(directory, interval_ms / 1000, rotate_seconds, max_bytes)

    def describe_families(self) -> list[Family]:
        return list(_families().values())

    def read(self) -> list[Family]:
        from ..archive import POLL_BUCKETS
        stats, files = self._archive.stats(), self._archive.file_stats()
        families = _families()
        for kind, count in stats.records.items():
            families["records"].add((("kind", kind),), count)
        families["bytes"].add((), files.bytes_written)
        families["files"].add((), files.files)
        families["deleted"].add((), files.deleted_files)
        for kind, count in sorted(files.errors.items()):
            families["errors"].add((("kind", kind),), count)
        families["dropped"].add((), stats.dropped_records + files.dropped_records)
        families["size"].add((), self._archive.files.total_bytes)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(format_value, POLL_BUCKETS), "+Inf"), stats.poll_buckets):
            cumulative += count
            buckets.append((bound, cumulative))
        families["poll"].add_histogram((), buckets, stats.poll_count, stats.poll_seconds)
        families["method"].add((("method", stats.method),))
        return list(families.values())

    def close(self) -> None:
        self._archive.close()


def _add_arguments(options: Flags) -> None:
    options.add("--collector.tcp.archive", dest="tcp_archive", metavar="DIR", type=_directory,
                help="archive every TCP connection of this network namespace under DIR: a JSONL record at "
                     "each change, a final record at close, one zstd file per connection (off by default)")
    options.add("--collector.tcp.archive-interval", dest="tcp_archive_interval", metavar="MS",
                type=flags.bounded_int(1, 3_600_000, "milliseconds"), default=DEFAULT_INTERVAL_MS,
                help="archive: milliseconds between polls of the connections")
    options.add("--collector.tcp.archive-rotate", dest="tcp_archive_rotate", metavar="S", type=flags.seconds,
                default=DEFAULT_ROTATE_SECONDS, help="archive: a long connection's records go to a new "
                                                     "sequence file every S seconds")
    options.add("--collector.tcp.archive-max-bytes", dest="tcp_archive_max_bytes", metavar="N",
                type=flags.bounded_int(1 << 20, 1 << 50, "bytes"), default=DEFAULT_MAX_BYTES,
                help="archive: delete the oldest files when the archive would pass N bytes")


def _check(args: argparse.Namespace) -> str | None:
    """The archive's directory must be usable at start: a mistyped path is said at once, not logged later."""
    directory = args.tcp_archive
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        return f"--collector.tcp.archive: cannot create {directory}: {error.strerror}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"--collector.tcp.archive: {directory} is not writable by this user"
    return None


def _directory(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a directory, got ''")
    return text


def _add_csv_arguments(parser: argparse.ArgumentParser) -> None:
    from ..archive.reader import COLUMNS
    parser.add_argument("--fields", type=_fields, default=None, metavar="LIST",
                        help="comma-separated columns to write, in this order (default: all: "
                             f"{', '.join(COLUMNS[:13])}, then every tcp_info field and meminfo_*)")
    parser.add_argument("paths", nargs="*", default=["-"], metavar="FILE|DIR|-",
                        help="archive files, directories (read recursively, in name order) or '-' for "
                             "standard input (default -)")


def _fields(text: str) -> tuple[str, ...]:
    from ..archive.reader import COLUMNS
    chosen = tuple(field.strip() for field in text.split(","))
    unknown = [field for field in chosen if field not in COLUMNS]
    if unknown or not all(chosen):
        raise argparse.ArgumentTypeError(f"unknown column {unknown[0] if unknown else ''!r}; "
                                         f"columns are {', '.join(COLUMNS)}")
    return chosen


def _tcp_csv(args: argparse.Namespace) -> int:
    from ..archive.reader import COLUMNS, write_csv
    try:
        write_csv(args.paths, args.fields or COLUMNS, sys.stdout)
    except BrokenPipeError:  # `tcp-csv ... | head`
        return 0
    except OSError as error:
        print(f"netio-exporter tcp-csv: {error.filename or '-'}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


REGISTRATION = Registration(
    name="tcp_archive", help="per-connection archive of tcp_info (with --collector.tcp.archive DIR)",
    default=False, switch=False, enabled_by="tcp_archive", add_arguments=_add_arguments, check=_check,
    build=lambda args: TcpArchiveCollector(args.tcp_archive, args.tcp_archive_interval, args.tcp_archive_rotate,
                                           args.tcp_archive_max_bytes),
    commands=(Command("tcp-csv", "turn tcp archive files into CSV on standard output", _add_csv_arguments,
                      _tcp_csv),))
