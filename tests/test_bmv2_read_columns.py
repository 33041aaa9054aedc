"""bmv2: the poll's register read (`RegisterAccess.read_columns`) over Thrift, against a real
simple_switch_grpc. A poll of a few peers reads their cells one `bm_register_read` each; from
MAX_PEERS / 256 cells up it reads whole arrays (`bm_register_read_all`): both give the cells
asked for, in the order asked. (Whole arrays for a few peers made each poll take ~0.45 s on
bmv2, so polls reached the health engine after newer digests.) Skips without bmv2."""

from __future__ import annotations

from typing import Any

import pytest
from hbmon.dataplane.registers import Bmv2ThriftRegisterAccess, RegisterAccess, RegisterAccessError
from test_bmv2 import access, pytestmark, switch  # noqa: F401 - the bmv2 fixtures and skip

NAMES = ["hb_rx_count", "hb_miss_count", "hb_last_rx_us", "hb_state"]


class _Calls:
    """The Thrift client, counting the calls made through it (which read path ran)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any) -> Any:
            self.calls.append(name)
            return method(*args)

        return call


def _value(name: str, index: int) -> int:
    """A distinct value per cell that fits every register here (hb_state is 8 bits)."""
    return (index * 7 + len(name)) % 251 + 1 if name == "hb_state" else index * 1_000 + len(name)


def test_read_columns_reads_chosen_cells_or_whole_arrays(access: RegisterAccess) -> None:  # noqa: F811
    assert isinstance(access, Bmv2ThriftRegisterAccess)
    few = [700, 3, 65_535, 0]  # not sorted: columns come back in the order asked
    many = list(range(0, 65_536, 97))  # 676 cells: whole arrays are cheaper
    for name in NAMES:
        for i in {*few, *many[:5]}:
            access.write(name, i, _value(name, i))
    calls = _Calls(access._client)
    access._client = calls
    try:
        columns = access.read_columns(NAMES, few)
        assert set(calls.calls) == {"bm_register_read"}
        assert len(calls.calls) == len(NAMES) * len(few)
        assert [c.tolist() for c in columns] == [[_value(n, i) for i in few] for n in NAMES]
        calls.calls.clear()
        columns = access.read_columns(NAMES, many)
        assert calls.calls == ["bm_register_read_all"] * len(NAMES)
        for name, column in zip(NAMES, columns, strict=True):
            assert len(column) == len(many)
            assert column[:5].tolist() == [_value(name, i) for i in many[:5]]
    finally:
        access._client = calls._client
        for name in NAMES:
            for i in {*few, *many[:5]}:
                access.write(name, i, 0)


def test_read_columns_names_what_failed(access: RegisterAccess) -> None:  # noqa: F811
    with pytest.raises(RegisterAccessError, match="hb_nope"):
        access.read_columns(["hb_rx_count", "hb_nope"], [1])
    with pytest.raises(RegisterAccessError, match="hb_rx_count"):
        access.read_columns(["hb_rx_count"], [1, -2])
    with pytest.raises(RegisterAccessError, match="hb_rx_count"):
        access.read_columns(["hb_rx_count"], [1, 65_536])  # beyond the array: bmv2 refuses
