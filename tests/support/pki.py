"""A throw-away certificate authority made with openssl, for TLS tests and benchmarks (no pytest here)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificate(directory: Path, name: str, ca: str, usage: str, san: str | None = None) -> None:
    """``name``.key/.crt signed by ``ca``.key/.crt, an EC P-256 key."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)


def make_authority(directory: Path) -> Path:
    """ca.crt, server.crt/.key for 127.0.0.1 and localhost, client.crt/.key, all in ``directory``."""
    directory.mkdir(exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=netio test CA", cwd=directory)
    make_certificate(directory, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    make_certificate(directory, "client", "ca", "clientAuth")
    return directory
