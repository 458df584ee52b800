"""Build hook: compile exporter/bpf/*.bpf.c with clang into the built package.

pyproject.toml holds the project's metadata; this file only adds the compile step to build_py
and ships the sources and objects as package data. Without clang the build still succeeds (the
netstack collector then reports itself unavailable and says how to fix it).
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _load_bpf_build():
    path = Path(__file__).parent / "exporter" / "bpf" / "build.py"
    spec = importlib.util.spec_from_file_location("_netio_bpf_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable installs compile on demand into a cache (see exporter/bpf/build.py)
        bpf_build = _load_bpf_build()
        destination = Path(self.build_lib) / "exporter" / "bpf"
        objects, failures = bpf_build.compile_all(destination)
        for path in objects:
            self.announce(f"compiled {path}", level=2)
        for failure in failures:
            self.warn(f"eBPF object not built ({failure}); the collectors that need it will report "
                      "themselves unavailable")


setup(cmdclass={"build_py": BuildPyWithBpf},
      package_data={"exporter.bpf": ["*.bpf.c", "*.h"], "exporter": ["web/*.html", "web/*.js", "web/*.css"]})
