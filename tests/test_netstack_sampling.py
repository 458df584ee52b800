"""netstack's parts and honesty: what the default loads (no program on sys_enter or sched_switch) and
what the opt-in adds, every program in the missed-runs family, lost samples counted apart, the
sampling gauge, symbols re-read when modules change, CPUs that come online armed.

There is no modprobe and no CPU hotplug on the machines the tests run on: module loads are a
/proc/modules and a kallsyms file the test writes (``modules_path``/``kallsyms_path``), CPUs coming
online an ``online_cpus`` function the test controls. Everything else is the real kernel.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import pytest

from exporter.bpf import libbpf
from exporter.collectors import Scrape, self_collectors
from exporter.collectors.netstack.programs import NetstackPrograms
from exporter.collectors.netstack.symbols import CurrentSymbols, online_cpus, parse_cpu_list
from exporter.exposition import render_text
from tests.support import in_netns, require, samples, value
from tests.support.netstack import loaded_collector, require_bpf

DEFAULT_PROGRAMS = {"softirq_entry", "softirq_exit", "sample_net_rx"}
SYSCALL_PROGRAMS = {"sys_enter", "sched_switch", "sock_send_length", "sock_recv_length"}


def _scrape(*collectors) -> dict:
    return samples(render_text(Scrape(list(collectors), self_collectors()).families()).decode())


def _entries(parsed: dict) -> set[str]:
    return {dict(labels)["entry"] for name, labels in parsed if name == "netio_netstack_cpu_seconds_total"}


def _missed_run_programs(parsed: dict) -> set[str]:
    return {dict(labels)["program"] for name, labels in parsed if name == "netio_bpf_program_missed_runs_total"}


def _loopback_traffic(ns: str, seconds: float) -> None:
    with in_netns(ns):
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    reader = threading.Thread(target=lambda: [None for _ in iter(lambda: peer.recv(1 << 16), b"")])
    reader.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.sendall(b"x" * (1 << 16))
    client.close()
    reader.join()
    peer.close()
    server.close()


def test_default_runs_nothing_on_sys_enter_or_sched_switch_and_has_no_syscall_series():
    collector = loaded_collector()
    try:
        names = {name for name, _ in libbpf.loaded_programs()}
        assert names == DEFAULT_PROGRAMS
        parsed = _scrape(collector)
        assert _entries(parsed) == {"net_rx_softirq", "net_tx_softirq"}  # tx/rx_syscall absent, not zero
        assert _missed_run_programs(parsed) == DEFAULT_PROGRAMS
        assert value(parsed, "netio_scrape_collector_success", collector="netstack") == 1
    finally:
        collector.close()
    assert not {name for name, _ in libbpf.loaded_programs()} & DEFAULT_PROGRAMS


def test_syscalls_opt_in_adds_its_programs_and_entries():
    collector = loaded_collector(syscalls=True)
    try:
        parsed = _scrape(collector)
        assert _entries(parsed) == {"net_rx_softirq", "net_tx_softirq", "tx_syscall", "rx_syscall"}
        assert _missed_run_programs(parsed) == DEFAULT_PROGRAMS | SYSCALL_PROGRAMS
    finally:
        collector.close()


def test_frequency_0_loads_no_sampler_and_exports_no_sampling_series():
    collector = loaded_collector(frequency_hz=0)
    try:
        parsed = _scrape(collector)
        assert _missed_run_programs(parsed) == {"softirq_entry", "softirq_exit"}
        assert not [name for name, _ in parsed if name.startswith("netio_netstack_rx_")]
    finally:
        collector.close()


def test_sampling_gauge_counts_the_sampled_cpus():
    collector = loaded_collector()
    try:
        parsed = _scrape(collector)
        assert value(parsed, "netio_netstack_rx_sampling_cpus") == len(online_cpus())
    finally:
        collector.close()


def test_hidden_kernel_addresses_turn_sampling_off_visibly(tmp_path, caplog):
    """kernel.kptr_restrict (or a sandbox without CAP_SYSLOG) shows every address as 0: the time is still
    measured, success stays 1, and the gauge says 0 CPUs are sampled (no silent loss)."""
    hidden = tmp_path / "kallsyms"
    hidden.write_text("0000000000000000 T _stext\n0000000000000000 t net_rx_action\n")
    with caplog.at_level(logging.WARNING, logger="netio_exporter"):
        collector = loaded_collector(kallsyms_path=str(hidden))
    try:
        parsed = _scrape(collector)
        assert value(parsed, "netio_netstack_rx_sampling_cpus") == 0
        assert value(parsed, "netio_scrape_collector_success", collector="netstack") == 1
        assert not [name for name, _ in parsed if name.startswith("netio_netstack_rx_samples")]
        assert _missed_run_programs(parsed) == {"softirq_entry", "softirq_exit"}
        assert [r for r in caplog.records if "hides kernel addresses" in r.getMessage()]
    finally:
        collector.close()


def test_lost_samples_are_counted_apart_and_never_as_a_category(netns):
    """A stack table of 2 entries fills at once: the samples that found no room are lost by reason, and
    what the tables recorded is all that the categories hold."""
    require_bpf()
    programs = NetstackPrograms(1000, syscalls=False, max_stacks=2)
    try:
        programs.attach(online_cpus())
        _loopback_traffic(netns(), 1.0)
        stacks, lost = programs.drain_samples()
        programs.detach()
        stacks_after, lost_after = programs.drain_samples()  # the other generation
    finally:
        programs.close()
    recorded = sum(count for _, count in stacks + stacks_after)
    assert len(stacks) <= 2 and len(stacks_after) <= 2
    assert recorded > 0
    assert lost_after[0] > 0, (recorded, lost_after)  # table_full: far more than two distinct stacks
    assert lost_after[0] >= lost[0]


def test_lost_samples_family_in_a_scrape(netns):
    collector = loaded_collector()
    try:
        _loopback_traffic(netns(), 0.3)
        parsed = _scrape(collector)
        assert {dict(labels)["reason"] for name, labels in parsed
                if name == "netio_netstack_rx_samples_lost_total"} == {"table_full", "stack_unreadable"}
    finally:
        collector.close()


# Kernel symbols kept current: a fake kallsyms and /proc/modules stand in for modprobe.
_CORE = ("ffffffff81000000 T _stext\nffffffff81000100 t net_rx_action\nffffffff81000200 t ip_rcv\n"
         "ffffffff81000300 T _etext\n")
_VETH = "ffffffffc0001000 t veth_poll\t[veth]\nffffffffc0001100 t veth_xmit\t[veth]\n"
_BPF = "ffffffffc0100000 t bpf_prog_0123456789abcdef_drop\t[bpf]\n"


def test_symbols_are_read_again_when_the_loaded_modules_change(tmp_path):
    kallsyms, modules = tmp_path / "kallsyms", tmp_path / "modules"
    kallsyms.write_text(_CORE + _BPF)
    modules.write_text("")
    symbols = CurrentSymbols(str(kallsyms), str(modules))
    assert symbols.function(0xffffffff81000210) == "ip_rcv"
    # neither kernel nor module text: run-time generated code, named as a BPF program, never as ip_rcv
    assert symbols.function(0xffffffffc0001010) == "bpf_prog_"
    assert not symbols.refresh()  # nothing changed: no re-read
    kallsyms.write_text(_CORE + _VETH + _BPF)  # modprobe veth
    modules.write_text("veth 4096 0 - Live 0xffffffffc0001000\n")
    assert symbols.refresh()
    assert symbols.function(0xffffffffc0001010) == "veth_poll"
    assert symbols.function(0xffffffffc0001110) == "veth_xmit"
    # past the end of veth's text (a BPF program loaded since): a BPF program, not veth_xmit
    assert symbols.function(0xffffffffc0002010) == "bpf_prog_"
    assert symbols.function(0xffffffffc0100010) == "bpf_prog_0123456789abcdef_drop"


def test_a_kernel_without_modules_has_no_proc_modules(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(_CORE)
    symbols = CurrentSymbols(str(kallsyms), str(tmp_path / "no-such-file"))
    assert symbols.function(0xffffffff81000150) == "net_rx_action"
    assert not symbols.refresh()


def test_collector_reads_symbols_again_after_a_module_change(tmp_path, netns, caplog):
    """The live collector with the real kallsyms copied to a file and a /proc/modules the test writes: a
    change of the modules is noticed at the next scrape, and the cached names are dropped."""
    require_bpf()
    require(os.geteuid() == 0, "needs root to read kernel addresses in /proc/kallsyms")
    kallsyms, modules = tmp_path / "kallsyms", tmp_path / "modules"
    with open("/proc/kallsyms", "rb") as real:
        kallsyms.write_bytes(real.read())
    modules.write_text("")
    collector = loaded_collector(kallsyms_path=str(kallsyms), modules_path=str(modules))
    try:
        ns = netns()
        _loopback_traffic(ns, 0.5)
        collector.read()
        assert collector._function_at  # names resolved and cached
        modules.write_text("netio_test 4096 0 - Live 0xffffffffc7000000\n")
        with caplog.at_level(logging.INFO, logger="netio_exporter"):
            collector.read()
        assert [r for r in caplog.records if "modules changed" in r.getMessage()]
        _loopback_traffic(ns, 0.5)
        parsed = samples(render_text(collector.read()).decode())
        assert value(parsed, "netio_netstack_rx_samples_total", category="local_delivery_v4") > 0
    finally:
        collector.close()


def test_a_cpu_that_comes_online_is_armed_at_the_next_scrape(caplog):
    require(len(online_cpus()) >= 2, "needs two online CPUs")
    first, second = online_cpus()[:2]
    online = [first]
    collector = loaded_collector(online_cpus=lambda: list(online))
    try:
        assert collector.programs.sampled_cpus == {first}
        parsed = _scrape(collector)
        assert value(parsed, "netio_netstack_rx_sampling_cpus") == 1
        online.append(second)  # CPU hotplug
        with caplog.at_level(logging.INFO, logger="netio_exporter"):
            parsed = _scrape(collector)
        assert value(parsed, "netio_netstack_rx_sampling_cpus") == 2
        assert collector.programs.sampled_cpus == {first, second}
        assert [r for r in caplog.records if f"CPU {second} came online" in r.getMessage()]
        online.remove(second)  # offline again: its event stays, the gauge counts online CPUs only
        assert value(_scrape(collector), "netio_netstack_rx_sampling_cpus") == 1
    finally:
        collector.close()


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0,2-3,7\n", [0, 2, 3, 7]), ("", [])])
def test_cpu_list_format(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("argv, syscalls", [([], False), (["--collector.netstack.syscalls"], True),
                                            (["-f", "0", "--collector.netstack.syscalls"], True)])
def test_the_syscalls_flag_reaches_the_collector(argv, syscalls, monkeypatch):
    from exporter import cli
    from exporter.collectors import netstack

    built = []
    monkeypatch.setattr(netstack, "NetstackCollector", lambda *args, **kwargs: built.append((args, kwargs)))
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    registration = next(r for r in cli.resolve(parser, args) if r.name == "netstack")
    registration.build(args)
    assert built[0][1] == {"syscalls": syscalls}
    assert built[0][0] == ((0,) if "0" in argv else (1000,))


def test_capabilities_kept_after_start_are_only_what_a_scrape_may_need(tmp_path):
    """exporter.privileges (least privilege after start) keeps what capabilities_after_start names."""
    modules = tmp_path / "modules"
    modules.write_text("")
    collector = loaded_collector(modules_path=str(modules), online_cpus=lambda: [0])
    try:
        possible = collector.programs.possible_cpus
        assert collector.capabilities_after_start == (("CAP_SYSLOG", "CAP_PERFMON") if possible > 1 else ("CAP_SYSLOG",))
    finally:
        collector.close()
    collector = loaded_collector(modules_path=str(tmp_path / "none"))  # no modules, every CPU sampled
    try:
        expected = () if collector.programs.sampled_cpus == set(range(collector.programs.possible_cpus)) else ("CAP_PERFMON",)
        assert collector.capabilities_after_start == expected
    finally:
        collector.close()
    collector = loaded_collector(frequency_hz=0)
    try:
        assert collector.capabilities_after_start == ()
    finally:
        collector.close()


def test_a_kallsyms_that_cannot_be_read_again_keeps_the_old_names_and_is_tried_once(tmp_path):
    """Capabilities dropped after start (exporter.privileges) hide kallsyms; a module change then must not
    end sampling, nor read kallsyms at every scrape. Malformed /proc/modules lines are skipped."""
    kallsyms, modules = tmp_path / "kallsyms", tmp_path / "modules"
    kallsyms.write_text(_CORE)
    modules.write_text("")
    symbols = CurrentSymbols(str(kallsyms), str(modules))
    kallsyms.write_text("0000000000000000 T _stext\n")  # what a reader without CAP_SYSLOG sees
    modules.write_text("veth 4096 0 - Live 0xffffffffc0001000\nnonsense\nbad size 0 - Live 0xzz\n")
    with pytest.raises(Exception, match="no addresses"):
        symbols.refresh()
    assert not symbols.refresh()  # that change was tried once
    assert symbols.function(0xffffffff81000150) == "net_rx_action"
