"""Build hook: compile exporter/bpf/*.bpf.c with clang at install time, for every install path.

pyproject.toml holds the project's metadata; this file only adds the compile step to build_py and
ships the sources and objects as package data. A wheel (``pip wheel .``, ``pip install .``) gets the
objects inside its package; an editable install (``pip install -e .``: run.sh, test.sh) gets them next
to the sources in the checkout, as ``build_ext --inplace`` does for C extensions. Without clang the
build still succeeds (the eBPF collectors then report themselves unavailable and say how to fix it).
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
        bpf_build = _load_bpf_build()
        if getattr(self, "editable_mode", False):
            destination = bpf_build.SOURCE_DIR  # the checkout the editable install points at
        else:
            destination = Path(self.build_lib) / "exporter" / "bpf"
        objects, failures = bpf_build.compile_all(destination)
        for path in objects:
            self.announce(f"compiled {path}", level=2)
        for failure in failures:
            self.warn(f"eBPF object not built ({failure}); the collectors that need it will report "
                      "themselves unavailable")


setup(cmdclass={"build_py": BuildPyWithBpf},
      package_data={"exporter.bpf": ["*.bpf.c", "*.h"], "exporter": ["web/*.html", "web/*.js", "web/*.css"]})
