"""Compiling the ``*.bpf.c`` programs with clang, and finding the compiled objects.

Every install compiles the objects next to their sources, so the runtime needs neither clang nor a
writable home: a wheel build (``pip wheel .``, ``pip install .``, the Docker image) puts them into the
built package, and an editable install (``pip install -e .``, which ``run.sh`` and ``test.sh`` make)
into the checkout's ``exporter/bpf/`` (setup.py's build_py hook calls ``compile_all()`` for both).
``object_path()`` returns ``<name>.bpf.o``. An installed package's objects are what its build made;
in a checkout (setup.py two levels up) an object older than its source or a header here is stale: a
developer edited the source. Where clang is installed and the directory is writable (one's own
checkout) it is compiled again in place, else ``BpfObjectMissing`` says how to rebuild it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
_IN_CHECKOUT = (SOURCE_DIR.parent.parent / "setup.py").exists()
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


def _stale(shipped: Path, source: Path) -> bool:
    """In a checkout: the object is older than its source or a header it may include from here."""
    if not _IN_CHECKOUT or not source.exists():
        return False
    return shipped.stat().st_mtime < max(path.stat().st_mtime for path in (source, *SOURCE_DIR.glob("*.h")))


def object_path(name: str) -> Path:
    """The compiled object for ``name`` (``<name>.bpf.c`` here); compiled again in place only if stale."""
    shipped = SOURCE_DIR / f"{name}.bpf.o"
    source = SOURCE_DIR / f"{name}.bpf.c"
    if shipped.exists() and not _stale(shipped, source):
        return shipped
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if source.exists() and clang and os.access(SOURCE_DIR, os.W_OK):
        compile_object(source, shipped, clang)  # a developer's edited checkout
        return shipped
    state = "is older than its source" if shipped.exists() else "is missing"
    raise BpfObjectMissing(
        f"the eBPF object {SOURCE_DIR}/{name}.bpf.o {state}: reinstall netio-exporter where clang is "
        "installed (apt-get install clang libbpf-dev; ./run.sh --version, or pip install .), or install a "
        "wheel built there")


if __name__ == "__main__":  # python -m exporter.bpf.build [DIR]: compile into DIR (default: sources)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_DIR
    objects, problems = compile_all(target)
    print("\n".join(map(str, objects)))
    sys.exit("\n".join(problems) if problems else 0)
