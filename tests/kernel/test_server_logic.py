"""Pure logic of the kernel target's P4Runtime server (no BPF, no gRPC): the status codes of
refused bytestrings (the codec itself: tests/controller/test_p4info.py), the semantic P4Info
comparison, arbitration, digest batching/acks, and the hand-written wire
encoding of register reads (byte-identical to protobuf's)."""

from __future__ import annotations

import random

import pytest
from google.protobuf import text_format
from google.rpc import code_pb2
from hbmon.p4 import DigestInfo, FieldInfo, P4Schema, encode_bits, wire
from hbmon_kernel.p4rt_state import (
    Arbiter,
    DigestEngine,
    P4RTError,
    Session,
    first_mismatch,
    received_bits,
)
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from .server_harness import P4INFO

# ---------------------------------------------------------------------------------------------
# bytestrings


@pytest.mark.parametrize(("data", "width", "value"), [
    (b"\x63", 8, 99), (b"\x00\x63", 16, 99), (b"\x00\x00\x63", 12, 99),
    (b"\x30\x64", 16, 12388), (b"\x00", 32, 0), (b"\x00\x00\x00\x00", 32, 0),
    (b"\x01\xff", 9, 511), (b"\xff" * 6, 48, (1 << 48) - 1),
])
def test_bytestrings_accepted(data: bytes, width: int, value: int) -> None:
    # spec 8.4: any length, as long as the value fits (zero padding included)
    assert received_bits(data, width, "f") == value


@pytest.mark.parametrize(("data", "width"), [
    (b"", 8), (b"\x01\x63", 8), (b"\x01\x00\x63", 16), (b"\x10\x63", 12), (b"\x02\x00", 9),
])
def test_bytestrings_refused_out_of_range(data: bytes, width: int) -> None:
    with pytest.raises(P4RTError) as info:
        received_bits(data, width, "table T match field 'x'")
    assert info.value.code == code_pb2.OUT_OF_RANGE
    assert "match field 'x'" in info.value.message


def test_bytestring_code_chosen_by_caller() -> None:
    with pytest.raises(P4RTError) as info:
        received_bits(b"\x01\x00", 8, "param", code_pb2.INVALID_ARGUMENT)
    assert info.value.code == code_pb2.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------
# P4Info comparison


@pytest.fixture(scope="module")
def reference() -> p4info_pb2.P4Info:
    return P4Schema.load(P4INFO).p4info


def _copy(p4info: p4info_pb2.P4Info) -> p4info_pb2.P4Info:
    out = p4info_pb2.P4Info()
    out.CopyFrom(p4info)
    return out


def test_same_p4info_matches(reference: p4info_pb2.P4Info) -> None:
    assert first_mismatch(reference, _copy(reference)) is None


def test_cosmetic_differences_do_not_count(reference: p4info_pb2.P4Info) -> None:
    other = _copy(reference)
    other.pkg_info.arch = "psa"
    other.pkg_info.doc.brief = "a note"
    other.tables[0].preamble.alias = "renamed"
    other.tables[0].preamble.annotations.append("@hidden")
    other.actions.append(other.actions.pop(0))  # order of objects is not semantic
    assert first_mismatch(reference, other) is None


def _table(p4info: p4info_pb2.P4Info, name: str) -> p4info_pb2.Table:
    return next(t for t in p4info.tables if t.preamble.name == name)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda p: setattr(_table(p, "HbIngress.peers").match_fields[0], "bitwidth", 16),
     "table 'HbIngress.peers': match field 'src_addr' is id 1, 16 bits, EXACT, "
     "expected id 1, 32 bits, EXACT"),
    (lambda p: setattr(_table(p, "HbIngress.peers").match_fields[1], "match_type",
                       p4info_pb2.MatchField.TERNARY),
     "match field 'peer_id' is id 2, 32 bits, TERNARY"),
    (lambda p: setattr(_table(p, "HbIngress.peers").preamble, "id", 0x02000099),
     "table 'HbIngress.peers': id is 0x02000099, expected 0x02000001"),
    (lambda p: setattr(_table(p, "HbIngress.l2_forward"), "size", 2048),
     "table 'HbIngress.l2_forward': size is 2048, expected 1024"),
    (lambda p: p.tables.remove(_table(p, "HbEgress.peer_requests")),
     "table 'HbEgress.peer_requests' missing"),
    (lambda p: p.tables.add().preamble.CopyFrom(p4info_pb2.Preamble(id=0x020000ff,
                                                                    name="Extra.t")),
     "table 'Extra.t' is not part of this target's pipeline"),
    (lambda p: setattr(p.registers[5].type_spec.bitstring.bit, "bitwidth", 32),
     "register 'hb_last_rx_us': type is bit<32>, expected bit<64>"),
    (lambda p: setattr(p.counters[0], "size", 8),
     "counter 'hb_reason': size is 8, expected 32"),
    (lambda p: setattr(p.controller_packet_metadata[0].metadata[2], "bitwidth", 8),
     "controller packet metadata 'packet_out': metadata 'mcast_grp' is id 3, 8 bits"),
    (lambda p: p.type_info.structs["peer_event_t"].members[3].type_spec.bitstring.bit
     .__setattr__("bitwidth", 48),
     "digest 'peer_event_t': member #4 is 'time_us': bit<48>, expected 'time_us': bit<64>"),
    (lambda p: p.meters.add().preamble.CopyFrom(p4info_pb2.Preamble(id=0x15000001, name="m")),
     "meter 'm' is not part of this target's pipeline"),
    (lambda p: p.actions[1].params.add(id=4, name="extra", bitwidth=8),
     "action 'HbIngress.set_peer_index': unexpected parameter 'extra'"),
])
def test_first_mismatch_named(reference: p4info_pb2.P4Info, mutate: object,
                              expected: str) -> None:
    other = _copy(reference)
    mutate(other)  # type: ignore[operator]
    found = first_mismatch(reference, other)
    assert found is not None and expected in found, found


def test_empty_p4info_names_first_missing_table(reference: p4info_pb2.P4Info) -> None:
    assert first_mismatch(reference, p4info_pb2.P4Info()) == "table 'HbIngress.peers' missing"


def test_pipeline_lookups(reference: p4info_pb2.P4Info) -> None:
    p = P4Schema(reference, "ref")
    assert p.table("HbIngress.peers").id == 0x02000001
    assert [f.name for f in p.digest("peer_event_t").members] == \
        ["index", "state", "last_seq", "time_us"]
    assert p.register("hb_last_rx_us").bitwidth == 64
    with pytest.raises(KeyError, match="no table 'nope'"):
        p.table("nope")


def test_pipeline_load_refuses_garbage(tmp_path: object) -> None:
    from pathlib import Path
    bad = Path(str(tmp_path)) / "bad.txtpb"
    bad.write_text("tables { nonsense: 1 }")
    with pytest.raises(ValueError, match="not a P4Info"):
        P4Schema.load(bad)


# ---------------------------------------------------------------------------------------------
# arbitration


class Sink:
    def __init__(self) -> None:
        self.got: list[p4runtime_pb2.StreamMessageResponse] = []

    def send(self, msg: p4runtime_pb2.StreamMessageResponse) -> None:
        self.got.append(msg)

    def statuses(self) -> list[tuple[int, int]]:
        """(status code, election id shown) of every arbitration message received."""
        return [(m.arbitration.status.code,
                 (m.arbitration.election_id.high << 64) | m.arbitration.election_id.low)
                for m in self.got]


def _update(device_id: int = 1, election_id: int | None = None, role: str | None = None,
            ) -> p4runtime_pb2.MasterArbitrationUpdate:
    u = p4runtime_pb2.MasterArbitrationUpdate(device_id=device_id)
    if election_id is not None:
        u.election_id.low = election_id
    if role is not None:
        u.role.name = role
    return u


def _session(arbiter: Arbiter, election_id: int | None, role: str | None = None,
             ) -> tuple[Session, Sink]:
    sink = Sink()
    s = Session(sink)
    arbiter.arbitrate(s, _update(1, election_id, role))
    return s, sink


OK, EXISTS, NOT_FOUND = code_pb2.OK, code_pb2.ALREADY_EXISTS, code_pb2.NOT_FOUND


def test_highest_election_id_is_primary_and_everyone_is_told() -> None:
    """Spec 5.3 (>= election_id_past: primary; else backup, only the asker told) and 5.4
    (OK / ALREADY_EXISTS, election id = the highest seen)."""
    arb = Arbiter(1)
    _a, sa = _session(arb, 5)
    assert sa.statuses() == [(OK, 5)]
    _b, sb = _session(arb, 3)  # lower: backup, only b is told
    assert sb.statuses() == [(EXISTS, 5)] and len(sa.got) == 1
    c, sc = _session(arb, 9)  # higher: new primary, everyone told, the new primary last
    assert arb.primary() is c
    assert sa.statuses()[-1] == (EXISTS, 9) and sb.statuses()[-1] == (EXISTS, 9)
    assert sc.statuses() == [(OK, 9)]
    arb.check_writer(1, "", 9)
    with pytest.raises(P4RTError) as info:
        arb.check_writer(1, "", 5)
    assert info.value.code == code_pb2.PERMISSION_DENIED


def test_primary_leaving_leaves_no_primary_until_an_id_reaches_the_highest() -> None:
    """Spec 5 ("the P4Runtime server will be without a primary controller, until a client
    sends a successful MasterArbitrationUpdate"), changelog v1.1.0 and 5.4 (NOT_FOUND with
    the highest id seen). PI promotes the next backup instead: not this target."""
    arb = Arbiter(1)
    a, sa = _session(arb, 5)
    b, _sb = _session(arb, 9)
    arb.leave(b)
    assert arb.primary() is None
    assert sa.statuses()[-1] == (NOT_FOUND, 9)  # the highest ever, not a's own 5
    with pytest.raises(P4RTError) as info:
        arb.check_writer(1, "", 5)
    assert info.value.code == code_pb2.PERMISSION_DENIED
    arb.arbitrate(a, _update(1, 8))  # still below 9: a backup, only a is told
    assert arb.primary() is None and sa.statuses()[-1] == (NOT_FOUND, 9)
    arb.arbitrate(a, _update(1, 9))  # equal to election_id_past: primary (5.3, ">=")
    assert arb.primary() is a and sa.statuses()[-1] == (OK, 9)
    arb.check_writer(1, "", 9)


def test_a_returning_primary_with_its_old_id_is_primary_again() -> None:
    """Spec 5.3: an id equal to the highest ever seen wins, so a controller whose stream
    broke comes back as primary with its own id."""
    arb = Arbiter(1)
    a, _ = _session(arb, 7)
    arb.leave(a)
    a2, sa2 = _session(arb, 7)
    assert arb.primary() is a2 and sa2.statuses() == [(OK, 7)]


def test_backup_leaving_tells_nobody() -> None:
    arb = Arbiter(1)
    a, sa = _session(arb, 5)
    b, _ = _session(arb, 3)
    before = len(sa.got)
    arb.leave(b)
    assert len(sa.got) == before and arb.primary() is a


def test_unset_election_id_never_primary() -> None:
    """Spec 5.4: no primary at all yet, so the notification leaves election_id unset."""
    arb = Arbiter(1)
    _a, sa = _session(arb, None)
    assert arb.primary() is None
    assert sa.got[0].arbitration.status.code == NOT_FOUND
    assert not sa.got[0].arbitration.HasField("election_id")  # no primary ever
    _b, _ = _session(arb, None)  # two unset ids do not collide
    with pytest.raises(P4RTError) as info:
        arb.check_writer(1, "", None)
    assert info.value.code == code_pb2.PERMISSION_DENIED


def test_duplicate_election_id_refused() -> None:
    """Spec 5.3 1.2 / 2.4: an id used by another live controller ends the stream."""
    arb = Arbiter(1)
    _session(arb, 5)
    with pytest.raises(P4RTError) as info:
        _session(arb, 5)
    assert info.value.code == code_pb2.INVALID_ARGUMENT


def test_wrong_device_and_changes_of_device_or_role() -> None:
    """Spec 5.3 1.1 (NOT_FOUND), 2.1 and 2.2 (FAILED_PRECONDITION)."""
    arb = Arbiter(7)
    s = Session(Sink())
    with pytest.raises(P4RTError) as info:
        arb.arbitrate(s, _update(8, 1))
    assert info.value.code == code_pb2.NOT_FOUND
    arb.arbitrate(s, _update(7, 1))
    with pytest.raises(P4RTError) as info:
        arb.arbitrate(s, _update(9, 1))
    assert info.value.code == code_pb2.FAILED_PRECONDITION
    with pytest.raises(P4RTError) as info:
        arb.arbitrate(s, _update(7, 1, role="other"))
    assert info.value.code == code_pb2.FAILED_PRECONDITION


def test_a_primary_lowering_its_id_steps_down_and_nobody_is_primary() -> None:
    """Spec 5.3 ("Otherwise, the controller becomes a backup. If the controller was
    previously a primary (and downgraded itself), then an advisory message is sent to all
    controllers") and 5.4 (NOT_FOUND, election id = the highest seen)."""
    arb = Arbiter(1)
    a, sa = _session(arb, 5)
    b, sb = _session(arb, 3)
    arb.arbitrate(b, _update(1, 8))  # b raises its id: takes over
    assert arb.primary() is b and sa.statuses()[-1] == (EXISTS, 8)
    arb.arbitrate(b, _update(1, 2))  # and steps down: no primary, not a (5 < 8)
    assert arb.primary() is None
    assert sa.statuses()[-1] == (NOT_FOUND, 8) and sb.statuses()[-1] == (NOT_FOUND, 8)
    with pytest.raises(P4RTError):
        arb.check_writer(1, "", 2)
    arb.arbitrate(a, _update(1, 10))
    assert arb.primary() is a and sb.statuses()[-1] == (EXISTS, 10)


def test_primary_re_sending_its_id_tells_everyone() -> None:
    """Spec 5.3: ">= election_id_past ... becomes, or stays, primary"; with a previous
    primary (including this controller) every other controller is notified, then it."""
    arb = Arbiter(1)
    a, sa = _session(arb, 5)
    _b, sb = _session(arb, 3)
    arb.arbitrate(a, _update(1, 6))
    assert sa.statuses()[-1] == (OK, 6) and sb.statuses()[-1] == (EXISTS, 6)
    arb.arbitrate(a, _update(1, 6))
    assert sb.statuses()[-1] == (EXISTS, 6) and len(sb.got) == 3
    assert sa.statuses()[-1] == (OK, 6) and len(sa.got) == 3


def test_roles_are_independent() -> None:
    arb = Arbiter(1)
    a, _ = _session(arb, 5)
    r, sr = _session(arb, 1, role="reader")
    assert arb.primary() is a and arb.primary("reader") is r
    assert sr.got[0].arbitration.role.name == "reader"
    arb.check_writer(1, "reader", 1)
    with pytest.raises(P4RTError) as info:
        arb.check_writer(1, "nobody", 1)
    assert info.value.code == code_pb2.NOT_FOUND


def test_role_config_refused() -> None:
    arb = Arbiter(1)
    u = _update(1, 1, role="r")
    u.role.config.Pack(p4runtime_pb2.Uint128(low=1))
    with pytest.raises(P4RTError) as info:
        arb.arbitrate(Session(Sink()), u)
    assert info.value.code == code_pb2.INVALID_ARGUMENT


def test_too_many_clients() -> None:
    arb = Arbiter(1)
    for i in range(Arbiter.MAX_SESSIONS_PER_ROLE):
        _session(arb, i + 1)
    with pytest.raises(P4RTError) as info:
        _session(arb, 1000)
    assert info.value.code == code_pb2.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------------------------------------
# digests

SPEC = DigestInfo(0x18000001, "peer_event_t", (
    FieldInfo(1, "index", 16), FieldInfo(2, "state", 8), FieldInfo(3, "last_seq", 32),
    FieldInfo(4, "time_us", 64)))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def _engine(max_timeout_ns: int = 0, max_list_size: int = 1, ack_timeout_ns: int = 10**9,
            primary: bool = True) -> tuple[DigestEngine, list[p4runtime_pb2.DigestList], Clock]:
    sent: list[p4runtime_pb2.DigestList] = []
    clock = Clock()

    def send(msg: p4runtime_pb2.DigestList) -> bool:
        if primary:
            sent.append(msg)
        return primary

    engine = DigestEngine(SPEC, send, clock)
    entry = p4runtime_pb2.DigestEntry(digest_id=SPEC.id)
    entry.config.max_timeout_ns = max_timeout_ns
    entry.config.max_list_size = max_list_size
    entry.config.ack_timeout_ns = ack_timeout_ns
    engine.write(p4runtime_pb2.Update.INSERT, entry)
    return engine, sent, clock


def _rows(msg: p4runtime_pb2.DigestList) -> list[tuple[int, ...]]:
    return [tuple(int.from_bytes(m.bitstring, "big") for m in d.struct.members)
            for d in msg.data]


def test_digest_disabled_until_configured() -> None:
    sent: list[p4runtime_pb2.DigestList] = []
    engine = DigestEngine(SPEC, lambda m: sent.append(m) or True)
    engine.add([(1, 1, 7, 100)])
    assert sent == [] and engine.dropped == 1


def test_digest_one_per_list_with_increasing_list_ids() -> None:
    engine, sent, _ = _engine()
    engine.add([(1, 1, 7, 100)])
    engine.add([(2, 2, 9, 200)])
    assert [m.list_id for m in sent] == [1, 2]
    assert _rows(sent[0]) == [(1, 1, 7, 100)] and sent[0].digest_id == SPEC.id
    assert sent[1].data[0].struct.members[3].bitstring == b"\xc8"  # canonical 200


def test_digest_duplicates_suppressed_until_ack() -> None:
    engine, sent, _ = _engine()
    engine.add([(1, 1, 7, 100)])
    engine.add([(1, 1, 7, 100)])  # same data, list 1 not acknowledged: not sent again
    assert len(sent) == 1
    assert engine.ack(1) and not engine.ack(1)  # a second ack finds nothing
    engine.add([(1, 1, 7, 100)])
    assert [m.list_id for m in sent] == [1, 2]


def test_digest_ack_timeout_clears_cache_without_resending() -> None:
    engine, sent, clock = _engine(ack_timeout_ns=500)
    engine.add([(1, 1, 7, 100)])
    assert engine.tick() == 500  # next thing: the list expires in 500 ns
    clock.now += 500
    assert engine.tick() is None and engine.pending_lists() == []
    assert len(sent) == 1  # expired, not re-sent
    engine.add([(1, 1, 7, 100)])
    assert len(sent) == 2


def test_digest_no_cache_with_zero_ack_timeout() -> None:
    engine, sent, _ = _engine(ack_timeout_ns=0)
    engine.add([(1, 1, 7, 100)])
    engine.add([(1, 1, 7, 100)])
    assert len(sent) == 2 and engine.pending_lists() == []


def test_digest_batching_by_size_and_timeout() -> None:
    engine, sent, clock = _engine(max_timeout_ns=1000, max_list_size=3)
    engine.add([(1, 1, 1, 1), (2, 1, 1, 1)])
    assert sent == []
    assert engine.tick() == 1000
    engine.add([(2, 1, 1, 1)])  # duplicate within the buffer
    engine.add([(3, 1, 1, 1)])  # third distinct: list full
    assert len(sent) == 1 and _rows(sent[0]) == [(1, 1, 1, 1), (2, 1, 1, 1), (3, 1, 1, 1)]
    engine.add([(4, 1, 1, 1)])
    clock.now += 999
    engine.tick()
    assert len(sent) == 1
    clock.now += 1
    engine.tick()  # max_timeout_ns since the first of the buffer: sent
    assert len(sent) == 2 and _rows(sent[1]) == [(4, 1, 1, 1)]


def test_digest_unlimited_list_size_waits_for_timeout() -> None:
    engine, sent, clock = _engine(max_timeout_ns=100, max_list_size=0)
    engine.add([(i, 1, 1, 1) for i in range(50)])
    assert sent == []
    clock.now += 100
    engine.tick()
    assert len(sent) == 1 and len(sent[0].data) == 50


def test_digest_without_primary_is_dropped_not_cached() -> None:
    engine, sent, _ = _engine(primary=False)
    engine.add([(1, 1, 7, 100)])
    assert sent == [] and engine.dropped == 1 and engine.pending_lists() == []


def test_digest_entry_write_semantics() -> None:
    engine, _, _ = _engine()
    entry = p4runtime_pb2.DigestEntry(digest_id=SPEC.id)
    with pytest.raises(P4RTError) as info:
        engine.write(p4runtime_pb2.Update.INSERT, entry)
    assert info.value.code == code_pb2.ALREADY_EXISTS
    undo = engine.write(p4runtime_pb2.Update.DELETE, entry)
    assert engine.config is None
    with pytest.raises(P4RTError) as info:
        engine.write(p4runtime_pb2.Update.MODIFY, entry)
    assert info.value.code == code_pb2.NOT_FOUND
    undo()
    assert engine.config is not None and engine.config.config.max_list_size == 1


# ---------------------------------------------------------------------------------------------
# wire encoding of register reads


def _protobuf_response(register_id: int, values: list[int], start: int = 0) -> bytes:
    resp = p4runtime_pb2.ReadResponse()
    for i, v in enumerate(values, start=start):
        e = resp.entities.add().register_entry
        e.register_id = register_id
        e.index.index = i
        e.data.bitstring = encode_bits(v)
    return resp.SerializeToString()


@pytest.mark.parametrize("width", [8, 32, 64])
def test_register_fields_identical_to_protobuf(width: int) -> None:
    rng = random.Random(width)
    values = [0, 1, 127, 128, 255, 256, (1 << width) - 1] + \
        [rng.randrange(1 << width) for _ in range(3000)]
    got = b"".join(wire.register_fields(0x16000006, values))
    assert got == _protobuf_response(0x16000006, values)
    parsed = p4runtime_pb2.ReadResponse.FromString(got)
    assert [int.from_bytes(e.register_entry.data.bitstring, "big") for e in parsed.entities] \
        == values


def test_register_fields_with_offset_and_large_ids() -> None:
    values = [5, 0, 1 << 40]
    got = b"".join(wire.register_fields(0xFFFFFFFF, values, start=65533))
    assert got == _protobuf_response(0xFFFFFFFF, values, start=65533)


def test_register_chunks_cover_every_cell_in_order() -> None:
    values = list(range(70000))
    chunks = list(wire.register_chunks(0x16000001, values, cells_per_chunk=32768))
    assert len(chunks) == 3 and all(len(c) < wire.MAX_RESPONSE_BYTES for c in chunks)
    indexes = [e.register_entry.index.index for c in chunks
               for e in p4runtime_pb2.ReadResponse.FromString(c).entities]
    assert indexes == values


def test_chunker_bounds_messages() -> None:
    field = wire.entities_field(p4runtime_pb2.Entity(
        table_entry=p4runtime_pb2.TableEntry(table_id=1, metadata=b"x" * 1000)))
    chunker = wire.ResponseChunker(limit=10_000)
    out = list(chunker.add([field] * 25))
    out.append(chunker.flush())
    assert all(len(c) <= 10_000 for c in out)
    assert sum(len(p4runtime_pb2.ReadResponse.FromString(c).entities) for c in out) == 25


def test_text_format_of_reference_is_a_p4info() -> None:
    # the file the server loads by default parses as a P4Info with the contract's objects
    msg = text_format.Parse(P4INFO.read_text(), p4info_pb2.P4Info())
    assert {t.preamble.name for t in msg.tables} == {
        "HbIngress.peers", "HbIngress.peer_ids", "HbIngress.l2_forward",
        "HbEgress.peer_requests",
        # BFD (docs/bfd.md "P4Info additions")
        "HbIngress.bfd_sessions", "HbIngress.bfd_peers", "HbEgress.bfd_requests"}
    assert {d.preamble.name for d in msg.digests} == {"peer_event_t", "bfd_event_t"}
