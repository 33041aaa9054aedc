"""Type stub of the C extension hbmon._cells (source: _cells.c)."""

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy.typing as npt
from typing_extensions import Buffer

# numpy's stubs give ndarray no __buffer__ before Python 3.12
_Buf: TypeAlias = Buffer | npt.NDArray[Any]

def decode(response: _Buf, register_ids: Sequence[int] | npt.NDArray[Any], which: _Buf,
           index: _Buf, value: _Buf, /) -> int | None: ...
def encode(register_ids: _Buf, indexes: _Buf, values: _Buf, ends: _Buf, /) -> bytes: ...
