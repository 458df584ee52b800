"""Reading the archive back: records from files, directories or standard input, and ``tcp-csv``'s table.

A file is a run of independent zstd frames; a file still being written may end in a frame cut short,
which is skipped (everything before it is whole). Columns: ``COLUMNS``, fixed and documented.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator

from ..netlink import tcp_info
from ..netlink.connections import MEMINFO_NAMES
from .files import SUFFIX

IDENTITY = ("timestamp", "kind", "uuid", "family", "local_address", "local_port", "remote_address",
            "remote_port", "state", "old_state", "congestion", "start", "source")
# tcp_info's own numeric ``state`` is left out: ``state`` is its name, from the record.
COLUMNS = (IDENTITY + tuple(name for name in tcp_info.NAMES if name not in IDENTITY)
           + tuple(f"meminfo_{name}" for name in MEMINFO_NAMES))


def frames(data: bytes) -> Iterator[bytes]:
    """The decompressed content of each complete frame in ``data``; a truncated last frame ends it."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    while data:
        stream = decompressor.decompressobj()
        try:
            content = stream.decompress(data)
        except zstandard.ZstdError:
            return  # not zstd, or damaged: what came before stands
        if not stream.eof:
            return  # cut short (still being written)
        yield content
        data = stream.unused_data


def _files(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            for root, directories, names in os.walk(path):
                directories.sort()
                yield from (os.path.join(root, name) for name in sorted(names) if name.endswith(SUFFIX))
        else:
            yield path


def records(paths: Iterable[str]) -> Iterator[dict]:
    """Every record of the named files and directories ('-' is standard input), file by file in name
    order; within a file, in the order written."""
    for path in _files(paths):
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
        for content in frames(data):
            for line in content.splitlines():
                if line:
                    yield json.loads(line)


def row(record: dict, header: dict | None) -> dict:
    """One CSV row: the record's own fields, the connection's identity from its header, flattened."""
    values = dict(header or {})
    values.update(record.get("tcp_info", {}))
    values.update((f"meminfo_{name}", value) for name, value in record.get("meminfo", {}).items())
    values.update((key, value) for key, value in record.items() if not isinstance(value, dict))
    return values


def write_csv(paths: Iterable[str], columns: tuple[str, ...], out) -> int:
    """Write the header row and one row per record; returns the number of records."""
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    headers: dict[str, dict] = {}
    count = 0
    for record in records(paths):
        if record.get("kind") == "header":
            headers[record["uuid"]] = {key: record[key] for key in IDENTITY if key in record
                                       and key not in ("timestamp", "kind")}
        writer.writerow(row(record, headers.get(record.get("uuid"))))
        count += 1
    return count
