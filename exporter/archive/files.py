"""The archive's files: one per connection and sequence, each a run of independent zstd frames.

``DIR/YYYY/MM/DD/<uuid>.<seq>.jsonl.zst`` (UTC date of the file's first write). Nothing is held open:
each flush appends one frame per connection (open, write, close), so 2,000 connections cost no open
file and no compressor each, and a reader only ever sees whole frames (a frame cut short by a full disk
is truncated away at once). A connection that lives past ``rotate_seconds`` moves on to its next
sequence file, which starts with the header record again. The oldest files go first when the archive
would pass ``max_bytes``. Write errors are counted by kind and logged once per kind; they never raise.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

log = logging.getLogger("netio_exporter")

SUFFIX = ".jsonl.zst"
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_EXISTING = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_ERROR_KINDS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EACCES: "permission",
                errno.EPERM: "permission", errno.EROFS: "read_only"}


def error_kind(error: OSError) -> str:
    return _ERROR_KINDS.get(error.errno, "io")


@dataclass
class FileStats:
    bytes_written: int = 0
    files: int = 0
    deleted_files: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dropped_records: int = 0


@dataclass
class _Open:
    """Where a connection's records go now (no file handle: just the path and its sequence)."""
    path: str  # relative to the archive's directory
    sequence: int
    since: float  # time.monotonic() of the sequence's first write


def _write_all(fd: int, frame: bytes) -> None:
    written = os.write(fd, frame)
    while written < len(frame):
        written += os.write(fd, frame[written:])


def compressor():
    """``compress(bytes) -> bytes``, one complete zstd frame: level 1, the cheapest that keeps ~2.3x on a
    record line (level -1 costs 30% more bytes)."""
    import zstandard
    return zstandard.ZstdCompressor(level=1).compress


class ArchiveFiles:
    """Appends frames to per-connection files under ``directory``; thread-safe for one writer."""

    def __init__(self, directory: str, rotate_seconds: float, max_bytes: int, compress):
        self.directory = os.path.abspath(directory)
        self.rotate_seconds = rotate_seconds
        self.max_bytes = max_bytes
        self._compress = compress  # bytes -> one complete zstd frame
        self.stats = FileStats()
        self._lock = threading.Lock()  # stats are read by scrapes
        self._current: dict[str, _Open] = {}  # uuid -> its current file
        self._sizes: OrderedDict[str, int] = OrderedDict()  # every archive file, oldest first
        self._total = 0
        self._logged: set[str] = set()
        self._written = self._started = 0  # bytes and files not yet in stats (settle())
        os.makedirs(self.directory, exist_ok=True)
        # Files are opened relative to the directory: the path walk of its own components once, not a frame.
        self._root = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._scan()

    def close(self) -> None:
        os.close(self._root)

    def _scan(self) -> None:
        """Every file already in the archive, oldest first (by modification time), for retention."""
        found = []
        for root, _, names in os.walk(self.directory):
            for name in names:
                if name.endswith(SUFFIX):
                    path = os.path.join(root, name)
                    try:
                        status = os.stat(path)
                    except OSError:
                        continue
                    found.append((status.st_mtime, os.path.relpath(path, self.directory), status.st_size))
        for _, path, size in sorted(found):
            self._sizes[path] = size
            self._total += size

    @property
    def total_bytes(self) -> int:
        return self._total

    def append(self, uuid: str, header: bytes, lines: bytes, records: int, now: float) -> None:
        """Append ``lines`` (JSON lines of ``records`` records) to the connection's current file as one
        frame; a new file (first, rotated, or deleted by retention) starts with ``header``. ``now`` is
        time.monotonic() (one reading serves a flush). What it wrote reaches ``stats`` at ``settle()``."""
        current = self._current.get(uuid)
        if current is None or now - current.since >= self.rotate_seconds:
            sequence = 0 if current is None else current.sequence + 1
            current = self._current[uuid] = _Open(self._path(uuid, sequence), sequence, now)
        path = current.path
        if self._total + len(header) + len(lines) > self.max_bytes:  # an upper bound of the frame
            self._make_room(len(header) + len(lines))
        size = self._sizes.get(path)  # None: a new file (also when retention just took it)
        if size is not None:  # without O_CREAT, which takes the directory's lock: ~1-2 µs less an append
            try:
                fd = os.open(path, _EXISTING, dir_fd=self._root)
            except FileNotFoundError:  # removed behind the archive's back: it starts again, header first
                self._total -= self._sizes.pop(path)
                size = None
            except OSError as error:
                self._error(error, path)
                self._drop(records)
                return
        if size is None:
            self._start(path, self._compress(header + lines), records)
            return
        frame = self._compress(lines)
        try:
            _write_all(fd, frame)
        except OSError as error:
            try:
                os.ftruncate(fd, size)  # never leave a torn frame for a reader
            except OSError:
                pass
            self._error(error, path)
            self._drop(records)
            return
        finally:
            os.close(fd)
        self._sizes[path] = size + len(frame)
        self._total += len(frame)
        self._written += len(frame)

    def settle(self) -> None:
        """The bytes and files appended since the last call reach ``stats``: one lock a flush, not a frame."""
        with self._lock:
            self.stats.bytes_written += self._written
            self.stats.files += self._started
        self._written = self._started = 0

    def snapshot(self) -> FileStats:
        """A copy of ``stats``, safe from any thread."""
        with self._lock:
            stats = self.stats
            return FileStats(stats.bytes_written, stats.files, stats.deleted_files, dict(stats.errors),
                             stats.dropped_records)

    def forget(self, uuid: str) -> None:
        """The connection ended: its files stay, its place in memory goes."""
        self._current.pop(uuid, None)

    def _path(self, uuid: str, sequence: int) -> str:
        return time.strftime("%Y/%m/%d/", time.gmtime()) + f"{uuid}.{sequence}{SUFFIX}"

    def _start(self, path: str, frame: bytes, records: int) -> None:
        """A new file at ``path`` holding ``frame`` (its header and first records)."""
        try:
            os.makedirs(os.path.join(self.directory, os.path.dirname(path)), exist_ok=True)
            fd = self._open_new(path)
        except OSError as error:
            self._error(error, path)
            self._drop(records + 1)
            return
        try:
            _write_all(fd, frame)
        except OSError as error:
            try:
                os.unlink(path, dir_fd=self._root)  # no empty file: the next append starts it again, header first
            except OSError:
                pass
            self._error(error, path)
            self._drop(records + 1)
            return
        finally:
            os.close(fd)
        self._sizes[path] = len(frame)  # a new file goes last: the order is creation order
        self._total += len(frame)
        self._written += len(frame)
        self._started += 1

    def _drop(self, records: int) -> None:
        with self._lock:
            self.stats.dropped_records += records

    def _open_new(self, path: str) -> int:
        try:
            return os.open(path, _APPEND, 0o640, dir_fd=self._root)
        except FileNotFoundError:
            pass
        # The directory itself was removed (and made again by makedirs): open the new one.
        root = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.close(self._root)
        self._root = root
        return os.open(path, _APPEND, 0o640, dir_fd=root)

    def _make_room(self, incoming: int) -> None:
        while self._sizes and self._total + incoming > self.max_bytes:
            path, size = self._sizes.popitem(last=False)
            self._total -= size
            try:
                os.unlink(path, dir_fd=self._root)
            except FileNotFoundError:
                pass
            except OSError as error:
                self._error(error, path)
                continue
            with self._lock:
                self.stats.deleted_files += 1
            self._remove_empty_directories(os.path.dirname(path))

    def _remove_empty_directories(self, directory: str) -> None:
        while directory:
            try:
                os.rmdir(directory, dir_fd=self._root)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def _error(self, error: OSError, path: str) -> None:
        kind = error_kind(error)
        with self._lock:
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("tcp archive: cannot write %s: %s (counted in netio_tcp_archive_errors_total{kind=\"%s\"}; "
                      "said once)", os.path.join(self.directory, path), error.strerror or error, kind)
