"""Value parsers for the command line: each takes the text of one flag and returns its value or raises
``argparse.ArgumentTypeError`` with what it accepts (argparse adds the flag's name). The CLI and every
collector's flags (``collectors.Registration``) use these; nothing here imports a collector."""

from __future__ import annotations

import argparse
import ipaddress
import re

__all__ = ["port", "address", "seconds", "regex", "bounded_int", "interface", "choice", "port_list",
           "parse_seconds"]


def _ascii_int(text: str) -> int | None:
    """An int from ASCII digits only (int() also takes '٧٠٧٠', '1_000', ' 7 ')."""
    return int(text) if text.isascii() and text.isdigit() else None


def port(text: str) -> int:
    value = _ascii_int(text)
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def address(text: str) -> str:
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        parsed = ipaddress.ip_address(inner)
        if inner is not text and parsed.version != 6:
            raise ValueError("brackets are for IPv6")
        return str(parsed)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IPv4 or IPv6 address such as 0.0.0.0 or ::, got {text!r}")


MIN_SECONDS = 0.01  # shorter intervals would busy-loop
MAX_SECONDS = 10**7


def parse_seconds(text: str) -> float:
    """Seconds from 0.01 to 10^7; ValueError with what it accepts."""
    try:
        value = float(text) if text.strip().isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise ValueError(f"expected a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0e}, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        return parse_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {error}")
    return text


def bounded_int(low: int, high: int, what: str):
    def parse(text: str) -> int:
        value = _ascii_int(text)
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} {low}-{high}, got {text!r}")
        return value
    return parse


def interface(text: str) -> str:
    if not text or len(text.encode()) > 15 or "/" in text or any(c.isspace() for c in text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected an interface name (1-15 bytes, no '/' or spaces), got {text!r}")
    return text


def choice(*values: str):
    def parse(text: str) -> str:
        if text not in values:
            listed = f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]
            raise argparse.ArgumentTypeError(f"expected {listed}, got {text!r}")
        return text
    return parse


def port_list(text: str) -> frozenset[int]:
    """``"22,443"`` -> ``frozenset({22, 443})``."""
    ports = set()
    for item in text.split(","):
        value = _ascii_int(item.strip())
        if value is None or not 1 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"expected comma-separated port numbers 1-65535, got {text!r}")
        ports.add(value)
    return frozenset(ports)
