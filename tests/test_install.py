"""Every install path ships compiled eBPF objects, so the runtime needs neither clang nor a writable home.

Each test builds from a clean copy of the tracked files (no objects a previous install left in the
checkout), as a fresh clone would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from exporter.bpf.build import SOURCES
from tests.support import require, run

ROOT = Path(__file__).resolve().parent.parent
_EM_BPF = 247  # include/uapi/linux/elf-em.h


def _is_bpf_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == _EM_BPF


@pytest.fixture
def clean_copy(tmp_path) -> Path:
    require(shutil.which("clang") is not None, "clang not installed (apt-get install clang libbpf-dev)")
    files = run("git", "ls-files", cwd=ROOT).stdout.split()
    copy = tmp_path / "src"
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    assert not list((copy / "exporter" / "bpf").glob("*.bpf.o"))
    return copy


def _without_clang_or_home(tmp_path: Path) -> dict:
    """An environment like a system user's: no clang on PATH, a home that does not exist. (Python runs
    with -S where it must not see the test venv's editable install, which would win over PYTHONPATH.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    environment = {key: value for key, value in os.environ.items() if key not in ("CLANG", "XDG_CACHE_HOME")}
    environment.update(PATH=str(bin_dir), HOME="/nonexistent")
    return environment


def test_the_wheel_ships_every_compiled_object_and_runs_without_clang(clean_copy, tmp_path):
    wheels = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."],
                            cwd=clean_copy, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("netio_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in SOURCES:
            assert _is_bpf_elf(archive.read(f"exporter/bpf/{name}.bpf.o")), name
            assert archive.read(f"exporter/bpf/{name}.bpf.c")  # the source ships with its object (GPL)
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel))
    # The installed objects are taken as they are (none is seen as older than its source), found
    # through a read-only package directory, with no clang and no home.
    for path in site.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        found = subprocess.run(
            [sys.executable, "-S", "-c", "from exporter.bpf.build import SOURCES, object_path\n"
                                   "for name in SOURCES: print(object_path(name))"],
            env={**_without_clang_or_home(tmp_path), "PYTHONPATH": str(site)}, cwd=tmp_path,
            capture_output=True, text=True)
    finally:
        for path in site.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(site / "exporter" / "bpf" / f"{name}.bpf.o") for name in SOURCES]


def test_the_editable_install_compiles_the_objects_into_the_checkout(clean_copy, tmp_path):
    """What run.sh and test.sh run: ``pip install -e .`` into a fresh virtual environment."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))  # the dependencies are there
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "-e", "."],
                            cwd=clean_copy, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in SOURCES:
        assert _is_bpf_elf((clean_copy / "exporter" / "bpf" / f"{name}.bpf.o").read_bytes()), name
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "from exporter.bpf.build import object_path\n"
                                                                "print(object_path('mac'))"],
                           env=_without_clang_or_home(tmp_path), cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout.strip() == str(clean_copy / "exporter" / "bpf" / "mac.bpf.o"), found.stderr


def test_a_stale_object_without_clang_says_how_to_rebuild(clean_copy, tmp_path):
    bpf = clean_copy / "exporter" / "bpf"
    shutil.copy(ROOT / "exporter" / "bpf" / "mac.bpf.c", bpf / "mac.bpf.o")  # any bytes: never loaded
    os.utime(bpf / "mac.bpf.o", (1, 1))  # older than its source
    found = subprocess.run([sys.executable, "-S", "-c", "from exporter.bpf.build import object_path\n"
                                                        "object_path('mac')"],
                           env={**_without_clang_or_home(tmp_path), "PYTHONPATH": str(clean_copy)},
                           cwd=tmp_path, capture_output=True, text=True)
    assert found.returncode == 1
    assert "mac.bpf.o is older than its source: reinstall netio-exporter where clang is installed" in found.stderr
