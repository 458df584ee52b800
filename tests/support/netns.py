"""Network namespaces by name (``ip netns add`` ones) and processes in them, for the tests and benchmarks.

A thread that enters a namespace with setns(2) creates its sockets there; they stay there after it
leaves. Plain module (no pytest) so that bench/ can import it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` for good."""
    with open(f"/run/netns/{name}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block with this thread in network namespace ``name``, then return home."""
    with open("/proc/thread-self/ns/net") as home:
        enter_netns(name)
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


class NetnsProcess:
    """A command of ours run in namespace ``ns`` through ``ip netns exec`` (which execs it, so the Popen
    pid is the command's own), in its own session so Ctrl-C reaches only us; ended by its pid."""

    def __init__(self, ns: str, command: list[str], stdout=subprocess.DEVNULL):
        self.ns = ns
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, *command], stdin=subprocess.DEVNULL,
                                        stdout=stdout, stderr=self.log, start_new_session=True)
        self.pid = self.process.pid

    def wait_entered(self, timeout: float = 10) -> None:
        """Until our pid is in the namespace (``ip`` setns()es after the fork Popen returns from);
        RuntimeError if it exits first."""
        inode = os.stat(f"/run/netns/{self.ns}").st_ino
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pid {self.pid} exited {self.process.returncode}: {self.stderr()}")
            try:
                if os.stat(f"/proc/{self.pid}/ns/net").st_ino == inode:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"pid {self.pid} did not enter {self.ns} within {timeout:g} s")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip()

    def wait_listening(self, port: int, timeout: float = 20) -> None:
        """Until something accepts on 127.0.0.1:``port`` in the namespace; RuntimeError if we exit first."""
        deadline = time.monotonic() + timeout
        with in_netns(self.ns):
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"pid {self.pid} exited {self.process.returncode}: {self.stderr()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return
                except OSError:
                    time.sleep(0.05)
        raise RuntimeError(f"pid {self.pid} did not listen on port {port} within {timeout:g} s")

    def expect_command(self, text: str) -> None:
        """Check that our pid runs the command (not ``ip``): memory figures must be the command's own."""
        with open(f"/proc/{self.pid}/cmdline", "rb") as file:
            cmdline = file.read().replace(b"\0", b" ").decode()
        if text not in cmdline or cmdline.startswith("ip "):
            raise RuntimeError(f"pid {self.pid} runs {cmdline!r}, not {text!r}")

    def memory_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        values = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        if not self.log.closed:
            self.log.close()
        return self.process.returncode
