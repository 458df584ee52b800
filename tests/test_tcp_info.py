"""struct tcp_info's table (exporter/netlink/tcp_info.py) against the UAPI header and the running kernel."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess

from exporter.netlink import tcp_info
from tests.support import require


def test_offsets_match_the_uapi_header(tmp_path):
    require(shutil.which("cc") is not None, "needs a C compiler (apt-get install gcc)")
    fields = [name for name, _, _ in tcp_info.FIELDS if name not in ("wscale", "flags")]
    header = open("/usr/include/linux/tcp.h").read()
    present = [name for name in fields if f"tcpi_{name};" in header or f"tcpi_{name} " in header]
    source = tmp_path / "offsets.c"
    source.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/tcp.h>\nint main(void) {\n"
                      + "".join(f'printf("{name} %zu\\n", offsetof(struct tcp_info, tcpi_{name}));\n'
                                for name in present) + "return 0; }\n")
    subprocess.run(["cc", str(source), "-o", str(tmp_path / "offsets")], check=True)
    printed = subprocess.run([str(tmp_path / "offsets")], capture_output=True, text=True, check=True).stdout
    offsets = {name: offset for name, offset, _ in tcp_info.FIELDS}
    assert len(present) > 50
    for line in printed.splitlines():
        name, offset = line.split()
        assert offsets[name] == int(offset), name


def test_the_table_covers_this_kernels_struct_and_decodes_a_prefix():
    with socket.socket() as probe:
        raw = probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024)
    assert len(raw) <= tcp_info.SIZE  # every field this kernel sends has a name
    decoded = tcp_info.decode(raw)
    assert decoded["state"] == 7 and decoded["snd_cwnd"] > 0  # TCP_CLOSE, the initial window
    short = tcp_info.decode(raw[:104])  # a 4.1-era kernel's length: fields past it are absent
    assert "total_retrans" in short and "bytes_acked" not in short
    assert tuple(decoded) == tcp_info.NAMES[:len(decoded)]


def test_the_json_of_a_prefix_is_what_json_dumps_writes_of_its_fields():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        raw = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024)
    for length in (len(raw), 104, 8, 7):  # this kernel's, a 4.1-era kernel's, the bit fields alone, less
        expected = json.dumps(tcp_info.decode(raw[:length]), separators=(",", ":"))
        assert tcp_info.prefix(length).json(raw[:length]) == expected.encode()
    newer = raw + bytes(max(0, tcp_info.SIZE - len(raw)) + 64)  # a newer kernel's: what follows the table is not read
    assert tuple(tcp_info.decode(newer)) == tcp_info.NAMES
    assert tcp_info.prefix(len(newer)).json(newer) == json.dumps(tcp_info.decode(newer), separators=(",", ":")).encode()


def test_the_json_pieces_kept_by_their_bytes_follow_every_change_of_those_bytes():
    """json() keeps the JSON of the first 8 bytes and of the last fields (rehash on) by their bytes: records
    that differ only there, or only between, are each written as json.dumps writes them."""
    layout = dict((name, offset) for name, offset, _ in tcp_info.FIELDS)
    base = bytearray(tcp_info.SIZE)
    base[0] = 1
    variants = []
    for rehash, bytes_acked, accecn in ((0, 0, 0), (3, 0, 0), (3, 7, 0), (0, 7, 0), (0, 7, 9), (3, 0, 9)):
        raw = bytearray(base)
        struct.pack_into("=I", raw, layout["rehash"], rehash)
        struct.pack_into("=Q", raw, layout["bytes_acked"], bytes_acked)
        struct.pack_into("=H", raw, layout["accecn_opt_seen"], accecn)
        variants.append(bytes(raw))
    layout = tcp_info.prefix(tcp_info.SIZE)
    for raw in variants + variants[::-1]:
        assert layout.json(raw) == json.dumps(tcp_info.decode(raw), separators=(",", ":")).encode()
