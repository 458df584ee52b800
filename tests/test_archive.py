"""The per-connection archive: records, files, retention, write errors, tcp-csv. Real kernel: each test's
connections live in a network namespace of its own, which is all the archive sees."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from exporter.archive import Archive
from exporter.archive.files import ArchiveFiles, compressor
from exporter.archive.reader import COLUMNS, frames, records
from exporter.netlink import tcp_info
from tests.support import in_netns, require, run, value

INTERVAL = 0.05


def _archive(ns: str, directory, **kwargs) -> Archive:
    options = {"interval": INTERVAL, "rotate_seconds": 600.0, "max_bytes": 1 << 30, **kwargs}
    with in_netns(ns):
        archive = Archive(str(directory), **options)
    require(archive.stats().method == "kernel", "the archive's close hook needs eBPF (root, BTF)")
    return archive


def _connection(ns: str, up: int, down: int, family=socket.AF_INET, host="127.0.0.1", hold: float = 0.0,
                server_closes_first: bool = False) -> dict:
    """One connection in ``ns``: ``up`` bytes client -> server, ``down`` back, then both close (the client
    first unless told otherwise). Returns the two sockets' ports and their tcp_info just before closing."""
    with in_netns(ns):
        listener = socket.socket(family)
        listener.bind((host, 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    try:
        client.sendall(b"u" * up)
        got = 0
        while got < up:
            got += len(server.recv(1 << 16))
        server.sendall(b"d" * down)
        got = 0
        while got < down:
            got += len(client.recv(1 << 16))
        time.sleep(hold)
        ports = {"client": client.getsockname()[1], "server": server.getsockname()[1]}
        first, second = (server, client) if server_closes_first else (client, server)
        first.close()
        time.sleep(0.002)
        second.close()
    finally:
        listener.close()
    return ports


def _wait_finals(directory, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = list(records([str(directory)]))
        if sum(record["kind"] == "final" for record in found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(INTERVAL)


def _by_connection(found: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in found:
        grouped.setdefault(record["uuid"], []).append(record)
    return grouped


def test_a_connection_gets_a_header_changes_and_an_exact_final_record(netns, tmp_path):
    ns = netns()
    archive = _archive(ns, tmp_path)
    try:
        ports = _connection(ns, 20_000, 1_000, hold=4 * INTERVAL)  # long enough for polls to see it
        found = _wait_finals(tmp_path, 2)
    finally:
        archive.close()
    by_port = {}
    for uuid, connection in _by_connection(found).items():
        assert [record["kind"] for record in connection][0] == "header"
        assert [record["kind"] for record in connection][-1] == "final"
        assert sum(record["kind"] == "final" for record in connection) == 1
        by_port[connection[0]["local_port"]] = connection
    client, server = by_port[ports["client"]], by_port[ports["server"]]
    assert any(record["kind"] == "change" and record["state"] == "established" for record in client)
    # The kernel's rule (SYN and FIN count one each): the connecting side has its SYN and FIN in bytes_acked,
    # each side's bytes_received has the peer's FIN but not its SYN; bytes_sent is data only.
    final = client[-1]["tcp_info"]
    assert (final["bytes_acked"], final["bytes_received"], final["bytes_sent"]) == (20_002, 1_001, 20_000)
    final = server[-1]["tcp_info"]
    assert (final["bytes_acked"], final["bytes_received"], final["bytes_sent"]) == (1_001, 20_001, 1_000)
    assert client[-1]["old_state"] == "fin_wait2" and server[-1]["old_state"] == "last_ack"
    header = client[0]
    assert (header["family"], header["local_address"], header["remote_port"]) == ("ipv4", "127.0.0.1",
                                                                                 ports["server"])
    change = [record for record in client if record["kind"] == "change"][-1]
    assert set(change["tcp_info"]) == set(tcp_info.NAMES[:len(change["tcp_info"])])
    assert change["congestion"] and "rcvbuf" in change["meminfo"]
    assert all(record["timestamp"].endswith("Z") and len(record["timestamp"]) == 27 for record in found)
    # The file stats (settled once a flush) count every byte and file written, the last flush's too.
    written = list(tmp_path.rglob("*.zst"))
    stats = archive.file_stats()
    assert (stats.bytes_written, stats.files) == (sum(path.stat().st_size for path in written), len(written))


def test_the_archive_thread_wakes_once_a_poll(netns, tmp_path):
    """Between polls the thread waits on the ring buffer of final records; a wait rounded down to the
    millisecond ended just before the poll and cost a second wake (~20 µs of CPU here) every poll."""
    ns = netns()
    archive = _archive(ns, tmp_path, interval=0.1)
    try:
        hook, waits = archive._hook, []
        wait = hook.poll
        hook.poll = lambda timeout_ms: (waits.append(timeout_ms) if timeout_ms else None, wait(timeout_ms))[1]
        first = archive.stats().poll_count
        time.sleep(1.5)
        polls = archive.stats().poll_count - first
    finally:
        archive.close()
    assert polls >= 10
    assert len([timeout for timeout in waits if timeout]) <= polls + 1


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_connections_shorter_than_a_poll_get_a_header_and_an_exact_final(netns, tmp_path, family, host):
    ns = netns()
    archive = _archive(ns, tmp_path, interval=60.0)  # no poll sees them (the first one is over at once)
    time.sleep(0.2)
    try:
        expected = {}
        for index in range(50):
            up, down = 1_000 + index, 500 + index
            ports = _connection(ns, up, down, family=family, host=host)
            expected[ports["client"], ports["server"]] = (up + 2, down + 1, up)  # ports repeat over 50
            expected[ports["server"], ports["client"]] = (down + 1, up + 1, down)
        found = _wait_finals(tmp_path, 100)
    finally:
        archive.close()
    grouped = _by_connection(found)
    assert len(grouped) == 100
    for connection in grouped.values():
        assert [record["kind"] for record in connection] == ["header", "final"]
        header, final = connection
        assert header["start_source"] == "kernel" and header["family"] == ("ipv4" if family == socket.AF_INET
                                                                          else "ipv6")
        counters = final["tcp_info"]
        assert (counters["bytes_acked"], counters["bytes_received"], counters["bytes_sent"]) == \
            expected[header["local_port"], header["remote_port"]]
    assert archive.stats().records["final"] == 100


def test_without_ebpf_the_last_poll_is_the_final_record(netns, tmp_path, monkeypatch):
    """The close hook cannot be had (simulated: its loader raises, as it does without CAP_BPF)."""
    from exporter.archive import kernel

    def refuse(*args, **kwargs):
        raise PermissionError("bpf: Operation not permitted (simulated)")

    monkeypatch.setattr(kernel, "CloseHook", refuse)
    ns = netns()
    with in_netns(ns):
        archive = Archive(str(tmp_path), INTERVAL, 600.0, 1 << 30)
    try:
        assert archive.stats().method == "polling"
        _connection(ns, 3_000, 300, hold=4 * INTERVAL)
        found = _wait_finals(tmp_path, 2)
    finally:
        archive.close()
    for connection in _by_connection(found).values():
        kinds = [record["kind"] for record in connection]
        assert kinds[0] == "header" and kinds[-1] == "final" and "change" in kinds
        final, last_change = connection[-1], [record for record in connection if record["kind"] == "change"][-1]
        assert final == {**last_change, "kind": "final", "timestamp": final["timestamp"], "source": "poll"}


def _pair(ns: str, family=socket.AF_INET, host="127.0.0.1") -> tuple[socket.socket, socket.socket]:
    with in_netns(ns):
        with socket.socket(family) as listener:
            listener.bind((host, 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname()[:2])
            server, _ = listener.accept()
    return client, server


def _move(client: socket.socket, server: socket.socket, size: int = 100) -> None:
    client.sendall(b"m" * size)
    got = 0
    while got < size:
        got += len(server.recv(1 << 16))


def _without_timers(connection) -> dict:
    return {name: number for name, number in tcp_info.decode(connection.tcp_info).items()
            if name not in tcp_info.TIMERS}


@pytest.mark.parametrize("build", ["tcp_archive_changes", "tcp_archive_changes_compat"])
def test_the_kernel_names_the_connections_that_changed_and_lookups_answer_with_the_dumps_fields(
        netns, monkeypatch, build):
    """Either build of the change iterator (the compat one is what kernels before 6.2 load)."""
    from exporter.archive import kernel
    from exporter.archive.kernel import ChangeIterator
    from exporter.netlink.connections import ConnectionReader

    monkeypatch.setattr(kernel, "CHANGE_OBJECTS", (build,))
    ns = netns()
    old = _pair(ns)  # older than the iterator: enrolled by its first pass over the namespace
    with in_netns(ns):
        try:
            changes = ChangeIterator()
        except Exception as error:
            require(False, f"the archive's change detection needs eBPF (root, BTF): {error}")
        reader = ConnectionReader()
    new = _pair(ns, socket.AF_INET6, "::1")  # enrolled at its first state change
    sockets = [*old, *new]
    try:
        fingerprints: dict[int, bytes] = {}
        first = reader.answers(changes.requests(), fingerprints)
        assert sorted(connection.local_port for connection in first) == \
            sorted(sock.getsockname()[1] for sock in sockets)
        assert {connection.local_address for connection in first} == {"127.0.0.1", "::1"}
        assert changes.requests() == b""  # nothing moved
        _move(*old)
        time.sleep(0.05)  # the ACKs
        changed = reader.answers(changes.requests(), fingerprints)
        assert sorted(connection.local_port for connection in changed) == sorted(sock.getsockname()[1] for sock in old)
        dumped = {connection.cookie: connection for connection in reader.changed({})[0]}
        for connection in changed:  # the kernel's own tcp_info, as the dump has it (it did not move since)
            assert _without_timers(connection) == _without_timers(dumped[connection.cookie])
            assert (connection.congestion, connection.meminfo) == (dumped[connection.cookie].congestion,
                                                                   dumped[connection.cookie].meminfo)
        client = [connection for connection in changed if connection.local_port == old[0].getsockname()[1]][0]
        assert tcp_info.decode(client.tcp_info)["bytes_acked"] == 101  # the SYN and 100 bytes
        old[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        old[1].close()  # a reset: the client end, still open, is in TCP_CLOSE with its fingerprint
        time.sleep(0.05)
        assert changes.requests() == b""  # not named: its final record is the close hook's
        _move(*new)
        requests = changes.requests()
        assert len(requests) > 0
        for sock in new:  # closed with a reset before the lookups: no answer, no error
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(0.05)
        assert reader.answers(requests, fingerprints) == []
    finally:
        for sock in sockets:
            sock.close()
        changes.close()
        reader.close()


def test_change_records_wait_for_the_flush_headers_and_finals_do_not(netns, tmp_path, monkeypatch):
    """Change records go out one frame per connection per flush (FLUSH_SECONDS, 1 s here instead of 5 to
    keep the test short); a new connection's header and a final record go out at once."""
    import exporter.archive
    monkeypatch.setattr(exporter.archive, "FLUSH_SECONDS", 1.0)
    ns = netns()
    archive = _archive(ns, tmp_path, interval=0.02)
    try:
        assert archive.change_detection == "kernel"
        client, server = _pair(ns)
        time.sleep(0.2)
        path = [path for path in tmp_path.rglob("*.jsonl.zst")
                if json.loads(next(frames(path.read_bytes())).splitlines()[0])["local_port"]
                == client.getsockname()[1]][0]
        first = list(frames(path.read_bytes()))
        assert [json.loads(line)["kind"] for line in first[0].splitlines()][:2] == ["header", "change"]
        moved = time.monotonic()
        while time.monotonic() - moved < 1.5:  # a change every poll
            _move(client, server)
            time.sleep(0.02)
        written = list(frames(path.read_bytes()))
        assert 2 <= len(written) <= 4  # about one frame a flush, not one a poll
        assert max(len(frame.splitlines()) for frame in written[1:]) >= 10
        _move(client, server)
        time.sleep(0.1)
        archive.close()  # what is pending goes out at shutdown
        last = [json.loads(line) for line in list(frames(path.read_bytes()))[-1].splitlines()]
        assert last[-1]["kind"] == "change" and last[-1]["tcp_info"]["bytes_acked"] == \
            tcp_info.decode(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024))["bytes_acked"]
        archive = _archive(ns, tmp_path, interval=0.02)
        time.sleep(0.2)
        client.close()
        server.close()
        begin = time.monotonic()
        _wait_finals(tmp_path, 2, timeout=2)
        assert time.monotonic() - begin < 0.5  # a final record is written at once
    finally:
        archive.close()


def test_a_change_record_is_what_the_json_encoder_writes_of_it(netns):
    from exporter.archive import MEMINFO_NAMES, STATE_NAMES, change_record
    from exporter.netlink.connections import ConnectionReader

    ns = netns()
    client, server = _pair(ns)
    try:
        _move(client, server)
        with in_netns(ns):
            reader = ConnectionReader()
        try:
            connections = reader.changed({})[0]
        finally:
            reader.close()
        assert len(connections) == 2
        for connection in connections:
            record = {"state": STATE_NAMES[connection.state], "congestion": connection.congestion,
                      "tcp_info": tcp_info.decode(connection.tcp_info),
                      "meminfo": dict(zip(MEMINFO_NAMES, connection.meminfo))}
            assert change_record(b"{", b"", connection) == json.dumps(record, separators=(",", ":")).encode() + b"\n"
    finally:
        client.close()
        server.close()


def test_without_the_change_iterator_every_poll_dumps_and_records_are_the_same(netns, tmp_path, monkeypatch):
    """The iterator cannot be had (simulated: its loader raises), the close hook can: the dump path."""
    from exporter.archive import kernel

    def refuse(*args, **kwargs):
        raise PermissionError("bpf: Operation not permitted (simulated)")

    monkeypatch.setattr(kernel, "ChangeIterator", refuse)
    ns = netns()
    archive = _archive(ns, tmp_path)
    try:
        assert archive.change_detection == "dump"
        ports = _connection(ns, 20_000, 1_000, hold=4 * INTERVAL)
        found = _wait_finals(tmp_path, 2)
    finally:
        archive.close()
    client = [connection for connection in _by_connection(found).values()
              if connection[0]["local_port"] == ports["client"]][0]
    assert [record["kind"] for record in client][0] == "header" and client[-1]["kind"] == "final"
    assert [record for record in client if record["kind"] == "change"][-1]["tcp_info"]["bytes_acked"] == 20_001


def test_rotation_unique_uuids_and_the_zstd_tool(netns, tmp_path):
    ns = netns()
    archive = _archive(ns, tmp_path, rotate_seconds=0.15)
    try:
        with in_netns(ns):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        for _ in range(8):  # a change every poll or so, for 0.5 s
            client.sendall(b"x" * 1000)
            server.recv(1 << 16)
            time.sleep(INTERVAL)
        client.close()
        server.close()
        listener.close()
        found = _wait_finals(tmp_path, 2)
    finally:
        archive.close()
    paths = sorted(str(path) for path in tmp_path.rglob("*.jsonl.zst"))
    uuids = {os.path.basename(path).split(".")[0] for path in paths}
    assert len(uuids) == 2 and len(paths) > 2  # two connections, rotated
    for path in paths:
        assert os.path.dirname(path).endswith(time.strftime("%Y/%m/%d", time.gmtime()))
        text = run("zstd", "-dc", path).stdout  # the command-line tool reads the frames too
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[0]["kind"] == "header"  # every sequence file starts with the header
        assert lines == [record for record in records([path])]
    assert len({record["uuid"] for record in found}) == 2


def test_retention_deletes_the_oldest_first_and_stays_under_the_limit(tmp_path):
    import zstandard
    files = ArchiveFiles(str(tmp_path), 600, 64 << 10, zstandard.ZstdCompressor().compress)
    noise = os.urandom(4096).hex().encode()  # incompressible enough: every frame is a few KB
    for index in range(100):
        files.append(f"c{index:03d}", b'{"kind":"header"}\n', noise + b"\n", 1, time.monotonic())
        assert files.total_bytes <= 64 << 10
    left = sorted(path.name for path in tmp_path.rglob("*.zst"))
    assert left and left[-1] == "c099.0.jsonl.zst"  # the newest stay
    assert left == [f"c{index:03d}.0.jsonl.zst" for index in range(100 - len(left), 100)]  # oldest went first
    assert files.stats.deleted_files == 100 - len(left)
    assert sum(path.stat().st_size for path in tmp_path.rglob("*.zst")) == files.total_bytes
    files.close()


def test_a_file_removed_behind_the_archive_starts_again_with_its_header(tmp_path):
    files = ArchiveFiles(str(tmp_path), 600, 1 << 20, compressor())
    try:
        files.append("gone", b'{"kind":"header"}\n', b'{"kind":"change"}\n', 1, time.monotonic())
        [path] = tmp_path.rglob("*.zst")
        path.unlink()
        files.append("gone", b'{"kind":"header"}\n', b'{"kind":"change"}\n', 1, time.monotonic())
        assert [record["kind"] for record in records([str(path)])] == ["header", "change"]
        assert files.total_bytes == path.stat().st_size and files.stats.errors == {}
    finally:
        files.close()


def test_writing_resumes_after_the_archive_directory_is_removed_and_made_again(tmp_path):
    import shutil
    directory = tmp_path / "archive"
    files = ArchiveFiles(str(directory), 600, 1 << 20, compressor())
    try:
        files.append("before", b'{"kind":"header"}\n', b'{"kind":"change"}\n', 1, time.monotonic())
        shutil.rmtree(directory)  # files are opened relative to the directory's descriptor: it must follow
        files.append("after", b'{"kind":"header"}\n', b'{"kind":"change"}\n', 1, time.monotonic())
        written = list(directory.rglob("*.zst"))
        assert [path.name for path in written] == ["after.0.jsonl.zst"]
        assert [record["kind"] for record in records([str(written[0])])] == ["header", "change"]
        assert files.stats.errors == {}
    finally:
        files.close()


def test_a_full_disk_counts_errors_loses_no_written_record_and_resumes(netns, tmp_path):
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=256k", "netio-test", str(mount))
    try:
        ns = netns()
        archive = _archive(ns, mount, interval=INTERVAL)
        try:
            filler = mount / "filler"
            with open(filler, "wb") as file:  # the disk is full before the connections start
                try:
                    file.write(b"\0" * (512 << 10))
                except OSError:
                    pass
            for _ in range(5):
                _connection(ns, 100, 100)
            time.sleep(4 * INTERVAL)
            full = archive.file_stats()
            assert full.errors.get("disk_full", 0) > 0 and full.dropped_records > 0
            for path in mount.rglob("*.zst"):  # whatever made it is whole
                assert list(frames(path.read_bytes()))
                assert sum(len(content) for content in frames(path.read_bytes())) > 0
            filler.unlink()
            _connection(ns, 300, 300)
            time.sleep(4 * INTERVAL)
        finally:
            archive.close()
        assert archive.file_stats().bytes_written > full.bytes_written  # writing resumed
        finals = [record for record in records([str(mount)]) if record["kind"] == "final"]
        assert any(record["tcp_info"]["bytes_sent"] == 300 for record in finals)
    finally:
        run("umount", str(mount), check=False)


# --- tcp-csv ------------------------------------------------------------------------------------

def _archive_file(path, lines: list[dict], truncate: int = 0) -> None:
    import zstandard
    compressor = zstandard.ZstdCompressor()
    data = b"".join(compressor.compress(json.dumps(line).encode() + b"\n") for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:len(data) - truncate] if truncate else data)


_HEADER = {"kind": "header", "timestamp": "2026-12-01T00:00:00.000001Z", "uuid": "b_1", "family": "ipv4",
           "local_address": "10.0.0.1", "local_port": 80, "remote_address": "10.0.0.2", "remote_port": 5000,
           "start": "2026-12-01T00:00:00.000001Z", "start_source": "first_seen"}
_CHANGE = {"kind": "change", "timestamp": "2026-12-01T00:00:01.000000Z", "uuid": "b_1", "state": "established",
           "congestion": "cubic", "tcp_info": {"rtt": 100, "bytes_acked": 7}, "meminfo": {"rcvbuf": 9}}
_FINAL = {"kind": "final", "timestamp": "2026-12-01T00:00:02.000000Z", "uuid": "b_1", "state": "close",
          "old_state": "fin_wait2", "source": "kernel", "tcp_info": {"bytes_acked": 9}}


def _tcp_csv(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "tcp-csv", *args], input=stdin, capture_output=True,
                          timeout=30)


def test_tcp_csv_writes_a_header_row_and_one_row_per_record(tmp_path):
    _archive_file(tmp_path / "2026/12/01/b_1.0.jsonl.zst", [_HEADER, _CHANGE, _FINAL])
    result = _tcp_csv(str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout.decode())))
    assert tuple(rows[0]) == COLUMNS
    assert [row[1] for row in rows[1:]] == ["header", "change", "final"]
    change = dict(zip(rows[0], rows[2]))
    assert (change["state"], change["local_port"], change["rtt"], change["bytes_acked"], change["meminfo_rcvbuf"]) \
        == ("established", "80", "100", "7", "9")
    final = dict(zip(rows[0], rows[3]))
    assert (final["bytes_acked"], final["old_state"], final["remote_address"]) == ("9", "fin_wait2", "10.0.0.2")


def test_tcp_csv_reads_what_is_whole_of_a_file_being_written_and_stdin(tmp_path):
    path = tmp_path / "b_1.0.jsonl.zst"
    _archive_file(path, [_HEADER, _CHANGE, _FINAL], truncate=5)  # the last frame is cut short
    result = _tcp_csv("--fields", "kind,uuid,bytes_acked", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["kind,uuid,bytes_acked", "header,b_1,", "change,b_1,7"]
    result = _tcp_csv("--fields", "kind", stdin=path.read_bytes())
    assert result.stdout.decode().splitlines() == ["kind", "header", "change"]


def test_an_unusable_archive_directory_is_one_clear_line_at_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporter", "-P", "--collector.tcp.archive", "/proc/netio-nope"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("netio-exporter: --collector.tcp.archive: cannot create /proc/netio-nope:")


def test_tcp_csv_bad_input_is_one_clear_line(tmp_path):
    result = _tcp_csv("--fields", "kind,nonsense")
    assert result.returncode == 2 and b"--fields: unknown column 'nonsense'" in result.stderr
    result = _tcp_csv(str(tmp_path / "missing.jsonl.zst"))
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1 and b"No such file" in result.stderr


# --- the exporter with the archive --------------------------------------------------------------

def test_the_exporter_archives_and_reports_it(netns, exporter, tmp_path):
    ns = netns()
    running = exporter(ns, "--collector.tcp.archive", str(tmp_path), "--collector.tcp.archive-interval", "50")
    _connection(ns, 5_000, 500)
    deadline = time.monotonic() + 10
    while True:  # the exporter's own HTTP connections are archived too: wait for ours
        finals = [record for record in records([str(tmp_path)]) if record["kind"] == "final"]
        if {5_000, 500} <= {record["tcp_info"]["bytes_sent"] for record in finals} or time.monotonic() > deadline:
            break
        time.sleep(INTERVAL)
    parsed = running.scrape()
    assert {record["tcp_info"]["bytes_sent"] for record in finals} >= {5_000, 500}
    assert value(parsed, "netio_scrape_collector_success", collector="tcp_archive") == 1
    assert value(parsed, "netio_tcp_archive_records_total", kind="final") >= len(finals)
    assert value(parsed, "netio_tcp_archive_method_info", method="kernel") == 1
    assert value(parsed, "netio_tcp_archive_files_total") >= 2
    assert value(parsed, "netio_tcp_archive_poll_duration_seconds_count") > 0
    assert value(parsed, "netio_tcp_archive_dropped_records_total") == 0


def test_a_kill_9_loses_at_most_the_last_flush_period_of_change_records(netns, exporter, tmp_path):
    from exporter.archive import FLUSH_SECONDS
    ns = netns()
    running = exporter(ns, "--collector.tcp.archive", str(tmp_path), "--collector.tcp.archive-interval", "20")
    client, server = _pair(ns)
    port = client.getsockname()[1]
    try:
        samples = []  # (when, the client's bytes_acked then)
        begin = time.monotonic()
        while time.monotonic() - begin < 2.5 * FLUSH_SECONDS:  # a change every poll
            _move(client, server)
            acked = tcp_info.decode(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024))["bytes_acked"]
            samples.append((time.monotonic(), acked))
            time.sleep(0.02)
        os.kill(running.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        running.process.wait()
    finally:
        client.close()
        server.close()
    ours = [connection for connection in _by_connection(list(records([str(tmp_path)]))).values()
            if connection[0]["kind"] == "header" and connection[0]["local_port"] == port]
    assert len(ours) == 1  # every frame on disk is whole: all of them parse
    changes = [record for record in ours[0] if record["kind"] == "change"]
    period_before = max(acked for when, acked in samples if when <= killed - FLUSH_SECONDS - 0.2)
    assert changes and changes[-1]["tcp_info"]["bytes_acked"] >= period_before
