"""The syscalls that can reach a socket's sendmsg/recvmsg, per architecture, for netstack_syscalls.bpf.c.

read/write and their vector forms, the send and recv calls, sendfile, splice, io_uring_enter.
sys_enter sees the number of the ABI the task called in, so the 32-bit compat numbers are in the
set too (an unrelated native call that shares a number only costs a clock read). Sources:
arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl; include/uapi/asm-generic/unistd.h (arm64)
and arch/arm/tools/syscall.tbl (its compat tasks).
"""

from __future__ import annotations

__all__ = ["NETWORK_SYSCALLS", "SYSCALL_SET_BYTES", "network_syscall_set"]

NETWORK_SYSCALLS = {
    "x86_64": (0, 1, 19, 20, 40, 44, 45, 46, 47, 275, 299, 307, 327, 328, 426,
               3, 4, 102, 145, 146, 187, 239, 313, 337, 345, 369, 370, 371, 372, 378, 379, 417),
    "aarch64": (63, 64, 65, 66, 71, 76, 206, 207, 211, 212, 243, 269, 286, 287, 426,
                3, 4, 145, 146, 187, 239, 289, 290, 291, 292, 296, 297, 340, 365, 374, 392, 393, 417),
}
SYSCALL_SET_BYTES = 512 // 8  # struct syscall_set: SYSCALL_SET_BITS in netstack_syscalls.bpf.c


def network_syscall_set(machine: str) -> bytes:
    """``struct syscall_set`` for ``machine`` (``os.uname().machine``); every bit set where its
    numbers are not known here (every syscall then reads the clock: slower, never wrong)."""
    numbers = NETWORK_SYSCALLS.get(machine)
    if numbers is None:
        return b"\xff" * SYSCALL_SET_BYTES
    return sum(1 << number for number in numbers).to_bytes(SYSCALL_SET_BYTES, "little")
