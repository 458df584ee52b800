"""A small ctypes binding to the system libbpf.so.1: only what the eBPF collectors call.

``BpfObject`` opens and loads one compiled ``.bpf.o``; ``Attachment`` holds the links and perf
event fds of one collector and closes them together. Kernel objects live exactly as long as
their fds, so a process that exits or is killed leaves no program attached; nothing is pinned.
Errors become ``BpfError`` carrying libbpf's own log (the verifier's complaint, a missing BTF
type), captured through ``libbpf_set_print``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import threading

__all__ = ["BpfError", "BpfObject", "Attachment", "RingBuffer", "possible_cpus", "open_cpu_clock",
           "loaded_programs", "program_info"]


class BpfError(OSError):
    """A libbpf or bpf() failure: ``errno``, and a message with libbpf's log lines for the failing call."""

    def __str__(self) -> str:
        return self.strerror if self.strerror else super().__str__()


_lib = None
_lib_lock = threading.Lock()
_log_lines: list[str] = []
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long

# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *, va_list ap); on x86_64 and
# arm64 a va_list argument is passed as a pointer, which vsnprintf takes back.
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
_RINGBUF_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LIBBPF_DEBUG = 2


def _capture_log(level: int, fmt: bytes, args) -> int:
    if level == _LIBBPF_DEBUG:
        return 0
    buffer = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buffer, len(buffer), fmt, args)
    _log_lines.append(buffer.value.decode(errors="replace").rstrip())
    del _log_lines[:-40]  # the tail is what explains a failure
    return 0


_print_callback = _PRINT_FN(_capture_log)  # kept referenced for the life of the process


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as error:
            raise BpfError(f"cannot load libbpf.so.1 ({error}); install libbpf1 (Debian/Ubuntu) "
                           "or libbpf (Fedora)") from None
        void_p, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        for name, restype, argtypes in (
            ("libbpf_set_print", void_p, [_PRINT_FN]),
            ("libbpf_num_possible_cpus", c_int, []),
            ("bpf_object__open_file", void_p, [c_char_p, void_p]),
            ("bpf_object__load", c_int, [void_p]),
            ("bpf_object__close", None, [void_p]),
            ("bpf_object__find_program_by_name", void_p, [void_p, c_char_p]),
            ("bpf_object__find_map_by_name", void_p, [void_p, c_char_p]),
            ("bpf_map__fd", c_int, [void_p]),
            ("bpf_map__reuse_fd", c_int, [void_p, c_int]),
            ("bpf_map__set_max_entries", c_int, [void_p, ctypes.c_uint32]),
            ("bpf_program__fd", c_int, [void_p]),
            ("bpf_program__name", c_char_p, [void_p]),
            ("bpf_object__next_program", void_p, [void_p, void_p]),
            ("bpf_obj_get_info_by_fd", c_int, [c_int, void_p, ctypes.POINTER(ctypes.c_uint32)]),
            ("ring_buffer__new", void_p, [c_int, _RINGBUF_SAMPLE_FN, void_p, void_p]),
            ("ring_buffer__poll", c_int, [void_p, c_int]),
            ("ring_buffer__free", None, [void_p]),
            ("bpf_map__value_size", ctypes.c_uint32, [void_p]),
            ("bpf_map__key_size", ctypes.c_uint32, [void_p]),
            ("bpf_map__max_entries", ctypes.c_uint32, [void_p]),
            ("bpf_program__attach", void_p, [void_p]),
            ("bpf_program__attach_perf_event", void_p, [void_p, c_int]),
            ("bpf_program__attach_cgroup", void_p, [void_p, c_int]),
            ("bpf_program__attach_iter", void_p, [void_p, void_p]),
            ("bpf_link__destroy", c_int, [void_p]),
            ("bpf_link__fd", c_int, [void_p]),
            ("bpf_iter_create", c_int, [c_int]),
            ("bpf_map_lookup_elem", c_int, [c_int, void_p, void_p]),
            ("bpf_map_get_next_key", c_int, [c_int, void_p, void_p]),
            ("bpf_map_delete_elem", c_int, [c_int, void_p]),
            ("bpf_map_update_elem", c_int, [c_int, void_p, void_p, ctypes.c_uint64]),
            ("bpf_map_lookup_batch", c_int, [c_int, void_p, void_p, void_p, void_p,
                                              ctypes.POINTER(ctypes.c_uint32), void_p]),
            ("bpf_map_lookup_and_delete_batch", c_int, [c_int, void_p, void_p, void_p, void_p,
                                                         ctypes.POINTER(ctypes.c_uint32), void_p]),
        ):
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        lib.libbpf_set_print(_print_callback)
        _lib = lib
        return lib


def _failure(what: str, errno_value: int) -> BpfError:
    errno_value = abs(errno_value) or ctypes.get_errno() or 0
    lines = [line.removeprefix("libbpf: ") for line in "\n".join(_log_lines).splitlines() if line.strip()]
    _log_lines.clear()
    message = f"{what}: {os.strerror(errno_value) if errno_value else 'failed'}"
    if lines:
        message += "\nlibbpf: " + "\nlibbpf: ".join(lines)
    return BpfError(errno_value, message)


def possible_cpus() -> int:
    count = _library().libbpf_num_possible_cpus()
    if count <= 0:
        raise _failure("libbpf_num_possible_cpus", count)
    return count


class Map:
    """One map of a loaded object: fd plus the sizes needed to read it."""

    def __init__(self, handle: int, name: str):
        lib = _library()
        self.name = name
        self.fd = lib.bpf_map__fd(handle)
        self.key_size = lib.bpf_map__key_size(handle)
        self.value_size = lib.bpf_map__value_size(handle)
        self.max_entries = lib.bpf_map__max_entries(handle)

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """The value stored under ``key`` (for per-CPU maps pass the whole per-CPU size), or None."""
        size = value_size if value_size is not None else self.value_size
        value = ctypes.create_string_buffer(size)
        if _library().bpf_map_lookup_elem(self.fd, key, value) != 0:
            error = ctypes.get_errno()
            if error == 2:  # ENOENT
                return None
            raise _failure(f"lookup in map {self.name}", error)
        return value.raw

    def update(self, key: bytes, value: bytes) -> None:
        if _library().bpf_map_update_elem(self.fd, key, value, 0) != 0:
            raise _failure(f"update of map {self.name}", ctypes.get_errno())

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was not there."""
        if _library().bpf_map_delete_elem(self.fd, key) != 0:
            error = ctypes.get_errno()
            if error == 2:  # ENOENT
                return False
            raise _failure(f"delete from map {self.name}", error)
        return True

    def lookup_and_delete_batch(self) -> tuple[bytes, bytes, int]:
        """Empty the map (hash types), returning what it held: (keys blob, values blob, count)."""
        return self.lookup_batch(delete=True)

    def lookup_batch(self, value_size: int | None = None, delete: bool = False) -> tuple[bytes, bytes, int]:
        """All entries in BPF_MAP_LOOKUP_BATCH sweeps of up to 1024: (keys blob, values blob, count).

        Falls back to a get_next_key walk where the map type has no batch operation.
        """
        lib = _library()
        operation = lib.bpf_map_lookup_and_delete_batch if delete else lib.bpf_map_lookup_batch
        size = value_size if value_size is not None else self.value_size
        chunk = min(self.max_entries, 1024)
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        values = ctypes.create_string_buffer(size * chunk)
        batch = ctypes.create_string_buffer(max(self.key_size, 8))
        key_parts, value_parts = [], []
        total = 0
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            result = operation(self.fd, None if first else batch, batch, keys, values, ctypes.byref(count), None)
            error = ctypes.get_errno() if result != 0 else 0
            first = False
            if count.value:
                key_parts.append(ctypes.string_at(keys, self.key_size * count.value))
                value_parts.append(ctypes.string_at(values, size * count.value))
                total += count.value
            if result != 0:
                if error == 2:  # ENOENT: the sweep reached the end
                    break
                if error in (22, 95, 524) and total == 0 and not delete:  # no batch ops for this type
                    return self._walk(size)
                raise _failure(f"batch lookup in map {self.name}", error)
        return b"".join(key_parts), b"".join(value_parts), total

    def _walk(self, size: int) -> tuple[bytes, bytes, int]:
        lib = _library()
        key = ctypes.create_string_buffer(self.key_size)
        next_key = ctypes.create_string_buffer(self.key_size)
        value = ctypes.create_string_buffer(size)
        keys, values = [], []
        current = None
        while lib.bpf_map_get_next_key(self.fd, current, next_key) == 0:
            ctypes.memmove(key, next_key, self.key_size)
            current = key
            if lib.bpf_map_lookup_elem(self.fd, key, value) == 0:
                keys.append(key.raw)
                values.append(value.raw)
        return b"".join(keys), b"".join(values), len(keys)


class BpfObject:
    """One compiled object, opened and loaded; maps and programs by name. Close to free it.

    ``reuse_maps`` hands the object another object's map instead of creating its own (shared state);
    ``max_entries`` resizes maps before the load.
    """

    def __init__(self, path: str, reuse_maps: dict[str, Map] | None = None,
                 max_entries: dict[str, int] | None = None):
        lib = _library()
        self._lib = lib
        self.path = path
        _log_lines.clear()
        handle = lib.bpf_object__open_file(path.encode(), None)
        if not handle:
            raise _failure(f"opening {path}", ctypes.get_errno())
        self._handle = handle
        try:
            for name, shared in (reuse_maps or {}).items():
                map_handle = lib.bpf_object__find_map_by_name(handle, name.encode())
                if not map_handle:
                    raise BpfError(2, f"{path} has no map {name}")
                result = lib.bpf_map__reuse_fd(map_handle, shared.fd)
                if result != 0:
                    raise _failure(f"sharing map {name} with {path}", result)
            for name, entries in (max_entries or {}).items():
                map_handle = lib.bpf_object__find_map_by_name(handle, name.encode())
                if not map_handle:
                    raise BpfError(2, f"{path} has no map {name}")
                result = lib.bpf_map__set_max_entries(map_handle, entries)
                if result != 0:
                    raise _failure(f"sizing map {name} to {entries} entries", result)
            result = lib.bpf_object__load(handle)
            if result != 0:
                raise _failure(f"loading {os.path.basename(path)} into the kernel", result)
        except BaseException:
            self.close()
            raise
        with _objects_lock:
            _objects.add(self)

    def program_fds(self) -> dict[str, int]:
        """Every loaded program of the object: name -> fd (owned by the object)."""
        fds = {}
        program = self._lib.bpf_object__next_program(self._handle, None)
        while program:
            fds[self._lib.bpf_program__name(program).decode()] = self._lib.bpf_program__fd(program)
            program = self._lib.bpf_object__next_program(self._handle, program)
        return fds

    def map(self, name: str, key_size: int | None = None, value_size: int | None = None) -> Map:
        """The map ``name``. Pass the sizes the Python side decodes (``struct.Struct(...).size``): a map
        whose key or value differs from them (C and Python out of step) raises BpfError naming both."""
        handle = self._lib.bpf_object__find_map_by_name(self._handle, name.encode())
        if not handle:
            raise BpfError(2, f"no map {name}")
        found = Map(handle, name)
        for what, expected, actual in (("key", key_size, found.key_size), ("value", value_size, found.value_size)):
            if expected is not None and expected != actual:
                raise BpfError(22, f"{os.path.basename(self.path)}: map {name}'s {what} is {actual} bytes, the "
                                   f"Python layout reads {expected}: the object and the exporter are out of step")
        return found

    def program(self, name: str) -> int:
        handle = self._lib.bpf_object__find_program_by_name(self._handle, name.encode())
        if not handle:
            raise BpfError(2, f"no program {name}")
        return handle

    def program_fd(self, name: str) -> int:
        """The loaded program's fd, owned by this object (valid until ``close()``)."""
        fd = self._lib.bpf_program__fd(self.program(name))
        if fd < 0:
            raise _failure(f"fd of program {name}", fd)
        return fd

    def close(self) -> None:
        with _objects_lock:
            _objects.discard(self)
            if self._handle:
                self._lib.bpf_object__close(self._handle)
                self._handle = None


# Every loaded object of this process, for the self metrics that cover all programs (missed runs).
_objects: set[BpfObject] = set()
_objects_lock = threading.Lock()

# struct bpf_prog_info (linux/bpf.h): run_time_ns, run_cnt, recursion_misses
# at 192, 200, 208; a kernel older than 5.12 fills fewer bytes (no recursion_misses).
_PROG_INFO_SIZE = 232
_PROG_INFO_MISSES = 208


def loaded_programs() -> list[tuple[str, int]]:
    """(name, fd) of every program of every loaded object, read under the lock that closing takes."""
    with _objects_lock:
        return [item for obj in _objects if obj._handle for item in obj.program_fds().items()]


def program_info(fd: int) -> dict[str, int] | None:
    """The kernel's statistics of one program: ``recursion_misses`` (runs it skipped because the program
    was already running on that CPU), ``run_time_ns`` and ``run_cnt`` (0 unless BPF stats are enabled).
    None where the kernel's bpf_prog_info predates recursion_misses."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    length = ctypes.c_uint32(_PROG_INFO_SIZE)
    if _library().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(length)) != 0:
        raise _failure("reading a program's info", ctypes.get_errno())
    if length.value < _PROG_INFO_MISSES + 8:
        return None
    run_time_ns, run_cnt, misses = struct.unpack_from("=3Q", info.raw, 192)
    return {"recursion_misses": misses, "run_time_ns": run_time_ns, "run_cnt": run_cnt}


class RingBuffer:
    """A BPF_MAP_TYPE_RINGBUF map's consumer: ``poll(timeout_ms)`` calls ``handle(record_bytes)`` for every
    record the kernel submitted, in order, and returns how many. Not thread-safe: one consumer thread."""

    def __init__(self, ring: Map, handle):
        self._lib = _library()

        self._error: Exception | None = None

        def sample(ctx, data, size):
            if self._error is None:
                try:
                    handle(ctypes.string_at(data, size))
                except Exception as error:  # must not cross into C: raised again by poll()
                    self._error = error
            return 0

        self._callback = _RINGBUF_SAMPLE_FN(sample)  # kept alive as long as libbpf may call it
        _log_lines.clear()
        self._handle = self._lib.ring_buffer__new(ring.fd, self._callback, None, None)
        if not self._handle:
            raise _failure(f"opening ring buffer {ring.name}", ctypes.get_errno())

    def poll(self, timeout_ms: int) -> int:
        count = self._lib.ring_buffer__poll(self._handle, timeout_ms)
        error, self._error = self._error, None
        if error is not None:
            raise error
        if count < 0 and -count != errno.EINTR:
            raise _failure("polling a ring buffer", count)
        return max(count, 0)

    def close(self) -> None:
        if self._handle:
            self._lib.ring_buffer__free(self._handle)
            self._handle = None


class _IterAttachOptions(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf.h)."""
    _fields_ = [("sz", ctypes.c_size_t), ("link_info", ctypes.c_void_p), ("link_info_len", ctypes.c_uint32)]


class Attachment:
    """Links and perf event fds of one collector. Attaches all or, on failure, undoes what it did."""

    def __init__(self):
        self._links: list[int] = []
        self._fds: list[int] = []
        self._lib = _library()

    def attach(self, obj: BpfObject, program: str) -> int:
        """Attach by the program's section (tp_btf/..., raw_tp/..., iter/...); the link's handle."""
        _log_lines.clear()
        link = self._lib.bpf_program__attach(obj.program(program))
        if not link:
            raise _failure(f"attaching {program}", ctypes.get_errno())
        self._links.append(link)
        return link

    def attach_cgroup(self, obj: BpfObject, program: str, cgroup: str) -> None:
        """Attach a cgroup program (``sockops``, ...) to the cgroup v2 directory ``cgroup`` and below it."""
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _log_lines.clear()
            link = self._lib.bpf_program__attach_cgroup(obj.program(program), fd)
            if not link:
                raise _failure(f"attaching {program} to {cgroup}", ctypes.get_errno())
            self._links.append(link)
        finally:
            os.close(fd)  # the link holds the cgroup

    def attach_map_iterator(self, obj: BpfObject, program: str, target: Map) -> int:
        """Attach an iterator over a map's elements (``iter/bpf_sk_storage_map``, ...) to ``target``."""
        link_info = (ctypes.c_uint32 * 4)(target.fd)  # union bpf_iter_link_info { struct { u32 map_fd; } map; ... }
        options = _IterAttachOptions(ctypes.sizeof(_IterAttachOptions), ctypes.addressof(link_info),
                                     ctypes.sizeof(link_info))
        _log_lines.clear()
        link = self._lib.bpf_program__attach_iter(obj.program(program), ctypes.byref(options))
        if not link:
            raise _failure(f"attaching {program} to map {target.name}", ctypes.get_errno())
        self._links.append(link)
        return link

    def open_iterator(self, link: int) -> int:
        """A new pass of the iterator attached as ``link`` (an ``iter/...`` program): a file descriptor
        that runs the program as it is read; the caller closes it."""
        fd = self._lib.bpf_iter_create(self._lib.bpf_link__fd(link))
        if fd < 0:
            raise _failure("creating an iterator", ctypes.get_errno())
        return fd

    def attach_perf_event(self, obj: BpfObject, program: str, perf_fd: int) -> None:
        self._fds.append(perf_fd)  # closed by close() even if the attach fails
        _log_lines.clear()
        link = self._lib.bpf_program__attach_perf_event(obj.program(program), perf_fd)
        if not link:
            raise _failure(f"attaching {program} to a perf event", ctypes.get_errno())
        self._links.append(link)

    def close(self) -> None:
        while self._links:
            self._lib.bpf_link__destroy(self._links.pop())
        while self._fds:
            fd = self._fds.pop()
            try:
                os.close(fd)
            except OSError:
                pass  # libbpf closed it with the link


# perf_event_open(2) for PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK; struct perf_event_attr from
# linux/perf_event.h (PERF_ATTR_SIZE_VER5 = 112 bytes is enough for what we set).
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_FLAG_FD_CLOEXEC = 8


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
                ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
                ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
                ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
                ("sample_max_stack", ctypes.c_uint16), ("reserved", ctypes.c_uint16)]


def open_cpu_clock(cpu: int, period_ns: int) -> int:
    """A cpu-clock software event on ``cpu`` firing every ``period_ns`` of CPU time (fixed period)."""
    attr = _PerfEventAttr(type=_PERF_TYPE_SOFTWARE, size=ctypes.sizeof(_PerfEventAttr),
                          config=_PERF_COUNT_SW_CPU_CLOCK, sample_period=period_ns)
    try:
        return raw_syscall("perf_event_open", ctypes.byref(attr), -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
    except OSError as error:
        raise BpfError(error.errno, f"perf_event_open(cpu-clock, cpu {cpu}): {error.strerror}") from None


# Numbers of the syscalls called without a libc or libbpf wrapper (bpf commands newer than libbpf 1.1,
# perf_event_open): arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h (arm64).
_SYSCALL_NUMBERS = {"bpf": {"x86_64": 321, "aarch64": 280}, "perf_event_open": {"x86_64": 298, "aarch64": 241}}


def raw_syscall(name: str, *args) -> int:
    """syscall(2) by name: its non-negative result, else OSError with the errno."""
    number = _SYSCALL_NUMBERS[name].get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"{name}: unknown syscall number on {os.uname().machine}")
    result = _libc.syscall(number, *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result
