"""Every field of ``struct tcp_info`` (include/uapi/linux/tcp.h, as of Linux 6.18) as one table, and a
decoder for the prefix a kernel sends (older kernels send a shorter struct, newer ones a longer one: fields
beyond what was sent are absent, bytes beyond the table are ignored).

Names are the kernel's without ``tcpi_``; units are the kernel's: times in microseconds (``rto``, ``ato``,
``rtt``, ``rttvar``, ``rcv_rtt``, ``min_rtt``, ``busy_time``, ``rwnd_limited``, ``sndbuf_limited``), the
``last_*`` times and ``total_rto_time`` in milliseconds, rates in bytes per second, the rest in segments,
bytes or counts. tests/test_tcp_info.py checks the offsets against the UAPI header with offsetof and the
length against the running kernel's.
"""

from __future__ import annotations

import struct

# (name, struct format) in declaration order; offsets follow C's natural alignment. Two bytes hold bit
# fields: "wscale" (snd_wscale:4, rcv_wscale:4) and "flags" (delivery_rate_app_limited:1,
# fastopen_client_fail:2), split by decode().
_DECLARED = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"), ("backoff", "B"),
    ("options", "B"), ("wscale", "B"), ("flags", "B"),
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"), ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"), ("snd_ssthresh", "I"),
    ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"), ("bytes_received", "Q"),
    ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"),
    ("rcv_wnd", "I"), ("rehash", "I"), ("total_rto", "H"), ("total_rto_recoveries", "H"),
    ("total_rto_time", "I"),
    ("received_ce", "I"), ("delivered_e1_bytes", "I"), ("delivered_e0_bytes", "I"),
    ("delivered_ce_bytes", "I"), ("received_e1_bytes", "I"), ("received_e0_bytes", "I"),
    ("received_ce_bytes", "I"), ("accecn_fail_mode", "H"), ("accecn_opt_seen", "H"),
)


def _layout() -> tuple[tuple[str, int, str], ...]:
    fields, offset = [], 0
    for name, fmt in _DECLARED:
        size = struct.calcsize(fmt)
        offset = (offset + size - 1) // size * size
        fields.append((name, offset, fmt))
        offset += size
    return tuple(fields)


FIELDS = _layout()
"""(name, offset, format) of every field, in order (bit-field bytes as "wscale" and "flags")."""
SIZE = FIELDS[-1][1] + struct.calcsize(FIELDS[-1][2])

# Field names as decode() returns them: the bit-field bytes split into their members (snd_wscale:4,
# rcv_wscale:4 and delivery_rate_app_limited:1, fastopen_client_fail:2, low bits first on the
# little-endian machines this runs on).
_HEAD = ("state", "ca_state", "retransmits", "probes", "backoff", "options", "snd_wscale", "rcv_wscale",
         "delivery_rate_app_limited", "fastopen_client_fail")
NAMES = _HEAD + tuple(name for name, _, _ in FIELDS[8:])
# Timers that move every millisecond while nothing else does: change detection ignores them. They are
# adjacent: TIMER_BYTES is the byte range they take.
TIMERS = ("last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv")

_OFFSETS = {name: offset for name, offset, _ in FIELDS}
TIMER_BYTES = (_OFFSETS[TIMERS[0]], _OFFSETS[TIMERS[-1]] + 4)
assert TIMER_BYTES[1] - TIMER_BYTES[0] == 4 * len(TIMERS)

class Prefix:
    """How to read the fields a kernel's tcp_info of one length holds: ``names`` (``NAMES`` order),
    ``values(raw)`` (a tuple in that order), ``json(raw)``, the JSON object of them as bytes (as
    json.dumps with compact separators would write it), from precompiled formats: no dict, and
    ``json_parts(raw)``, that object in pieces to join (a record joins all of its pieces once)."""

    __slots__ = ("names", "values", "json_parts")

    def __init__(self, length: int):
        fields = [(name, offset, fmt) for name, offset, fmt in FIELDS if offset + struct.calcsize(fmt) <= length]
        unpack_from = _struct(fields, 0).unpack_from
        if len(fields) < 8:  # shorter than 8 bytes, without the bit-field bytes: no kernel sends that
            self.names, self.values = tuple(name for name, _, _ in fields), unpack_from
            template = ("{" + ",".join(f'"{name}":%d' for name in self.names) + "}").encode()
            self.json_parts = lambda raw: (template % unpack_from(raw),)
            return
        self.names = _HEAD + tuple(name for name, _, _ in fields[8:])

        def values(raw) -> tuple[int, ...]:
            head = unpack_from(raw)
            wscale, flags = head[6], head[7]
            return (*head[:6], wscale & 15, wscale >> 4, flags & 1, flags >> 1 & 3, *head[8:])

        # The first 8 bytes (state, the bit fields, ...) take few values, and so do the last fields (from
        # rehash on: RTO and AccECN counters, zero on most connections): their JSON is kept by their bytes.
        # Only the fields between are formatted each time.
        middle = [field for field in fields[8:] if field[1] < _KEPT_TAIL]
        tail = fields[8 + len(middle):]
        heads: dict[bytes, bytes] = {}
        tails: dict[bytes, bytes] = {}
        head_template = ("{" + ",".join(f'"{name}":%d' for name in _HEAD) + ("," if fields[8:] else "")).encode()
        middle_template = (",".join(f'"{name}":%d' for name, _, _ in middle) + ("," if tail else "}")).encode()
        tail_template = (",".join(f'"{name}":%d' for name, _, _ in tail) + "}").encode() if tail else b""
        middle_read = _struct(middle, 8).unpack_from
        tail_read = _struct(tail, _KEPT_TAIL).unpack_from if tail else lambda raw, offset: ()
        tail_end = tail[-1][1] + struct.calcsize(tail[-1][2]) if tail else _KEPT_TAIL

        def json_parts(raw) -> tuple[bytes, bytes, bytes]:
            key = raw[:8]
            head = heads.get(key)
            if head is None:
                if len(heads) >= _KEPT:
                    heads.clear()
                wscale, flags = raw[6], raw[7]
                head = heads[key] = head_template % (*raw[:6], wscale & 15, wscale >> 4, flags & 1, flags >> 1 & 3)
            key = raw[_KEPT_TAIL:tail_end]
            end = tails.get(key)
            if end is None:
                if len(tails) >= _KEPT:
                    tails.clear()
                end = tails[key] = tail_template % tail_read(raw, _KEPT_TAIL)
            return head, middle_template % middle_read(raw, 8), end

        self.values, self.json_parts = values, json_parts

    def json(self, raw) -> bytes:
        return b"".join(self.json_parts(raw))


_KEPT = 4096  # JSON pieces kept by their bytes, each of the head and the tail
_KEPT_TAIL = _OFFSETS["rehash"]


def _struct(fields: list[tuple[str, int, str]], start: int) -> struct.Struct:
    """One Struct reading ``fields`` (name, offset, format), from byte ``start``."""
    layout, position = "=", start
    for _, offset, fmt in fields:
        layout += f"{offset - position}x{fmt}" if offset > position else fmt
        position = offset + struct.calcsize(fmt)
    return struct.Struct(layout)


_PREFIXES: dict[int, Prefix] = {}


def prefix(length: int) -> Prefix:
    """The ``Prefix`` of a kernel's tcp_info of ``length`` bytes (bytes beyond ``SIZE`` are not read)."""
    entry = _PREFIXES.get(length)
    if entry is None:
        entry = _PREFIXES[length] = Prefix(min(length, SIZE))
    return entry


def decode(raw: bytes) -> dict[str, int]:
    """The fields a kernel's tcp_info bytes hold, by name (``NAMES`` order)."""
    layout = prefix(len(raw))
    return dict(zip(layout.names, layout.values(raw)))
