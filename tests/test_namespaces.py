"""Finding, naming and entering network namespaces (exporter/netlink/namespaces.py)."""

from __future__ import annotations

import os

from exporter.netlink.rtnl import LinkReader
from exporter.netlink.namespaces import Opener, discover, label_from_cgroup, own_inode
from tests.support import NetnsProcess, run


def test_pods_and_containers_are_named_from_the_cgroup_path():
    """Recorded cgroup lines of the layouts kubelet, docker, containerd, CRI-O and podman write (no
    container runtime runs here)."""
    uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert label_from_cgroup(f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                             f"{uid.replace('-', '_')}.slice/cri-containerd-{'a' * 64}.scope\n") == f"pod:{uid}"
    assert label_from_cgroup(f"0::/kubepods/besteffort/pod{uid}/{'b' * 64}\n") == f"pod:{uid}"
    assert label_from_cgroup(f"0::/system.slice/docker-{'c' * 64}.scope\n") == "container:" + "c" * 12
    assert label_from_cgroup(f"12:memory:/docker/{'d' * 64}\n") == "container:" + "d" * 12
    assert label_from_cgroup(f"0::/machine.slice/libpod-{'e' * 64}.scope/container\n") == "container:" + "e" * 12
    assert label_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n") is None


def test_named_and_process_namespaces_are_found_once_and_vanish(netns):
    named = netns()
    anonymous = netns()
    holder = NetnsProcess(anonymous, ["sleep", "60"])  # a process in it; then the name goes
    try:
        holder.wait_entered()  # else the name may go before ip opens it (seen once in CI)
        inode = os.stat(f"/run/netns/{anonymous}").st_ino
        run("ip", "netns", "del", anonymous)  # the name goes; the process keeps the namespace alive
        found, _ = discover()
        labels = {namespace.label: namespace for namespace in found}
        assert named in labels and labels[named].path == f"/run/netns/{named}"
        by_inode = {namespace.inode: namespace for namespace in found}
        assert by_inode[inode].label == f"inode:{inode}"  # the test's process has no container cgroup
        assert by_inode[inode].pid == holder.pid
        assert own_inode() not in by_inode
        assert len(by_inode) == len(found)
    finally:
        holder.stop()
    found, _ = discover()
    assert inode not in {namespace.inode for namespace in found}


def test_the_opener_makes_sockets_in_a_namespace_and_stays_home(netns):
    ns = netns()
    found, _ = discover()
    target = next(namespace for namespace in found if namespace.label == ns)
    opener = Opener()
    try:
        home = own_inode()
        inode = opener.run_in(target, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inode == target.inode != home
        reader = opener.run_in(target, LinkReader)  # its netlink socket was made there and stays there
        try:
            assert [reading.link.name for reading in reader.read()] == ["lo"]
        finally:
            reader.close()
        assert own_inode() == home
        try:
            opener.run_in(target, lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        assert opener.run_in(target, lambda: 7) == 7  # an exception there leaves the helper working
    finally:
        opener.close()
