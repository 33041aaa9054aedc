"""Typed access to the pipeline's maps: mmap-ed registers and per-CPU counters.

Registers are BPF_F_MMAPABLE arrays: a whole register is read with one memoryview slice of
the shared mapping (no syscall per entry, no syscall at all). Array map elements are laid
out every round_up(value_size, 8) bytes, so u32 and u8 registers are read with a stride.
"""

from __future__ import annotations

import mmap
import struct
import sys
import threading

import numpy as np
import numpy.typing as npt

from .libbpf import BpfMap, libbpf

_FORMAT = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class RegisterArray:
    """One register (array map, BPF_F_MMAPABLE) mapped into this process."""

    def __init__(self, bmap: BpfMap, width: int) -> None:
        if bmap.value_size not in _FORMAT:
            raise ValueError(f"{bmap.name}: unsupported value size {bmap.value_size}")
        self.name = bmap.name
        self.width = width
        self.size = bmap.max_entries
        self.value_size = bmap.value_size
        self.stride = _round_up(bmap.value_size, 8)
        self._max = (1 << width) - 1
        length = _round_up(self.size * self.stride, mmap.PAGESIZE)
        self._mm: mmap.mmap | None = mmap.mmap(
            bmap.fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._raw: memoryview | None = memoryview(self._mm)
        fmt = _FORMAT[bmap.value_size]
        self._values: memoryview | None = self._raw.cast(fmt)  # type: ignore[call-overload]
        self._step = self.stride // bmap.value_size
        self._lock = threading.Lock()  # fill vs. close; reads and single writes need none

    def _view(self) -> memoryview:
        if self._values is None:
            raise ValueError(f"register {self.name} is closed")
        return self._values

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}: index {index} outside 0..{self.size - 1}")

    def check_value(self, value: int) -> None:
        if not 0 <= value <= self._max:
            raise ValueError(f"{self.name}: value {value} does not fit in {self.width} bits")

    def read_all(self) -> list[int]:
        view = self._view()
        return view[0:self.size * self._step:self._step].tolist()

    def read(self, index: int) -> int:
        self.check_index(index)
        return int(self._view()[index * self._step])

    def take(self, indexes: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.unsignedinteger]:
        """A copy of the cells at `indexes` (all cells when None) as a numpy array, read
        straight from the mapping with the map's stride (no per-cell Python work).

        The numpy view over the mapping lives only inside the lock: a view still held
        when close() runs would make the mmap refuse to close."""
        with self._lock:
            if self._raw is None:
                raise ValueError(f"register {self.name} is closed")
            view = np.ndarray((self.size,), dtype=np.dtype(f"=u{self.value_size}"),
                              buffer=self._raw, strides=(self.stride,))
            try:
                if indexes is None:
                    return view.copy()
                if len(indexes) and not (int(indexes.min()) >= 0
                                         and int(indexes.max()) < self.size):
                    raise IndexError(f"{self.name}: index outside 0..{self.size - 1}")
                return view[indexes]
            finally:
                del view

    def write(self, index: int, value: int) -> None:
        self.check_index(index)
        self.check_value(value)
        self._view()[index * self._step] = value

    def fill(self, value: int) -> None:
        self.check_value(value)
        slot = value.to_bytes(self.value_size, sys.byteorder) + bytes(
            self.stride - self.value_size
        )
        with self._lock:
            if self._raw is None:
                raise ValueError(f"register {self.name} is closed")
            self._raw[0:self.size * self.stride] = slot * self.size

    def close(self) -> None:
        with self._lock:
            for view in (self._values, self._raw):
                if view is not None:
                    view.release()
            self._values = self._raw = None
            if self._mm is not None:
                self._mm.close()
                self._mm = None


_REASON = struct.Struct("=QQ")  # struct reason_count {packets, bytes}


class PerCpuCounter:
    """An indexed packets+bytes counter kept per CPU (BPF_MAP_TYPE_PERCPU_ARRAY).

    Reads sum over all possible CPUs; the whole counter is read with one batch syscall.
    """

    def __init__(self, bmap: BpfMap) -> None:
        if bmap.value_size != _REASON.size:
            raise ValueError(f"{bmap.name}: value size {bmap.value_size} != {_REASON.size}")
        self.name = bmap.name
        self.size = bmap.max_entries
        self._map = bmap
        self._ncpus = libbpf().ncpus

    def _sum(self, raw: bytes) -> tuple[int, int]:
        packets = byte_count = 0
        for p, b in _REASON.iter_unpack(raw):
            packets += p
            byte_count += b
        return packets, byte_count

    def read_all(self) -> list[tuple[int, int]]:
        out = [(0, 0)] * self.size
        for key, value in self._map.lookup_batch(chunk=self.size):
            out[struct.unpack("=I", key)[0]] = self._sum(value)
        return out

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}: index {index} outside 0..{self.size - 1}")

    def read(self, index: int) -> tuple[int, int]:
        self.check_index(index)
        raw = self._map.lookup(struct.pack("=I", index))
        return self._sum(raw) if raw else (0, 0)

    def write(self, index: int, packets: int, byte_count: int) -> None:
        """Set the totals: CPU 0 gets the value, the other CPUs 0."""
        self.check_index(index)
        if not (0 <= packets < 1 << 64 and 0 <= byte_count < 1 << 64):
            raise ValueError(f"{self.name}: counter values must fit in 64 bits")
        value = _REASON.pack(packets, byte_count) + bytes(_REASON.size * (self._ncpus - 1))
        self._map.update(struct.pack("=I", index), value)
