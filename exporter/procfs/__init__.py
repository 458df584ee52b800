"""Parsers of the kernel's /proc/net text files: bytes in, plain data out (no prometheus_client).

Each ``read_*`` function takes the directory that holds the files: ``/proc/net`` for the exporter's own
network namespace, ``/proc/PID/net`` for the namespace of process PID (readable without entering it).
Each ``parse_*`` function takes the file's bytes, so recorded files test the parsers.

  snmp      /proc/net/snmp, netstat (header line + values line per protocol) and snmp6 (name value)
  softnet   /proc/net/softnet_stat (one row of hex columns per online CPU)
  sockstat  /proc/net/sockstat and sockstat6 (``PROTO: key value ...``)
"""

from __future__ import annotations

import os

_CHUNK = 1 << 16


def read_bytes(path: str) -> bytes:
    """The whole file: a /proc seq file hands over as many lines as fit in each read, until a read
    returns nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
