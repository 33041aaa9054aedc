"""Compatibility name for `hbmon.p4` (the P4Info schema, bytestrings and typed entities).

About thirty modules outside the P4 layer (tests, benches, the PTF suite, the inventory and
the P4Runtime client) import from here; new code imports `hbmon.p4`. `encode_int` and
`decode_int` are the old names of `encode_bits` and `decode_bits`.
"""

from .p4 import *  # noqa: F403 - the whole public API, re-exported
from .p4 import __all__ as _p4_all
from .p4 import decode_bits as decode_int
from .p4 import encode_bits as encode_int

__all__ = [*_p4_all, "decode_int", "encode_int"]
