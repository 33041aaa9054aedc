"""ctypes bindings to the system libbpf (Debian `libbpf1`, libbpf.so.1 >= 1.1).

Only what the kernel target needs: open/load objects (sharing maps between objects), map
element and batch operations, XDP and tc (clsact) attachment, ring buffers and
BPF_PROG_TEST_RUN. No bcc, no compiler at run time: objects come from `make -C kernel/bpf`.

libbpf 1.x conventions: int-returning functions return -errno; pointer-returning ones
return NULL and set errno.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_uint = ctypes.c_uint32
c_size_t = ctypes.c_size_t
c_char_p = ctypes.c_char_p

# linux/bpf.h
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_MAP_TYPE_ARRAY = 2
BPF_PROG_TYPE_XDP = 6
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
# libbpf.h enum bpf_tc_attach_point
BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2


class LibbpfError(OSError):
    """A libbpf call failed; `errno` is set, the message names the call and the object."""


class BpfTestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint),
        ("data_size_out", c_uint),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint),
        ("ctx_size_out", c_uint),
        ("retval", c_uint),
        ("repeat", c_int),
        ("duration", c_uint),
        ("flags", c_uint),
        ("cpu", c_uint),
        ("batch_size", c_uint),
    ]


class BpfTcHook(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint),
        ("_pad", c_uint),
    ]


class BpfTcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint),
        ("prog_id", c_uint),
        ("handle", c_uint),
        ("priority", c_uint),
        ("_pad", c_uint),
    ]


class BpfXdpAttachOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("old_prog_fd", c_int),
        ("_pad", c_int),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the ctx_in of an XDP test run (for ingress_ifindex)."""

    _fields_ = [
        ("data", c_uint),
        ("data_end", c_uint),
        ("data_meta", c_uint),
        ("ingress_ifindex", c_uint),
        ("rx_queue_index", c_uint),
        ("egress_ifindex", c_uint),
    ]


RING_BUFFER_SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [_PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint]),
    "bpf_map__max_entries": (c_uint, [c_void_p]),
    "bpf_map__key_size": (c_uint, [c_void_p]),
    "bpf_map__value_size": (c_uint, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_uint, c_uint, c_uint, c_void_p]),
    "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p]),
    "bpf_enable_stats": (c_int, [c_int]),
    "bpf_prog_get_fd_by_id": (c_int, [c_uint]),
    "bpf_tc_query": (c_int, [ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint)]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_uint), c_void_p],
    ),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, ctypes.POINTER(c_uint), c_void_p],
    ),
    "bpf_xdp_attach": (c_int, [c_int, c_int, c_uint, c_void_p]),
    "bpf_xdp_detach": (c_int, [c_int, c_uint, c_void_p]),
    "bpf_xdp_query_id": (c_int, [c_int, c_int, ctypes.POINTER(c_uint)]),
    "bpf_tc_hook_create": (c_int, [ctypes.POINTER(BpfTcHook)]),
    "bpf_tc_hook_destroy": (c_int, [ctypes.POINTER(BpfTcHook)]),
    "bpf_tc_attach": (c_int, [ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)]),
    "bpf_tc_detach": (c_int, [ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)]),
    "ring_buffer__new": (c_void_p, [c_int, RING_BUFFER_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "bpf_prog_test_run_opts": (c_int, [c_int, ctypes.POINTER(BpfTestRunOpts)]),
}


class _Log:
    """The last lines libbpf printed (the verifier log on a failed load), for error messages.

    Capturing needs vsnprintf on the callback's va_list, which ctypes can only pass through
    where va_list is a pointer (x86-64); elsewhere libbpf keeps printing to stderr.
    """

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.lock = threading.Lock()

    def tail(self, n: int = 25) -> str:
        with self.lock:
            return "".join(list(self.lines)[-n:])

    def clear(self) -> None:
        with self.lock:
            self.lines.clear()


class Libbpf:
    """The loaded shared library with typed signatures (one per process: see `libbpf()`)."""

    def __init__(self) -> None:
        name = "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            found = ctypes.util.find_library("bpf")
            raise LibbpfError(
                errno.ENOENT,
                f"cannot load {name} ({exc}); install the Debian package libbpf1"
                + (f" (found {found}, need soname .so.1)" if found else ""),
            ) from None
        for fname, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
        self.log = _Log()
        self._print_cb = None
        if platform.machine() in ("x86_64", "AMD64"):
            libc = ctypes.CDLL(None)
            vsnprintf = libc.vsnprintf
            vsnprintf.restype = c_int
            vsnprintf.argtypes = [ctypes.c_char_p, c_size_t, ctypes.c_char_p, c_void_p]
            log = self.log

            def _print(level: int, fmt: bytes, args: int) -> int:
                if level == LIBBPF_DEBUG:
                    return 0
                # a va_list is consumed by one vsnprintf: size generously (a verifier log
                # arrives as one message) rather than measuring first
                buf = ctypes.create_string_buffer(1 << 20)
                vsnprintf(buf, len(buf), fmt, args)
                text = buf.value.decode(errors="replace")
                with log.lock:
                    log.lines.extend(text.splitlines(keepends=True))
                return 0

            self._print_cb = _PRINT_FN(_print)  # kept alive: libbpf holds the pointer
            self.lib.libbpf_set_print(self._print_cb)
        self.ncpus = self.lib.libbpf_num_possible_cpus()
        if self.ncpus <= 0:
            raise LibbpfError(-self.ncpus, "libbpf_num_possible_cpus failed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lib, name)


_LIB: Libbpf | None = None
_LIB_LOCK = threading.Lock()


def libbpf() -> Libbpf:
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            _LIB = Libbpf()
        return _LIB


def check(ret: int, what: str) -> int:
    """Raise LibbpfError for a negative libbpf return value (-errno)."""
    if ret < 0:
        err = -ret
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _ptr(buf: Any) -> int:
    return ctypes.addressof(buf)


# ---------------------------------------------------------------------------------------
# maps


_PERCPU_TYPES = {5, 6, 10}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH


class BpfMap:
    """A map of a loaded object (or created alone): element and batch operations on its fd."""

    def __init__(
        self, name: str, fd: int, map_type: int, key_size: int, value_size: int,
        max_entries: int,
    ) -> None:
        self.name = name
        self.fd = fd
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self._lib = libbpf()
        self.percpu = map_type in _PERCPU_TYPES
        # what one element is in user space: per-CPU maps hold round_up(value, 8) per CPU
        self.value_bytes = (
            (value_size + 7) // 8 * 8 * self._lib.ncpus if self.percpu else value_size
        )

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, map key is {self.key_size}")
        return ctypes.create_string_buffer(key, len(key))

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_bytes:
            raise ValueError(
                f"{self.name}: value is {len(value)} bytes, map value is {self.value_bytes}"
            )
        k = self._key(key)
        v = ctypes.create_string_buffer(value, len(value))
        check(self._lib.bpf_map_update_elem(self.fd, k, v, flags), f"update {self.name}")

    def lookup(self, key: bytes) -> bytes | None:
        """The value (per-CPU maps: one value per possible CPU), None if absent."""
        size = self.value_bytes
        k = self._key(key)
        v = ctypes.create_string_buffer(size)
        ret = self._lib.bpf_map_lookup_elem(self.fd, k, v)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"lookup {self.name}")
        return v.raw

    def delete(self, key: bytes) -> bool:
        """Delete one entry; False if it was not there."""
        ret = self._lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -errno.ENOENT:
            return False
        check(ret, f"delete {self.name}")
        return True

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev: Any = None
        while True:
            ret = self._lib.bpf_map_get_next_key(self.fd, prev, nxt)
            if ret == -errno.ENOENT:
                return out
            check(ret, f"next key {self.name}")
            out.append(nxt.raw)
            ctypes.memmove(cur, nxt, self.key_size)
            prev = cur

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs with BPF_MAP_LOOKUP_BATCH: one syscall per `chunk` entries."""
        vsize = self.value_bytes
        ksize = self.key_size
        keys = ctypes.create_string_buffer(ksize * chunk)
        values = ctypes.create_string_buffer(vsize * chunk)
        # the batch cursor is opaque; hash maps use a u32 bucket, arrays a key
        in_batch = ctypes.create_string_buffer(max(ksize, 8))
        out_batch = ctypes.create_string_buffer(max(ksize, 8))
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        result: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            count = c_uint(chunk)
            ret = self._lib.bpf_map_lookup_batch(
                self.fd, None if first else in_batch, out_batch, keys, values,
                ctypes.byref(count), ctypes.byref(opts),
            )
            if ret < 0 and ret != -errno.ENOENT:
                check(ret, f"lookup batch {self.name}")
            n = count.value
            kraw, vraw = keys.raw, values.raw
            result.extend(
                (kraw[i * ksize:(i + 1) * ksize], vraw[i * vsize:(i + 1) * vsize])
                for i in range(n)
            )
            if ret == -errno.ENOENT:
                return result
            first = False
            ctypes.memmove(in_batch, out_batch, len(out_batch))

    def update_batch(self, items: list[tuple[bytes, bytes]], flags: int = BPF_ANY) -> None:
        """Write many entries with BPF_MAP_UPDATE_BATCH (one syscall)."""
        if not items:
            return
        for k, v in items:
            if len(k) != self.key_size or len(v) != self.value_bytes:
                raise ValueError(f"{self.name}: bad key/value size in batch")
        keys = ctypes.create_string_buffer(b"".join(k for k, _ in items))
        values = ctypes.create_string_buffer(b"".join(v for _, v in items))
        count = c_uint(len(items))
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts), elem_flags=flags)
        ret = self._lib.bpf_map_update_batch(
            self.fd, keys, values, ctypes.byref(count), ctypes.byref(opts)
        )
        check(ret, f"update batch {self.name} ({count.value}/{len(items)} written)")


def probe_bpf() -> None:
    """Create a map and load a two-instruction XDP program, as the data plane will.

    Fails with EPERM without CAP_BPF + CAP_NET_ADMIN (a map alone can be permitted to
    unprivileged users, an XDP program never is).
    """
    lib = libbpf()
    fd = lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"hb_probe", 4, 4, 1, None)
    if fd < 0:
        raise LibbpfError(-fd, f"cannot create a BPF map: {os.strerror(-fd)}")
    os.close(fd)
    # r0 = XDP_PASS; exit
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fd = lib.bpf_prog_load(BPF_PROG_TYPE_XDP, b"hb_probe", b"GPL", buf, 2, None)
    if fd < 0:
        raise LibbpfError(-fd, f"cannot load an XDP program: {os.strerror(-fd)}")
    os.close(fd)


# ---------------------------------------------------------------------------------------
# objects


class BpfObject:
    """An opened (then loaded) BPF ELF object."""

    def __init__(self, path: Path) -> None:
        self._lib = libbpf()
        self.path = path
        self._lib.log.clear()
        ctypes.set_errno(0)
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            err = ctypes.get_errno() or errno.EINVAL
            raise LibbpfError(err, f"open {path}: {os.strerror(err)}\n{self._lib.log.tail()}")
        self._obj: int | None = obj
        self.loaded = False

    def _map_ptr(self, name: str) -> int:
        if self._obj is None:
            raise LibbpfError(errno.EBADF, f"{self.path}: object closed")
        ptr = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(errno.ENOENT, f"{self.path}: no map {name!r}")
        return int(ptr)

    def map_names(self) -> list[str]:
        names: list[str] = []
        cur = None
        while True:
            cur = self._lib.bpf_object__next_map(self._obj, cur)
            if not cur:
                return names
            names.append(self._lib.bpf_map__name(cur).decode())

    def set_max_entries(self, name: str, n: int) -> None:
        check(self._lib.bpf_map__set_max_entries(self._map_ptr(name), n), f"resize {name}")

    def reuse_map_fd(self, name: str, fd: int) -> None:
        """Before load: use an existing map (of another object) instead of creating one."""
        check(self._lib.bpf_map__reuse_fd(self._map_ptr(name), fd), f"reuse map {name}")

    def load(self) -> None:
        self._lib.log.clear()
        ret = self._lib.bpf_object__load(self._obj)
        if ret < 0:
            raise LibbpfError(
                -ret, f"load {self.path}: {os.strerror(-ret)}\n{self._lib.log.tail()}"
            )
        self.loaded = True

    def map(self, name: str) -> BpfMap:
        ptr = self._map_ptr(name)
        lib = self._lib
        fd = lib.bpf_map__fd(ptr)
        check(fd, f"map {name} fd (object not loaded?)")
        return BpfMap(
            name, fd, lib.bpf_map__type(ptr), lib.bpf_map__key_size(ptr),
            lib.bpf_map__value_size(ptr), lib.bpf_map__max_entries(ptr),
        )

    def program_fd(self, name: str) -> int:
        if self._obj is None:
            raise LibbpfError(errno.EBADF, f"{self.path}: object closed")
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(errno.ENOENT, f"{self.path}: no program {name!r}")
        return check(self._lib.bpf_program__fd(prog), f"program {name} fd")

    def close(self) -> None:
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None


# ---------------------------------------------------------------------------------------
# attachment


def xdp_attach(ifindex: int, prog_fd: int, flags: int = XDP_FLAGS_UPDATE_IF_NOEXIST) -> None:
    check(
        libbpf().bpf_xdp_attach(ifindex, prog_fd, flags, None),
        f"attach XDP to ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, prog_fd: int | None = None, flags: int = 0) -> None:
    """Detach XDP; with `prog_fd`, only if that program is still the one attached."""
    opts = None
    if prog_fd is not None:
        opts = BpfXdpAttachOpts(sz=ctypes.sizeof(BpfXdpAttachOpts), old_prog_fd=prog_fd)
    check(
        libbpf().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts) if opts else None),
        f"detach XDP from ifindex {ifindex}",
    )


def xdp_prog_id(ifindex: int, flags: int = 0) -> int:
    pid = c_uint(0)
    check(libbpf().bpf_xdp_query_id(ifindex, flags, ctypes.byref(pid)), "query XDP")
    return pid.value


class TcHook:
    """The clsact qdisc of one interface and the filters we attached to it."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex
        self._lib = libbpf()
        self.created = False  # did we create clsact (then we remove it again)?
        self._attached: list[BpfTcOpts] = []
        self._attached_points: list[int] = []

    def _hook(self, point: int) -> BpfTcHook:
        return BpfTcHook(sz=ctypes.sizeof(BpfTcHook), ifindex=self.ifindex, attach_point=point)

    def create(self) -> None:
        hook = self._hook(BPF_TC_INGRESS)
        ret = self._lib.bpf_tc_hook_create(ctypes.byref(hook))
        if ret == -errno.EEXIST:
            return
        check(ret, f"create clsact on ifindex {self.ifindex}")
        self.created = True

    def attach(self, prog_fd: int, point: int = BPF_TC_INGRESS, priority: int = 1) -> None:
        hook = self._hook(point)
        opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), prog_fd=prog_fd, handle=1,
                         priority=priority)
        check(
            self._lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
            f"attach tc program to ifindex {self.ifindex}",
        )
        self._attached.append(opts)
        self._attached_points.append(point)

    def query(self, point: int = BPF_TC_INGRESS, handle: int = 1, priority: int = 1) -> int:
        """Program id of the filter at (handle, priority), 0 if there is none."""
        hook = self._hook(point)
        opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
        ret = self._lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
        if ret in (-errno.ENOENT, -errno.EINVAL):
            return 0
        check(ret, f"query tc filter on ifindex {self.ifindex}")
        return int(opts.prog_id)

    def detach(self, point: int = BPF_TC_INGRESS, handle: int = 1, priority: int = 1) -> None:
        hook = self._hook(point)
        opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
        check(self._lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)),
              f"detach tc filter on ifindex {self.ifindex}")

    def destroy(self) -> None:
        """Detach our filters; remove clsact if we made it. Tolerates a vanished interface."""
        for opts, point in zip(self._attached, self._attached_points, strict=True):
            hook = self._hook(point)
            det = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=opts.handle,
                            priority=opts.priority)
            self._lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(det))
        self._attached.clear()
        self._attached_points.clear()
        if self.created:
            hook = self._hook(BPF_TC_INGRESS | BPF_TC_EGRESS)
            self._lib.bpf_tc_hook_destroy(ctypes.byref(hook))
            self.created = False


# ---------------------------------------------------------------------------------------
# ring buffer


class RingBuffer:
    """libbpf ring_buffer over one BPF_MAP_TYPE_RINGBUF map; `on_sample` gets each record."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None]) -> None:
        self._lib = libbpf()

        def _cb(_ctx: int, data: int, size: int) -> int:
            on_sample(ctypes.string_at(data, size))
            return 0

        self._cb = RING_BUFFER_SAMPLE_FN(_cb)  # must outlive the ring buffer
        ctypes.set_errno(0)
        rb = self._lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not rb:
            err = ctypes.get_errno() or errno.EINVAL
            raise LibbpfError(err, f"ring_buffer__new: {os.strerror(err)}")
        self._rb: int | None = rb

    def epoll_fd(self) -> int:
        return check(self._lib.ring_buffer__epoll_fd(self._rb), "ring buffer epoll fd")

    def poll(self, timeout_ms: int) -> int:
        if self._rb is None:
            raise LibbpfError(errno.EBADF, "ring buffer closed")
        ret = self._lib.ring_buffer__poll(self._rb, timeout_ms)
        if ret == -errno.EINTR:
            return 0
        return check(ret, "ring_buffer__poll")

    def consume(self) -> int:
        if self._rb is None:
            raise LibbpfError(errno.EBADF, "ring buffer closed")
        return check(self._lib.ring_buffer__consume(self._rb), "ring_buffer__consume")

    def free(self) -> None:
        if self._rb is not None:
            self._lib.ring_buffer__free(self._rb)
            self._rb = None


# ---------------------------------------------------------------------------------------
# run-time statistics (bench)

# struct bpf_prog_info offsets (UAPI: fields are only ever appended)
_PROG_INFO_RUN_TIME_NS = 192
_PROG_INFO_RUN_CNT = 200
_PROG_INFO_SIZE = 232
_PROG_INFO_NAME = 64
BPF_STATS_RUN_TIME = 0


def enable_run_stats() -> int:
    """BPF_ENABLE_STATS: programs count run time and runs while the returned fd is open."""
    fd = libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME)
    return check(fd, "BPF_ENABLE_STATS")


def _prog_info(prog_fd: int) -> bytes:
    buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    size = c_uint(_PROG_INFO_SIZE)
    check(libbpf().bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(size)), "prog info")
    return buf.raw


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program (non-zero only while run stats are enabled)."""
    return struct.unpack_from("=QQ", _prog_info(prog_fd), _PROG_INFO_RUN_TIME_NS)


def prog_name_by_id(prog_id: int) -> str | None:
    """The (16-byte, truncated) name of a loaded program, None if it is gone."""
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        raw = _prog_info(fd)[_PROG_INFO_NAME:_PROG_INFO_NAME + 16]
    finally:
        os.close(fd)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


# ---------------------------------------------------------------------------------------
# BPF_PROG_TEST_RUN


@dataclass(frozen=True, slots=True)
class ProgRunResult:
    retval: int
    data_out: bytes
    duration_ns: int  # average per repetition, as the kernel reports it


def prog_test_run(
    prog_fd: int, data: bytes, *, repeat: int = 1, ctx: ctypes.Structure | None = None,
    flags: int = 0, batch_size: int = 0, out_size: int | None = None,
) -> ProgRunResult:
    """Run a program on `data` in the kernel (BPF_PROG_TEST_RUN)."""
    lib = libbpf()
    din = ctypes.create_string_buffer(data, len(data))
    osize = out_size if out_size is not None else len(data) + 256
    dout = ctypes.create_string_buffer(max(osize, 1))
    opts = BpfTestRunOpts(
        sz=ctypes.sizeof(BpfTestRunOpts),
        data_in=_ptr(din),
        data_size_in=len(data),
        data_out=_ptr(dout) if osize else None,
        data_size_out=osize,
        repeat=repeat,
        flags=flags,
        batch_size=batch_size,
    )
    if ctx is not None:
        opts.ctx_in = ctypes.addressof(ctx)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    check(lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return ProgRunResult(opts.retval, dout.raw[: opts.data_size_out] if osize else b"",
                         opts.duration)

