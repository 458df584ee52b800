"""The enumerations of the running kernel's BTF (/sys/kernel/btf/vmlinux): name -> value, by enum name.

The drops collector names drop reasons from ``enum skb_drop_reason`` this way, so every kernel's own
list appears without a table here to keep up to date. The format is the kernel's
Documentation/bpf/btf.rst and include/uapi/linux/btf.h: a header, a type section (one ``struct
btf_type`` per type, numbered from 1, each followed by data whose size its kind decides) and a string
section that the types point into by offset. Nothing but enums is decoded; the other kinds are skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = ["BtfError", "enums", "read_enums"]

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
# struct btf_header { u16 magic; u8 version; u8 flags; u32 hdr_len; u32 type_off, type_len, str_off,
# str_len; }: the section offsets count from the end of the header (hdr_len bytes).
_HEADER = "HBBIIIII"
# struct btf_type { u32 name_off; u32 info; u32 size_or_type; }; info: vlen in bits 0-15, kind in
# bits 24-28, kind_flag in bit 31 (for an enum: the values are signed).
_TYPE = "III"
_KIND_ENUM, _KIND_ENUM64 = 6, 19
# Bytes after struct btf_type, by kind: (fixed, per vlen item). INT: u32 encoding; ARRAY: struct
# btf_array; STRUCT, UNION: struct btf_member; ENUM: struct btf_enum; FUNC_PROTO: struct btf_param;
# VAR: struct btf_var; DATASEC: struct btf_var_secinfo; DECL_TAG: struct btf_decl_tag; ENUM64: struct
# btf_enum64. PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: nothing.
_TRAILING = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
             9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12),
             16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12)}


class BtfError(ValueError):
    """The data is not BTF this reader understands (bad magic, truncated, a kind it cannot skip)."""


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    if offset >= len(strings) or end < 0:
        raise BtfError(f"string offset {offset} outside the string section")
    return strings[offset:end].decode()


def enums(data: bytes, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """The enumerators of each enum in ``names`` found in the BTF ``data``: {enum: {enumerator: value}}.

    Enums that are absent are missing from the result; an anonymous or repeated name takes the first.
    """
    if len(data) < struct.calcsize("<" + _HEADER):
        raise BtfError("shorter than a BTF header")
    order = "<" if struct.unpack_from("<H", data)[0] == _MAGIC else ">"
    magic, _version, _flags, header_length, type_off, type_len, str_off, str_len = \
        struct.unpack_from(order + _HEADER, data)
    if magic != _MAGIC:
        raise BtfError(f"bad BTF magic {magic:#06x}")
    types_start, strings_start = header_length + type_off, header_length + str_off
    if types_start + type_len > len(data) or strings_start + str_len > len(data):
        raise BtfError("a section runs past the end of the data")
    strings = data[strings_start:strings_start + str_len]
    wanted = {}  # string offset of a wanted name -> the name
    for name in names:
        found = strings.find(b"\0" + name.encode() + b"\0")
        if found >= 0:
            wanted[found + 1] = name
    result: dict[str, dict[str, int]] = {}
    type_header = struct.Struct(order + _TYPE)
    enum32, enum64 = struct.Struct(order + "Ii"), struct.Struct(order + "III")
    offset, end = types_start, types_start + type_len
    while offset < end and len(result) < len(wanted):
        if offset + type_header.size > end:
            raise BtfError("truncated type section")
        name_off, info, _size = type_header.unpack_from(data, offset)
        offset += type_header.size
        kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
        try:
            fixed, item = _TRAILING[kind]
        except KeyError:
            raise BtfError(f"unknown BTF kind {kind}: a kernel newer than this reader") from None
        if kind in (_KIND_ENUM, _KIND_ENUM64) and name_off in wanted and wanted[name_off] not in result:
            if offset + vlen * item > end:
                raise BtfError("truncated enum")
            values = {}
            for index in range(vlen):
                if kind == _KIND_ENUM:
                    enumerator, value = enum32.unpack_from(data, offset + index * item)
                    value = value if signed else value & 0xFFFFFFFF
                else:
                    enumerator, low, high = enum64.unpack_from(data, offset + index * item)
                    value = high << 32 | low
                    value = value - (1 << 64) if signed and value >> 63 else value
                values[_string(strings, enumerator)] = value
            result[wanted[name_off]] = values
        offset += fixed + vlen * item
    return result


def read_enums(names: Iterable[str], path: str = VMLINUX) -> dict[str, dict[str, int]]:
    """``enums()`` of the running kernel's BTF (OSError if it has none)."""
    with open(path, "rb") as file:
        return enums(file.read(), names)
