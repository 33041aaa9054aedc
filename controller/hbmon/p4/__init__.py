"""hbmon's one P4 layer, shared by the controller, the kernel target and the tests.

  schema       `P4Schema`: the P4Info, lookups by name, alias or id (widths, match kinds,
               action scopes)
  bytestrings  `encode_bits` / `decode_bits`: P4Runtime bytestrings (spec 8.4), and
               readable values (IPv4, MAC, hex) to ints
  entities     typed entities (`TableEntry`, `RegisterCell`, `DigestMessage`, ...) to and
               from P4Runtime protobufs
  wire         the hand-written wire codec of the register-read hot path (with the C codec
               hbmon._cells)
"""

from hbmon.p4.bytestrings import (
    BytestringError,
    Value,
    decode_bits,
    encode_bits,
    encode_value,
    format_ipv4,
    format_mac,
    parse_value,
)
from hbmon.p4.entities import (
    LPM,
    CounterCell,
    CounterRead,
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    PacketIn,
    PacketOut,
    RegisterCell,
    RegisterRead,
    Replica,
    TableEntry,
    Ternary,
    encode_digest_data,
    encode_digest_list,
)
from hbmon.p4.schema import (
    ActionInfo,
    ArrayInfo,
    DigestInfo,
    FieldInfo,
    P4InfoError,
    P4Schema,
    PacketMetadataInfo,
    SchemaError,
    TableInfo,
    bitstring_width,
)

__all__ = [
    "LPM", "ActionInfo", "ArrayInfo", "BytestringError", "CounterCell", "CounterRead",
    "DigestEntry", "DigestInfo", "DigestMessage", "FieldInfo", "MulticastGroup", "P4InfoError",
    "P4Schema", "PacketIn", "PacketMetadataInfo", "PacketOut", "RegisterCell", "RegisterRead",
    "Replica", "SchemaError", "TableEntry", "TableInfo", "Ternary", "Value", "bitstring_width",
    "decode_bits", "encode_bits", "encode_digest_data", "encode_digest_list", "encode_value",
    "format_ipv4", "format_mac", "parse_value",
]
