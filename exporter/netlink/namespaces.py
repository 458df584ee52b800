"""The host's network namespaces: found, named, and entered (only to open sockets there).

Found under /run/netns (``ip netns add`` names) and through every process's /proc/PID/ns/net, one entry
per namespace (by the nsfs inode); the exporter's own namespace is not among them. Named by the
/run/netns name where there is one, else by the container or Kubernetes pod that owns its first process
(from /proc/PID/cgroup: ``pod:<uid>`` for kubepods, ``container:<id>`` with the 12-digit id for docker,
containerd, CRI-O and podman), else ``inode:<n>``.

A socket stays in the namespace it was made in, so a reader made once in a namespace reads it for good:
``Opener.run_in(namespace, factory)`` makes it on one helper thread that enters the namespace with
setns(2), calls ``factory``, and returns to the exporter's namespace; no other thread ever leaves home.
Entering needs CAP_SYS_ADMIN; another user's /proc/PID/ns/net needs CAP_SYS_PTRACE.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import threading
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
RUN_NETNS = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)

# Kubernetes pod uids in cgroup paths: cgroupfs ".../kubepods/burstable/pod<uid>/..." with dashes, systemd
# ".../kubepods-burstable-pod<uid>.slice/..." with underscores.
_POD = re.compile(r"kubepods.*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
# Container ids: "/docker/<id>", "docker-<id>.scope", "cri-containerd-<id>.scope", "crio-<id>.scope",
# "libpod-<id>.scope", and cgroupfs ".../<id>" under a kubepods pod.
_CONTAINER = re.compile(r"(?:docker|containerd|crio|libpod)[-/]([0-9a-f]{64})(?:\.scope)?(?:/|$)")


@dataclass(frozen=True)
class Namespace:
    inode: int
    label: str
    path: str  # what setns opens: /run/netns/NAME or /proc/PID/ns/net
    pid: int | None  # a process inside it, for /proc/PID/net/*; None for a named namespace with none


def label_from_cgroup(text: str) -> str | None:
    """``pod:<uid>`` or ``container:<12 hex digits>`` from a /proc/PID/cgroup text, or None."""
    pod = _POD.search(text)
    if pod:
        return "pod:" + pod.group(1).replace("_", "-")
    container = _CONTAINER.search(text)
    if container:
        return "container:" + container.group(1)[:12]
    return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def own_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def discover(proc: str = "/proc", run_netns: str = RUN_NETNS) -> tuple[list[Namespace], dict[str, int]]:
    """Every other network namespace, by label, and what was skipped by reason (``permission``: processes
    whose namespace this process may not look at, so their namespaces may be missing)."""
    home = own_inode()
    skipped: dict[str, int] = {}
    found: dict[int, Namespace] = {}
    processes: dict[int, int] = {}  # inode -> first pid seen in it
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        pids = []
    for pid in pids:
        try:
            inode = os.stat(f"{proc}/{pid}/ns/net").st_ino
        except PermissionError:
            skipped["permission"] = skipped.get("permission", 0) + 1
            continue
        except OSError:  # gone, or a kernel thread
            continue
        if inode != home:
            processes.setdefault(inode, pid)
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        inode = _inode(os.path.join(run_netns, name))
        if inode is not None and inode != home and inode not in found:
            found[inode] = Namespace(inode, name, os.path.join(run_netns, name), processes.get(inode))
    for inode, pid in processes.items():
        if inode not in found:
            found[inode] = Namespace(inode, _process_label(proc, pid) or f"inode:{inode}", f"{proc}/{pid}/ns/net",
                                     pid)
    return sorted(found.values(), key=lambda namespace: namespace.label), skipped


def _process_label(proc: str, pid: int) -> str | None:
    try:
        with open(f"{proc}/{pid}/cgroup") as file:
            return label_from_cgroup(file.read())
    except OSError:
        return None


class Opener:
    """One thread that enters namespaces to run factories there (see the module's text)."""

    def __init__(self):
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="netio-netns", daemon=True)
        self._thread.start()

    def run_in(self, namespace: Namespace, factory):
        """``factory()`` called with the helper thread in ``namespace``; its result, or its exception."""
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((namespace.path, factory, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                request = self._requests.get()
                if request is None:
                    return
                path, factory, answer = request
                try:
                    answer.put((True, self._call_in(path, factory, home)))
                except BaseException as error:  # handed to the caller
                    answer.put((False, error))
        finally:
            os.close(home)

    @staticmethod
    def _call_in(path: str, factory, home: int):
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, path)
        finally:
            os.close(target)
        try:
            return factory()
        finally:
            _setns(home, "the exporter's own namespace")  # never stay away


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns into {what}: {os.strerror(error)}")


class Namespaces:
    """The namespaces a scrape covers, each with readers made inside it once and kept while it lives.

    Shared by every collector that reports per namespace (``--collector.netns``): ``current()`` runs
    discovery at most once a second, so the collectors of one scrape see the same set; ``reader(namespace,
    kind, factory)`` returns the reader of that kind made in the namespace (``factory`` runs there on the
    opener thread), or None when the namespace cannot be entered (counted in ``skipped``). Readers of a
    namespace that vanished are closed at the next discovery (a kept socket would keep it alive).
    """

    REFRESH_SECONDS = 1.0

    def __init__(self, include: str | None = None, discover_namespaces=discover):
        self._include = re.compile(include) if include else None
        self._discover = discover_namespaces
        self._opener = Opener()
        self._lock = threading.Lock()
        self._namespaces: list[Namespace] = []
        self._when = float("-inf")
        self._readers: dict[tuple[int, str], object] = {}  # (inode, kind) -> reader
        self._refused: set[int] = set()  # inodes that could not be entered: counted once
        self.skipped: dict[str, int] = {}

    def current(self) -> list[Namespace]:
        with self._lock:
            now = time.monotonic()
            if now - self._when >= self.REFRESH_SECONDS:
                self._when = now
                found, skipped = self._discover()
                if self._include is not None:
                    found = [namespace for namespace in found if self._include.fullmatch(namespace.label)]
                for reason, count in skipped.items():
                    self.skipped[reason] = self.skipped.get(reason, 0) + count
                alive = {namespace.inode for namespace in found}
                for key in [key for key in self._readers if key[0] not in alive]:
                    _close(self._readers.pop(key))
                self._refused &= alive
                self._namespaces = found
            return list(self._namespaces)

    def reader(self, namespace: Namespace, kind: str, factory):
        key = (namespace.inode, kind)
        with self._lock:
            reader = self._readers.get(key)
            if reader is not None or namespace.inode in self._refused:
                return reader
            try:
                reader = self._readers[key] = self._opener.run_in(namespace, factory)
            except OSError as error:
                self._refused.add(namespace.inode)
                reason = "permission" if error.errno in (1, 13) else "gone" if error.errno == 2 else "error"
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                return None
            return reader

    def read_each(self, kind: str, factory, read):
        """``(namespace, read(reader))`` for every current namespace, its ``kind`` reader made by ``factory``
        inside it; a namespace that cannot be entered, or that went away since discovery (the read raises
        OSError), is left out: it has no series."""
        for namespace in self.current():
            reader = self.reader(namespace, kind, factory)
            if reader is None:
                continue
            try:
                result = read(reader)
            except OSError:
                continue
            yield namespace, result

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                _close(reader)
            self._readers.clear()
        self._opener.close()


def _close(reader) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        close()
