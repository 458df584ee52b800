"""Compiling the ``*.bpf.c`` programs with clang, and finding the compiled objects.

Two ways to get an object, tried in order by ``object_path()``:
1. ``<name>.bpf.o`` next to its source: the package build (``setup.py``'s build_py hook, which calls
   ``compile_all()``) puts the objects there inside the built package, so a wheel ships them.
2. Compiled on demand into a cache directory (``$NETIO_EXPORTER_BPF_CACHE``, else
   ``$XDG_CACHE_HOME/netio-exporter/bpf``, else ``~/.cache/netio-exporter/bpf``), named after a hash of
   the source, the clang version and the flags, so an editable install (sources edited in place, no
   build step) always runs what the source says.
Without clang and without a shipped object, ``BpfObjectMissing`` says how to get one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
# Every program in this directory, by name (netstack_softirq for netstack_softirq.bpf.c).
SOURCES = tuple(sorted(path.name[:-len(".bpf.c")] for path in SOURCE_DIR.glob("*.bpf.c")))


class BpfObjectMissing(Exception):
    """No compiled object and no way to compile one here; the message says what to install."""


def _include_flags() -> list[str]:
    # clang -target bpf does not search the multiarch directory that holds asm/types.h.
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    flags = []
    for directory in (f"/usr/include/{multiarch}",):
        if os.path.isdir(directory):
            flags.append(f"-I{directory}")
    return flags


def clang_command(source: Path, output: Path, clang: str = "clang") -> list[str]:
    return [clang, "-target", "bpf", "-g", "-O2", "-Wall", *_include_flags(), "-c", str(source),
            "-o", str(output)]


def compile_object(source: Path, output: Path, clang: str | None = None) -> None:
    """Compile one source; raises ``BpfObjectMissing`` with clang's message on failure."""
    clang = clang or os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        raise BpfObjectMissing("clang is not installed")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, suffix=".o.tmp", delete=False) as temporary:
        pass
    try:
        result = subprocess.run(clang_command(source, Path(temporary.name), clang),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BpfObjectMissing(f"clang failed on {source.name}: {result.stderr.strip()[-2000:]}")
        os.replace(temporary.name, output)  # atomic: concurrent compilers never see half a file
    finally:
        if os.path.exists(temporary.name):
            os.unlink(temporary.name)


def compile_all(destination: Path, clang: str | None = None) -> tuple[list[Path], list[str]]:
    """Build hook: compile every source into ``destination``; returns (objects written, failures).

    One program that does not compile does not keep the others out of the package.
    """
    written, failures = [], []
    for name in SOURCES:
        output = destination / f"{name}.bpf.o"
        try:
            compile_object(SOURCE_DIR / f"{name}.bpf.c", output, clang)
            written.append(output)
        except BpfObjectMissing as error:
            failures.append(str(error))
    return written, failures


def _cache_dir() -> Path:
    if os.environ.get("NETIO_EXPORTER_BPF_CACHE"):
        return Path(os.environ["NETIO_EXPORTER_BPF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netio-exporter" / "bpf"


def _clang_version(clang: str) -> str:
    return subprocess.run([clang, "--version"], capture_output=True, text=True).stdout


def object_path(name: str) -> Path:
    """The compiled object for ``name`` (``<name>.bpf.c`` here), compiling it on demand if needed."""
    shipped = SOURCE_DIR / f"{name}.bpf.o"
    source = SOURCE_DIR / f"{name}.bpf.c"
    if shipped.exists() and (not source.exists() or shipped.stat().st_mtime >= source.stat().st_mtime):
        return shipped
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not source.exists() or not clang:
        raise BpfObjectMissing(
            f"no compiled eBPF object {name}.bpf.o in {SOURCE_DIR} and no clang to build it: install "
            "clang (apt-get install clang libbpf-dev) and reinstall netio-exporter, or install a wheel "
            "built where clang was present")
    digest = hashlib.sha256(source.read_bytes())
    for header in sorted(SOURCE_DIR.glob("*.h")):  # what the sources include from here
        digest.update(header.read_bytes())
    digest.update(_clang_version(clang).encode())
    digest.update(" ".join(clang_command(Path("src"), Path("out"), "clang")).encode())
    cached = _cache_dir() / f"{name}-{digest.hexdigest()[:16]}.bpf.o"
    if not cached.exists():
        compile_object(source, cached, clang)
    return cached


if __name__ == "__main__":  # python -m exporter.bpf.build [DIR]: compile into DIR (default: sources)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_DIR
    objects, problems = compile_all(target)
    print("\n".join(map(str, objects)))
    sys.exit("\n".join(problems) if problems else 0)
