"""C and Python agree by construction: a map whose key or value size differs from the layout the Python side
decodes is refused when the object loads, with a message naming both sizes."""

from __future__ import annotations

import os

import pytest

from tests.support import require


def test_a_layout_out_of_step_is_refused_at_load():
    require(os.geteuid() == 0, "loading eBPF objects needs root")
    from exporter.bpf.build import object_path
    from exporter.bpf.libbpf import BpfError, BpfObject
    from exporter.collectors.mac import CLIENT, CLIENT_KEY

    obj = BpfObject(str(object_path("mac")))
    try:
        assert obj.map("clients", key_size=CLIENT_KEY.size, value_size=CLIENT.size).value_size == CLIENT.size
        with pytest.raises(BpfError, match=rf"map clients's value is {CLIENT.size} bytes, the Python layout reads "
                                           rf"{CLIENT.size + 8}: the object and the exporter are out of step"):
            obj.map("clients", key_size=CLIENT_KEY.size, value_size=CLIENT.size + 8)
    finally:
        obj.close()
