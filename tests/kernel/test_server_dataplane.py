"""What P4Runtime programs on the real hbmon-kernel-target reaches the kernel data plane:
PacketOut fan-out arriving at the peers' namespaces, direct packet-out, responses recorded
in the registers and counters read back over P4Runtime, and UP/DOWN digests on the stream
(batched per DigestEntry, acknowledged); a BFD session end to end (bfd_event_t, DOWN)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import partial

import pytest
from google.rpc import code_pb2
from hbmon import bfd_packet
from hbmon.p4 import (
    CounterRead,
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    P4Schema,
    PacketOut,
    RegisterRead,
    Replica,
    TableEntry,
)
from hbmon.p4.client import P4RuntimeClient
from hbmon.protocol import (
    FANOUT_GROUP,
    GTSM_MIN_TTL,
    REQUEST_PORT,
    Heartbeat,
    MsgType,
    PlaneState,
    Reason,
    request_nonce,
)
from p4.v1 import p4runtime_pb2

from .bpf_lab import (
    Capture,
    Lab,
    heartbeat_frame,
    ip_int,
    mac_bytes,
    request_template,
    response_frame,
)
from .server_harness import P4INFO, KernelTarget, RawStream, wait_for

pytestmark = pytest.mark.netns

ELECTION = 50
MONITOR_IP = ip_int("198.18.0.1")
MONITOR_MAC = 0x02DD00000001


class Peer:
    def __init__(self, index: int, port: int) -> None:
        self.index = index
        self.port = port
        self.addr = ip_int("198.18.1.0") + index
        self.peer_id = 5000 + index
        self.mac = 0x02CC00000000 + index
        self.nonce_key = 0xA5A5F00D ^ index  # one per peer, as a controller derives them


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2) as lab:
        yield lab


@pytest.fixture(scope="module")
def target(lab: Lab) -> Iterator[KernelTarget]:
    with KernelTarget(lab.ports) as t:
        yield t


@pytest.fixture(scope="module")
def captures(lab: Lab, target: KernelTarget) -> dict[int, Capture]:
    return {port: lab.capture(port) for port in (1, 2)}


class Controller:
    """A primary client with the digests it received (not auto-acknowledged)."""

    def __init__(self, address: str, schema: P4Schema) -> None:
        self.schema = schema
        self.digests: list[DigestMessage] = []
        self.client = P4RuntimeClient(address, 1, election_id=ELECTION, schema=schema,
                                      on_digest=self._digest, auto_ack_digests=False)

    def _digest(self, msg: p4runtime_pb2.DigestList) -> None:
        self.digests.append(DigestMessage.decode(self.schema, msg))

    def program(self, peers: list[Peer], detect_mult: int = 3) -> None:
        entities: list[TableEntry | MulticastGroup] = []
        for p in peers:
            entities += [
                TableEntry("HbIngress.peers", {"src_addr": p.addr, "peer_id": p.peer_id},
                           "HbIngress.set_peer_index",
                           {"index": p.index, "nonce_key": p.nonce_key,
                            "min_ttl": GTSM_MIN_TTL}),
                TableEntry("HbIngress.peer_ids", {"peer_id": p.peer_id},
                           "HbIngress.peer_id_known"),
                TableEntry("HbEgress.peer_requests", {"index": p.index},
                           "HbEgress.rewrite_request",
                           {"dst_mac": p.mac, "dst_addr": p.addr, "peer_id": p.peer_id,
                            "detect_mult": detect_mult, "nonce_key": p.nonce_key}),
            ]
        entities.append(MulticastGroup(FANOUT_GROUP, tuple(Replica(p.port, p.index)
                                                           for p in peers)))
        self.client.insert(entities)

    def packet_out(self, frame: bytes, egress_port: int = 0, mcast_grp: int = FANOUT_GROUP,
                   ) -> None:
        self.client.packet_out(PacketOut(frame, {"egress_port": egress_port,
                                                 "mcast_grp": mcast_grp}))

    def reasons(self) -> dict[int, int]:
        return {e.counter_entry.index.index: e.counter_entry.data.packet_count
                for e in self.client.read([CounterRead("hb_reason")])}

    def register(self, name: str, index: int) -> int:
        (e,) = self.client.read_all([RegisterRead(name, index)])
        return int.from_bytes(e.register_entry.data.bitstring, "big")


@pytest.fixture
def ctl(target: KernelTarget, schema: P4Schema,
        captures: dict[int, Capture]) -> Iterator[Controller]:
    assert target.address is not None
    c = Controller(target.address, schema)
    try:
        assert c.client.connect(timeout=10), c.client.last_error
        c.client.set_pipeline(schema)  # a clean slate for every test
        for cap in captures.values():
            cap.drain()
        yield c
    finally:
        c.client.close()


def is_request(frame: bytes) -> bool:
    return (len(frame) >= 70 and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and frame[36:38] == struct.pack("!H", REQUEST_PORT))


def at_least(n: int, frames: list[bytes]) -> bool:
    return len(frames) >= n


def template(seq: int) -> bytes:
    return request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=seq)


def answer(lab: Lab, peer: Peer, seq: int, tx_us: int, ttl: int = 255) -> None:
    """The peer's host answers request `seq` (from its namespace, out of its port), echoing
    the request's nonce, with TTL 255 unless told otherwise."""
    frame = response_frame(peer_ip=peer.addr, monitor_ip=MONITOR_IP, peer_id=peer.peer_id,
                           seq=seq, tx_us=tx_us, status=1, load=37, nonce_key=peer.nonce_key,
                           ttl=ttl)
    lab.sender(peer.port).send(frame)


def test_packet_out_fans_out_to_every_peer(ctl: Controller, captures: dict[int, Capture],
                                           ) -> None:
    peers = [Peer(i, 1 + i % 2) for i in range(6)]
    ctl.program(peers)
    ctl.packet_out(template(77))
    by_id = {p.peer_id: p for p in peers}
    for port in (1, 2):
        frames = captures[port].frames(partial(at_least, 3), is_request)
        assert len(frames) == 3, f"port {port}"
        for f in frames:
            hb = Heartbeat.unpack(f[42:], expect=MsgType.REQUEST)
            peer = by_id[hb.peer_id]
            assert peer.port == port and hb.sequence == 77
            # the nonce key programmed over P4Runtime (rewrite_request param 5) reached egress
            assert hb.nonce == request_nonce(peer.nonce_key, 77)
            assert f[0:6] == mac_bytes(peer.mac)
            assert int.from_bytes(f[30:34], "big") == peer.addr
    assert wait_for(lambda: ctl.reasons()[Reason.REQUEST_SENT] == 6)
    assert [ctl.register("hb_tx_count", p.index) for p in peers] == [1] * 6
    assert [ctl.register("hb_last_tx_seq", p.index) for p in peers] == [77] * 6
    assert ctl.register("hb_tx_count", 6) == 0


def test_direct_packet_out(ctl: Controller, captures: dict[int, Capture]) -> None:
    frame = template(5)
    ctl.packet_out(frame, egress_port=2, mcast_grp=0)
    got = captures[2].frames(partial(at_least, 1), lambda f: True)
    assert got[:1] == [frame]
    assert ctl.reasons()[Reason.REQUEST_SENT] == 0  # sent as it is, not a fan-out


def test_bad_packet_out_reported_on_the_stream(ctl: Controller, target: KernelTarget,
                                               schema: P4Schema) -> None:
    assert target.address is not None
    with RawStream(target.address) as s:
        # above ctl's id in use (it re-arbitrates above the highest id after a test like
        # this one leaves, spec 5.3): takes over from ctl for this test
        s.arbitrate(1, ctl.client.election_id + 1)
        msg = s.next("arbitration")
        assert msg is not None and msg.arbitration.status.code == code_pb2.OK
        meta = schema.packet_metadata("packet_out")
        cases = {
            "unknown id": [(99, b"\x01")],
            "egress_port missing": [(meta.field("mcast_grp").id, b"\x00")],
            "egress_port not a port": [(meta.field("egress_port").id, b"\x09"),
                                       (meta.field("mcast_grp").id, b"\x00")],
            "egress_port wider than 9 bits": [(meta.field("egress_port").id, b"\x02\x00"),
                                              (meta.field("mcast_grp").id, b"\x00")],
        }
        for name, fields in cases.items():
            pkt = p4runtime_pb2.PacketOut(payload=template(1))
            for mid, value in fields:
                pkt.metadata.add(metadata_id=mid, value=value)
            s.send(p4runtime_pb2.StreamMessageRequest(packet=pkt))
            err = s.next("error")
            assert err is not None, name
            assert err.error.canonical_code == code_pb2.INVALID_ARGUMENT, name
            assert err.error.packet_out.packet_out == pkt


def test_response_recorded_and_up_down_digests(ctl: Controller, lab: Lab,
                                               captures: dict[int, Capture]) -> None:
    peer = Peer(3, 1)
    ctl.program([peer], detect_mult=1)
    ctl.client.insert([DigestEntry("peer_event_t", max_timeout_ns=0, max_list_size=1,
                                   ack_timeout_ns=10**9)])
    ctl.packet_out(template(10))
    (req,) = captures[1].frames(partial(at_least, 1), is_request)
    tx_us = Heartbeat.unpack(req[42:]).tx_timestamp_us
    # GTSM on (min_ttl 255 over P4Runtime): the same answer one router away is not the peer's
    answer(lab, peer, 10, tx_us, ttl=254)
    assert wait_for(lambda: ctl.reasons().get(Reason.BAD_TTL) == 1)
    assert ctl.register("hb_rx_count", 3) == 0 and not ctl.digests
    answer(lab, peer, 10, tx_us)
    assert wait_for(lambda: ctl.digests), "no UP digest"
    up = ctl.digests[0]
    assert up.name == "peer_event_t" and up.list_id == 1
    assert len(up.data) == 1
    row = up.data[0]
    assert (row["index"], row["state"], row["last_seq"]) == (3, PlaneState.UP, 10)
    assert row["time_us"] == ctl.register("hb_last_rx_us", 3)
    assert ctl.reasons()[Reason.RESPONSE_RECORDED] == 1
    assert (ctl.register("hb_rx_count", 3), ctl.register("hb_last_seq", 3),
            ctl.register("hb_peer_status", 3), ctl.register("hb_peer_load", 3)) == (1, 10, 1, 37)
    ctl.client.ack_digest(p4runtime_pb2.DigestList(digest_id=up.digest_id, list_id=1))
    # two rounds without an answer: the second finds detect_mult (1) misses -> DOWN
    for seq in (11, 12):
        ctl.packet_out(template(seq))
        captures[1].frames(partial(at_least, 1), is_request)
    assert wait_for(lambda: len(ctl.digests) >= 2), "no DOWN digest"
    down = ctl.digests[1]
    assert down.list_id == 2
    assert (down.data[0]["index"], down.data[0]["state"], down.data[0]["last_seq"]) == (
        3, PlaneState.DOWN, 10)
    assert ctl.register("hb_state", 3) == PlaneState.DOWN


def test_digests_batched_per_config(ctl: Controller, lab: Lab,
                                    captures: dict[int, Capture]) -> None:
    peers = [Peer(1, 1), Peer(2, 2)]
    ctl.program(peers)
    # a list goes out when it holds 2 distinct notifications (timeout far away)
    ctl.client.insert([DigestEntry("peer_event_t", max_timeout_ns=60 * 10**9,
                                   max_list_size=2, ack_timeout_ns=10**9)])
    ctl.packet_out(template(3))
    for p in peers:
        (req,) = captures[p.port].frames(partial(at_least, 1), is_request)
        answer(lab, p, 3, Heartbeat.unpack(req[42:]).tx_timestamp_us)
    assert wait_for(lambda: ctl.digests), "no digest list"
    assert len(ctl.digests) == 1
    assert sorted((r["index"], r["state"]) for r in ctl.digests[0].data) == [
        (1, PlaneState.UP), (2, PlaneState.UP)]


def test_no_digest_before_digest_entry(ctl: Controller, lab: Lab,
                                       captures: dict[int, Capture]) -> None:
    first, second = Peer(4, 1), Peer(5, 2)
    ctl.program([first, second])
    ctl.packet_out(template(8))
    reqs = {p.port: captures[p.port].frames(partial(at_least, 1), is_request)[0]
            for p in (first, second)}
    answer(lab, first, 8, Heartbeat.unpack(reqs[1][42:]).tx_timestamp_us)
    assert wait_for(lambda: ctl.register("hb_state", 4) == PlaneState.UP)
    # the event of `first` happened while digests were off; enabling them now must not
    # bring it back: the first digest is the one of `second`
    ctl.client.insert([DigestEntry("peer_event_t")])
    answer(lab, second, 8, Heartbeat.unpack(reqs[2][42:]).tx_timestamp_us)
    assert wait_for(lambda: ctl.digests), "no digest"
    assert [r["index"] for r in ctl.digests[0].data] == [5]


def test_digests_go_to_the_primary_only(ctl: Controller, lab: Lab, target: KernelTarget,
                                        captures: dict[int, Capture]) -> None:
    assert target.address is not None
    with RawStream(target.address) as backup:
        backup.arbitrate(1, ELECTION - 1)
        assert backup.next("arbitration") is not None
        peer = Peer(6, 2)
        ctl.program([peer])
        ctl.client.insert([DigestEntry("peer_event_t")])
        ctl.packet_out(template(4))
        (req,) = captures[2].frames(partial(at_least, 1), is_request)
        answer(lab, peer, 4, Heartbeat.unpack(req[42:]).tx_timestamp_us)
        assert wait_for(lambda: ctl.digests), "no digest at the primary"
        # a marker: a client with a higher id makes the target notify every client; had
        # the backup been sent the digest, it would come before this notification
        with RawStream(target.address) as marker:
            marker.arbitrate(1, ctl.client.election_id + 1)
            first = backup.next_any()
            assert first is not None and first.WhichOneof("update") == "arbitration"
    wildcard = ctl.client.read_all([p4runtime_pb2.Entity(
        digest_entry=p4runtime_pb2.DigestEntry())])
    assert len(wildcard) == 1


def is_bfd(frame: bytes) -> bool:
    return (len(frame) >= 66 and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and int.from_bytes(frame[36:38], "big") == bfd_packet.PORT)


def test_bfd_session_over_p4runtime(ctl: Controller, lab: Lab,
                                    captures: dict[int, Capture]) -> None:
    """A BFD session programmed over P4Runtime (docs/bfd.md "P4Info additions") on the real
    target: our control packets on the wire from one group-2 template with the tick in it,
    the remote's packet recorded and pushed as a bfd_event_t digest, its discriminator sent
    back in our next packet, and detection-time expiry pushed as a peer_event_t DOWN."""
    index, port = 20, 2
    addr, mac = ip_int("198.18.3.20"), 0x02CC00000020
    ours = bfd_packet.local_discriminator(0x12340000, index)
    theirs = 0x00C0FFEE
    ctl.client.insert([
        TableEntry("HbIngress.bfd_sessions", {"your_disc": ours}, "HbIngress.set_bfd_session",
                   {"index": index}),
        TableEntry("HbIngress.bfd_peers", {"src_addr": addr, "port": port},
                   "HbIngress.set_bfd_session", {"index": index}),
        TableEntry("HbEgress.bfd_requests", {"index": index}, "HbEgress.bfd_control",
                   {"dst_mac": mac, "dst_addr": addr, "src_port": bfd_packet.source_port(index),
                    "my_disc": ours, "state": bfd_packet.State.DOWN, "diag": 0, "flags": 0,
                    "detect_mult": 3, "desired_min_tx_us": 20_000,
                    "required_min_rx_us": 20_000, "tx_interval_us": 20_000,
                    "detect_time_us": 60_000}),
        MulticastGroup(bfd_packet.FANOUT_GROUP, (Replica(port, index),)),
        DigestEntry("bfd_event_t"), DigestEntry("peer_event_t"),
    ])
    tick = heartbeat_frame(src_mac=MONITOR_MAC, dst_mac=0, src_ip=MONITOR_IP, dst_ip=0,
                           sport=bfd_packet.SOURCE_PORT_BASE, dport=bfd_packet.PORT,
                           payload=bfd_packet.template_payload(5_000))
    ctl.packet_out(tick, mcast_grp=bfd_packet.FANOUT_GROUP)
    try:
        first = bfd_packet.classify(captures[port].frames(partial(at_least, 1), is_bfd)[0][42:])
        assert (first.state, first.my_disc, first.your_disc) == (bfd_packet.State.DOWN, ours, 0)
        # the remote answers Init with our discriminator, from its namespace
        remote = bfd_packet.ControlPacket(bfd_packet.State.INIT, my_disc=theirs, your_disc=ours,
                                          desired_min_tx_us=30_000, required_min_rx_us=40_000)
        lab.sender(port).send(heartbeat_frame(
            src_mac=lab.peer_mac(port), dst_mac=lab.root_mac(port), src_ip=addr,
            dst_ip=MONITOR_IP, sport=49200, dport=bfd_packet.PORT, payload=remote.pack()))
        assert wait_for(lambda: ctl.digests), "no bfd_event_t digest"
        rec = ctl.digests[0]
        assert rec.name == "bfd_event_t" and len(rec.data) == 1
        assert rec.data[0] == {**rec.data[0], "index": index, "state": 2, "diag": 0,
                               "flags": 0, "detect_mult": 3, "my_disc": theirs,
                               "desired_min_tx_us": 30_000, "required_min_rx_us": 40_000}
        assert rec.data[0]["time_us"] == ctl.register("hb_last_rx_us", index)
        # our packets now name the remote (your_disc from bfd_remote_disc)
        later = captures[port].frames(
            lambda fs: any(bfd_packet.ControlPacket.unpack(f[42:]).your_disc == theirs
                           for f in fs), is_bfd)
        assert later, "the learned discriminator was never sent"
        # nothing more from the remote: detection time (60 ms) expires, DOWN is pushed
        assert wait_for(lambda: any(d.name == "peer_event_t" for d in ctl.digests)), \
            "no DOWN digest"
        down = next(d for d in ctl.digests if d.name == "peer_event_t")
        assert (down.data[0]["index"], down.data[0]["state"]) == (index, PlaneState.DOWN)
        assert ctl.reasons()[Reason.BFD_EVENT] == 1
    finally:  # end the BFD schedule (a tick of 0 is one round and the end)
        ctl.packet_out(heartbeat_frame(
            src_mac=MONITOR_MAC, dst_mac=0, src_ip=MONITOR_IP, dst_ip=0,
            sport=bfd_packet.SOURCE_PORT_BASE, dport=bfd_packet.PORT,
            payload=bfd_packet.template_payload(0)), mcast_grp=bfd_packet.FANOUT_GROUP)
