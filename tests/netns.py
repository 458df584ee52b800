"""Entering network namespaces by name (``ip netns add`` ones), for the tests and the benchmarks.

A thread that enters a namespace with setns(2) creates its sockets there; they stay there after it
leaves. Plain module (no pytest) so that bench/ can import it too.
"""

from __future__ import annotations

import contextlib
import ctypes

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
