"""One P4Runtime device, two back ends (issue 12): the same scenario against
`hbmon-kernel-target` over the BPF data plane (a namespace lab) and over its in-memory data
plane (`--datapath memory`, what the controller's unit tests run on) gives the same answers.

The scenario covers what the controller relies on: arbitration notifications (spec 5.4),
a Write batch with per-update errors (spec 12.3, CONTINUE_ON_ERROR), table, multicast group,
register (wildcard, indexed, all registers) and counter reads, a read out of range, and a
PacketOut fan-out seen as hb_tx_count / hb_last_tx_seq changes and REQUEST_SENT /
REQUEST_NO_PEER counts (docs/dataplane.md "Fan-out"), and BFD (docs/bfd.md): a session's
three table entries read back, the bfd_event_t digest enabled, a BFD template's round on
group 2 seen as BFD_SENT / REQUEST_NO_PEER, hb_tx_count and a cleared bfd_final_due. Both
targets are the same program started the same way; only `--datapath` differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.rpc import code_pb2
from hbmon import bfd_packet
from hbmon.p4 import DigestEntry, MulticastGroup, P4Schema, PacketOut, Replica, TableEntry
from hbmon.p4.client import INSERT, P4RuntimeClient, WriteError, make_update
from hbmon.protocol import BFD_REGISTERS, FANOUT_GROUP, REGISTERS, Reason
from p4.v1 import p4runtime_pb2

from .bpf_lab import Lab, heartbeat_frame, request_template
from .server_harness import P4INFO, KernelTarget, RawStream

ELECTION = 10
pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2) as lab:
        yield lab


def _poll(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _arbitration(stream: RawStream) -> tuple[int, int]:
    msg = stream.next("arbitration")
    assert msg is not None, "no arbitration notification"
    arb = msg.arbitration
    return arb.status.code, (arb.election_id.high << 64) | arb.election_id.low


def _peer(index: int, port: int) -> list[TableEntry]:
    addr = 0xC6120000 + index
    return [
        TableEntry("HbIngress.peers", {"src_addr": addr, "peer_id": 100 + index},
                   "HbIngress.set_peer_index",
                   {"index": index, "nonce_key": 0x5000 + index, "min_ttl": 0}),
        TableEntry("HbIngress.peer_ids", {"peer_id": 100 + index}, "HbIngress.peer_id_known"),
        TableEntry("HbEgress.peer_requests", {"index": index}, "HbEgress.rewrite_request",
                   {"dst_mac": 0x020000000100 + index, "dst_addr": addr,
                    "peer_id": 100 + index, "detect_mult": 3, "nonce_key": 0x5000 + index}),
    ]


def _cells(client: P4RuntimeClient, schema: P4Schema, name: str,
           index: int | None = None) -> list[tuple[int, int]]:
    entry = p4runtime_pb2.RegisterEntry(register_id=schema.register(name).id)
    if index is not None:
        entry.index.index = index
    out = client.read_all([p4runtime_pb2.Entity(register_entry=entry)])
    return [(e.register_entry.index.index, int.from_bytes(e.register_entry.data.bitstring,
                                                          "big")) for e in out]


def _reasons(client: P4RuntimeClient, schema: P4Schema) -> dict[int, tuple[int, int]]:
    entry = p4runtime_pb2.CounterEntry(counter_id=schema.counter("hb_reason").id)
    return {e.counter_entry.index.index: (e.counter_entry.data.packet_count,
                                          e.counter_entry.data.byte_count)
            for e in client.read_all([p4runtime_pb2.Entity(counter_entry=entry)])}


def scenario(address: str, schema: P4Schema) -> dict[str, Any]:
    """Drive one fresh target; everything observed, as plain data."""
    seen: dict[str, Any] = {}
    # -- arbitration (spec 5.3/5.4): the first id is primary, a lower one a backup, the
    # primary's departure leaves no primary (NOT_FOUND) until an id reaches the highest
    with RawStream(address) as first, RawStream(address) as second:
        first.arbitrate(election_id=5)
        seen["first"] = _arbitration(first)
        second.arbitrate(election_id=3)
        seen["second"] = _arbitration(second)
        first.close()
        seen["second_after_primary_left"] = _arbitration(second)

    client = P4RuntimeClient(address, 1, ELECTION, schema=schema, take_over=False)
    try:
        assert client.connect(timeout=10)
        client.set_pipeline(schema)
        # -- a batch with per-update errors (spec 12.3): the good ones are applied
        client.insert(_peer(1, 1) + _peer(2, 2))
        bad = [*_peer(3, 1), _peer(1, 1)[0],
               TableEntry("HbIngress.l2_forward", {"dst_addr": 0x020000000999},
                          "HbIngress.set_egress_port", {"port": 7})]
        try:
            client.write(make_update(INSERT, e, schema) for e in bad)
            seen["batch"] = "accepted"
        except WriteError as exc:
            seen["batch"] = sorted((e.index, e.code_name) for e in exc.errors)
        try:
            client.delete([_peer(9, 1)[1]])
        except WriteError as exc:
            seen["delete_missing"] = [e.code_name for e in exc.errors]
        seen["peers"] = sorted(
            (TableEntry.decode(schema, e).match["peer_id"],
             TableEntry.decode(schema, e).params["index"])
            for e in client.read_all([TableEntry("HbIngress.peers")]))
        # -- the fan-out group: index 0 has no peer_requests entry (REQUEST_NO_PEER)
        group = MulticastGroup(FANOUT_GROUP, (Replica(1, 1), Replica(2, 2), Replica(1, 3),
                                              Replica(2, 0)))
        client.insert([group])
        seen["group"] = [MulticastGroup.decode(schema, e) == group
                         for e in client.read_all([MulticastGroup(0)])]
        # -- registers: indexed write, wildcard/indexed/all-register reads, out of range
        cell = p4runtime_pb2.RegisterEntry(register_id=schema.register("hb_rx_count").id)
        cell.index.index = 1
        cell.data.bitstring = b"\x2a"
        client.modify([p4runtime_pb2.Entity(register_entry=cell)])
        cells = _cells(client, schema, "hb_rx_count")
        seen["rx_wildcard"] = (len(cells), [c for c in cells if c[1]])
        seen["rx_indexed"] = _cells(client, schema, "hb_rx_count", 1)
        all_regs = client.read_all([p4runtime_pb2.Entity(
            register_entry=p4runtime_pb2.RegisterEntry())])
        seen["all_registers"] = len(all_regs)
        try:
            _cells(client, schema, "hb_rx_count", 1 << 20)
            seen["out_of_range"] = "answered"
        except Exception as exc:  # the client's error names the code
            seen["out_of_range"] = "OUT_OF_RANGE" in str(exc)
        # -- counters
        before = _reasons(client, schema)
        seen["reason_cells"] = len(before)
        client.modify([p4runtime_pb2.Entity(counter_entry=p4runtime_pb2.CounterEntry(
            counter_id=schema.counter("hb_reason").id, index=p4runtime_pb2.Index(index=20),
            data=p4runtime_pb2.CounterData(packet_count=7, byte_count=700)))])
        seen["reason_20"] = _reasons(client, schema)[20]
        # -- one fan-out round (period 0: no schedule), seen in registers and counters
        sent, no_peer = Reason.REQUEST_SENT, Reason.REQUEST_NO_PEER
        base = {r: before[r][0] for r in (sent, no_peer)}
        frame = request_template(monitor_mac=0x020000000001, monitor_ip=0xC6120001,
                                 seq=0x1234)
        client.packet_out(PacketOut(frame, {"egress_port": 0, "mcast_grp": FANOUT_GROUP}))

        def round_done() -> dict[int, tuple[int, int]] | None:
            now = _reasons(client, schema)
            return now if sum(now[k][0] - base[k] for k in base) >= 4 else None

        after = _poll(round_done, "the fan-out round")
        seen["round_counts"] = {int(k): after[k][0] - base[k] for k in base}
        seen["tx_count"] = [c for c in _cells(client, schema, "hb_tx_count") if c[1]]
        seen["last_tx_seq"] = [c for c in _cells(client, schema, "hb_last_tx_seq") if c[1]]
        seen["miss_count"] = [c for c in _cells(client, schema, "hb_miss_count") if c[1]]
        _bfd_steps(client, schema, seen)
    finally:
        client.close()
    return seen


BFD_INDEX, BFD_ADDR, BFD_DISC = 10, 0xC612000A, bfd_packet.local_discriminator(0x77770000, 10)


def _bfd_session() -> list[TableEntry]:
    """A session as docs/bfd.md "P4Info additions" says the controller programs it."""
    return [
        TableEntry("HbIngress.bfd_sessions", {"your_disc": BFD_DISC},
                   "HbIngress.set_bfd_session", {"index": BFD_INDEX}),
        TableEntry("HbIngress.bfd_peers", {"src_addr": BFD_ADDR, "port": 1},
                   "HbIngress.set_bfd_session", {"index": BFD_INDEX}),
        TableEntry("HbEgress.bfd_requests", {"index": BFD_INDEX}, "HbEgress.bfd_control",
                   {"dst_mac": 0x02000000010A, "dst_addr": BFD_ADDR,
                    "src_port": bfd_packet.source_port(BFD_INDEX), "my_disc": BFD_DISC,
                    "state": bfd_packet.State.DOWN, "diag": 0, "flags": 0, "detect_mult": 3,
                    "desired_min_tx_us": 1_000_000, "required_min_rx_us": 300_000,
                    "tx_interval_us": 1_000_000, "detect_time_us": 0}),
    ]


def _bfd_steps(client: P4RuntimeClient, schema: P4Schema, seen: dict[str, Any]) -> None:
    client.insert(_bfd_session())
    client.insert([DigestEntry("bfd_event_t")])
    seen["bfd_entries"] = sorted(
        (t, len(client.read_all([TableEntry(t)])))
        for t in ("HbIngress.bfd_sessions", "HbIngress.bfd_peers", "HbEgress.bfd_requests"))
    seen["bfd_request_params"] = TableEntry.decode(
        schema, client.read_all([TableEntry("HbEgress.bfd_requests")])[0]).params
    # group 2: index 11 has no bfd_requests entry (REQUEST_NO_PEER)
    client.insert([MulticastGroup(bfd_packet.FANOUT_GROUP,
                                  (Replica(1, BFD_INDEX), Replica(2, 11)))])
    due = p4runtime_pb2.RegisterEntry(register_id=schema.register("bfd_final_due").id)
    due.index.index = BFD_INDEX
    due.data.bitstring = b"\x01"
    client.modify([p4runtime_pb2.Entity(register_entry=due)])
    seen["final_due_before"] = _cells(client, schema, "bfd_final_due", BFD_INDEX)
    before = _reasons(client, schema)
    counted = (Reason.BFD_SENT, Reason.REQUEST_NO_PEER)
    base = {r: before.get(r, (0, 0))[0] for r in counted}
    template = heartbeat_frame(src_mac=0x020000000001, dst_mac=0, src_ip=0xC6120001, dst_ip=0,
                               sport=bfd_packet.SOURCE_PORT_BASE, dport=bfd_packet.PORT,
                               payload=bfd_packet.template_payload(0))  # 0: one round
    client.packet_out(PacketOut(template, {"egress_port": 0,
                                           "mcast_grp": bfd_packet.FANOUT_GROUP}))

    def round_done() -> dict[int, tuple[int, int]] | None:
        now = _reasons(client, schema)
        return now if sum(now[k][0] - base[k] for k in base) >= 2 else None

    after = _poll(round_done, "the BFD round")
    seen["bfd_round_counts"] = {int(k): after[k][0] - base[k] for k in base}
    seen["bfd_tx_count"] = _cells(client, schema, "hb_tx_count", BFD_INDEX)
    seen["final_due_after"] = _cells(client, schema, "bfd_final_due", BFD_INDEX)


def _run(target: KernelTarget, schema: P4Schema) -> dict[str, Any]:
    with target:
        assert target.address is not None
        return scenario(target.address, schema)


def test_same_answers_from_bpf_and_memory_back_ends(lab: Lab, schema: P4Schema) -> None:
    memory = _run(KernelTarget(lab.ports, extra_args=["--datapath", "memory"]), schema)
    bpf = _run(KernelTarget(lab.ports), schema)
    # what the scenario must see on any back end (the contract, not only equality)
    assert memory["first"] == (code_pb2.OK, 5)
    assert memory["second"] == (code_pb2.ALREADY_EXISTS, 5)
    assert memory["second_after_primary_left"] == (code_pb2.NOT_FOUND, 5)
    assert memory["batch"] == [(3, "ALREADY_EXISTS"), (4, "INVALID_ARGUMENT")]
    assert memory["delete_missing"] == ["NOT_FOUND"]
    assert memory["peers"] == [(101, 1), (102, 2), (103, 3)]
    assert memory["group"] == [True]
    assert memory["rx_wildcard"] == (65536, [(1, 42)])
    assert memory["all_registers"] == (len(REGISTERS) + len(BFD_REGISTERS)) * 65536
    assert memory["out_of_range"] is True
    assert memory["reason_20"] == (7, 700)
    assert memory["round_counts"] == {Reason.REQUEST_SENT: 3, Reason.REQUEST_NO_PEER: 1}
    assert memory["tx_count"] == [(1, 1), (2, 1), (3, 1)]
    assert memory["last_tx_seq"] == [(1, 0x1234), (2, 0x1234), (3, 0x1234)]
    assert memory["bfd_entries"] == [("HbEgress.bfd_requests", 1), ("HbIngress.bfd_peers", 1),
                                     ("HbIngress.bfd_sessions", 1)]
    assert memory["bfd_request_params"] == _bfd_session()[2].params
    assert memory["final_due_before"] == [(BFD_INDEX, 1)]
    # the first packet of a session is due at once and carries the F that was due
    assert memory["bfd_round_counts"] == {Reason.BFD_SENT: 1, Reason.REQUEST_NO_PEER: 1}
    assert memory["bfd_tx_count"] == [(BFD_INDEX, 1)]
    assert memory["final_due_after"] == [(BFD_INDEX, 0)]
    # and the BPF data plane answers exactly the same
    assert {k: bpf[k] for k in sorted(bpf)} == {k: memory[k] for k in sorted(memory)}
