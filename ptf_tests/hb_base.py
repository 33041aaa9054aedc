"""Shared machinery of the hbmon PTF suite.

The suite knows only the P4Runtime contract (docs/dataplane.md, by name through the P4Info)
and `hbmon.dataplane.registers` for the hb_* registers, so the same tests run on bmv2 and on the
kernel target. Test parameters (--test-params):

    grpcaddr    P4Runtime server, e.g. '127.0.0.1:9559'
    p4info      path of heartbeat.p4info.txtpb
    bmv2_json   path of heartbeat.json (bmv2's device config; the kernel target ignores it)
    target      'bmv2' | 'kernel' (bmv2: registers over Thrift, see hbmon.dataplane.registers)
    thrift_port bmv2 Thrift port (9090)
    device_id   P4Runtime device id (1)
    cpu_port    the target's CPU port (255)
    port_map    path of ptf_tests/portmap.json

The pipeline is pushed once per ptf run (the first test to start pushes it). Each test
installs what it needs through `self.add_*` helpers, which register the matching removal;
tearDown removes everything in reverse order and zeroes the register slots the test used.

No fixed sleeps: positive checks poll (a packet, a counter, a register, a digest) with a
deadline; "nothing else came" checks send a marker frame behind the packets under test and
require the marker to be the next thing each port sees.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hb_examples as ex
import ptf
import ptf.testutils as tu
from hbmon.dataplane.registers import RegisterAccess, open_register_access
from hbmon.p4 import (
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    P4Schema,
    PacketOut,
    Replica,
    TableEntry,
)
from hbmon.p4.client import P4RuntimeClient
from hbmon.protocol import FANOUT_GROUP, REASON_COUNT, Reason
from ptf.base_tests import BaseTest

log = logging.getLogger("hbmon.ptf")

MONITOR_MAC = "02:48:42:00:00:01"
MONITOR_IP = ex.MONITOR_IP
SWITCH_MAC = "02:48:42:00:00:fe"  # destination of responses (the monitor's data-plane MAC)
MARKER_MAC = "02:48:42:ff:ff:{:02x}"  # per-port marker destinations (l2_forward)
MARKER_SRC_MAC = "02:48:42:ff:00:00"
TIMEOUT = 10.0  # deadline of every positive check, seconds
DIGEST_NAME = "peer_event_t"


def _pause() -> None:
    """Between two reads of a polling loop (which always has a deadline)."""
    time.sleep(0.02)


def param(name: str, default: Any = None) -> Any:
    value = tu.test_param_get(name, default)
    if value is None:
        raise RuntimeError(f"PTF test parameter {name!r} missing (see ptf_tests/hb_base.py)")
    return value


def peer_mac(n: int) -> str:
    return f"02:48:42:00:01:{n:02x}"


class Session:
    """What the whole run shares: one P4Runtime client (primary), the pipeline, register
    access and the digests received. Created by the first test, closed at exit."""

    _instance: Session | None = None

    def __init__(self) -> None:
        self.target = str(param("target", "bmv2"))
        self.schema = P4Schema.load(param("p4info"))
        self.device_config = Path(param("bmv2_json")).read_bytes()
        self.cpu_port = int(param("cpu_port", 255))
        portmap = json.loads(Path(param("port_map")).read_text())
        # p4 port -> ptf port
        self.ptf_port = {int(p["p4_port"]): int(p["ptf_port"]) for p in portmap["ports"]}
        self.ports = sorted(self.ptf_port)
        self.digests: queue.Queue[DigestMessage] = queue.Queue()
        self.client = P4RuntimeClient(
            str(param("grpcaddr")), int(param("device_id", 1)), election_id=10,
            schema=self.schema, on_digest=self._on_digest, auto_ack_digests=False,
        )
        if not self.client.connect(timeout=TIMEOUT):
            raise RuntimeError(f"not primary on {self.client.address}: "
                               f"{self.client.last_error}")
        started = time.monotonic()
        self.client.set_pipeline(self.schema, self.device_config)
        log.info("pipeline pushed in %.2fs", time.monotonic() - started)
        self.registers: RegisterAccess = open_register_access(
            self.target, client=self.client, schema=self.schema,
            thrift_port=int(param("thrift_port", 9090)), bmv2_json=param("bmv2_json"),
        )

    def _on_digest(self, msg: Any) -> None:
        self.digests.put(DigestMessage.decode(self.schema, msg))

    @classmethod
    def get(cls) -> Session:
        if cls._instance is None:
            cls._instance = Session()
            atexit.register(cls._instance.close)
        return cls._instance

    def close(self) -> None:
        self.registers.close()
        self.client.close()


class HbTest(BaseTest):
    """Base of every test: no runTest here, so ptf does not collect it."""

    s: Session

    # -- lifecycle ----------------------------------------------------------------------------

    def setUp(self) -> None:
        BaseTest.setUp(self)
        self.dataplane = ptf.dataplane_instance
        self.s = Session.get()
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self.slots: set[int] = set()
        self._markers: set[str] = set()
        self.dataplane.flush()
        while not self.s.digests.empty():  # left over from an earlier test: not ours
            self.ack(self.s.digests.get_nowait())

    def tearDown(self) -> None:
        errors: list[str] = []
        for what, undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        self._undo.clear()
        for index in sorted(self.slots):
            try:
                self.s.registers.reset_slot(index)
            except Exception as exc:
                errors.append(f"reset slot {index}: {exc}")
        while not self.s.digests.empty():
            self.ack(self.s.digests.get_nowait())
        BaseTest.tearDown(self)
        if errors:
            self.fail("clean-up failed: " + "; ".join(errors))

    # -- programming the target ---------------------------------------------------------------

    def insert(self, what: str, entity: Any) -> None:
        self.s.client.insert([entity])
        self._undo.append((f"delete {what}", lambda: self.s.client.delete([entity])))

    def use_slot(self, index: int) -> None:
        """Claim a peer slot: zeroed now and again after the test."""
        self.s.registers.reset_slot(index)
        self.slots.add(index)

    def add_peer(self, index: int, *, address: str, peer_id: int, port: int | None = None,
                 mac: str | None = None, detect_mult: int = 3, requests: bool = True,
                 nonce_key: int = ex.NONCE_KEY, min_ttl: int = 0) -> None:
        """The contract's peer programming: peers + peer_ids (+ peer_requests) entries. The
        nonce key defaults to the examples' (so ex.RESPONSE answers request 7); min_ttl 0 is
        GTSM off, 255 single-hop GTSM."""
        self.use_slot(index)
        self.insert(f"peers {address}/{peer_id}", TableEntry(
            "HbIngress.peers", {"src_addr": address, "peer_id": peer_id},
            "HbIngress.set_peer_index",
            {"index": index, "nonce_key": nonce_key, "min_ttl": min_ttl}))
        self.insert(f"peer_ids {peer_id}", TableEntry(
            "HbIngress.peer_ids", {"peer_id": peer_id}, "HbIngress.peer_id_known"))
        if requests:
            self.insert(f"peer_requests {index}", TableEntry(
                "HbEgress.peer_requests", {"index": index}, "HbEgress.rewrite_request",
                {"dst_mac": mac or peer_mac(index), "dst_addr": address, "peer_id": peer_id,
                 "detect_mult": detect_mult, "nonce_key": nonce_key}))
            assert port is not None, "a peer with requests needs its port"

    def mark_sent(self, index: int, sequence: int, count: int = 1) -> None:
        """Leave slot `index` as egress does after sending its `count`th request, `sequence`
        (hb_tx_count, hb_last_tx_seq; written like a controller's slot reset, over P4Runtime
        or Thrift), so responses up to `sequence` are not FUTURE_SEQUENCE. Tests of the
        response path use it instead of a fan-out round; FanOut checks egress writes them."""
        self.s.registers.write_many([("hb_tx_count", index, count),
                                     ("hb_last_tx_seq", index, sequence)])

    def add_fanout_group(self, replicas: Iterable[tuple[int, int]]) -> None:
        """Multicast group 1 with (port, instance = peer index) replicas."""
        group = MulticastGroup(FANOUT_GROUP, tuple(Replica(p, i) for p, i in replicas))
        self.insert("fan-out group", group.encode(self.s.schema))

    def add_l2(self, dst_mac: str, port: int) -> None:
        self.insert(f"l2_forward {dst_mac}", TableEntry(
            "HbIngress.l2_forward", {"dst_addr": dst_mac}, "HbIngress.set_egress_port",
            {"port": port}))

    def enable_digests(self) -> None:
        self.insert("digest config", DigestEntry(DIGEST_NAME, max_timeout_ns=0,
                                                 max_list_size=1, ack_timeout_ns=10**9))

    # -- packets ------------------------------------------------------------------------------

    def send(self, port: int, frame: bytes) -> None:
        tu.send_packet(self, self.s.ptf_port[port], frame)

    def send_response(self, port: int, ipv4_packet: bytes) -> bytes:
        """A response frame, as a peer's host would send it to the monitor."""
        frame = ex.frame(SWITCH_MAC, peer_mac(0xEE), ipv4_packet)
        self.send(port, frame)
        return frame

    def template(self, sequence: int, **fields: int) -> bytes:
        """The fan-out REQUEST template: the example request with the per-peer fields 0
        (the nonce too: egress writes each peer's)."""
        fields = {"nonce": 0, **fields}
        ipv4 = ex.with_fields(ex.REQUEST, dst="0.0.0.0", peer_id=0, sequence=sequence,
                              tx_timestamp_us=0, **fields)
        return ex.frame("00:00:00:00:00:00", MONITOR_MAC, ipv4)

    def packet_out(self, frame: bytes, *, mcast_grp: int = FANOUT_GROUP,
                   egress_port: int = 0) -> None:
        self.s.client.packet_out(PacketOut(frame, {"egress_port": egress_port,
                                                   "mcast_grp": mcast_grp}))

    def receive(self, port: int, timeout: float = TIMEOUT) -> bytes:
        """The next frame on `port` (fails after `timeout`)."""
        result = tu.dp_poll(self, port_number=self.s.ptf_port[port], timeout=timeout)
        if not isinstance(result, self.dataplane.PollSuccess):
            self.fail(f"no packet on port {port} within {timeout}s")
        return bytes(result.packet)

    def assert_nothing_else(self, ports: Sequence[int], sender: int | None = None) -> None:
        """Each port's next frame is a marker sent now: nothing else was queued for it.

        A marker is an ordinary frame switched by l2_forward; the target serves each port in
        order, so anything the packets under test caused on that port arrives first."""
        sender = sender if sender is not None else ports[0]
        markers = {}
        for port in ports:
            mac = MARKER_MAC.format(port)
            if mac not in self._markers:
                self.add_l2(mac, port)
                self._markers.add(mac)
            markers[port] = ex.frame(mac, MARKER_SRC_MAC, ex.with_fields(
                ex.REQUEST, dport=7, src="198.18.255.1", dst="198.18.255.2"))
        for port in ports:
            self.send(sender, markers[port])
        for port in ports:
            got = self.receive(port)
            self.assertEqual(
                got.hex(), markers[port].hex(),
                f"port {port}: expected only the marker, got another frame first")

    # -- counters, registers, digests ---------------------------------------------------------

    def reasons(self) -> list[tuple[int, int]]:
        """(packets, bytes) of every hb_reason cell, by reason code (P4Runtime CounterEntry)."""
        cid = self.s.schema.counter("hb_reason").id
        from p4.v1 import p4runtime_pb2
        entity = p4runtime_pb2.Entity(counter_entry=p4runtime_pb2.CounterEntry(counter_id=cid))
        cells = [(0, 0)] * REASON_COUNT
        seen = 0
        for e in self.s.client.read([entity]):
            c = e.counter_entry
            cells[c.index.index] = (c.data.packet_count, c.data.byte_count)
            seen += 1
        self.assertEqual(seen, REASON_COUNT, "hb_reason wildcard read: wrong cell count")
        return cells

    def wait_reasons(self, before: list[tuple[int, int]], expected: Mapping[Reason, int],
                     timeout: float = TIMEOUT) -> list[tuple[int, int]]:
        """Poll hb_reason until the packet deltas are `expected`, then require that every
        other reason stayed put. Returns the counters read last."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.reasons()
            if all(now[r][0] - before[r][0] >= n for r, n in expected.items()):
                break
            if time.monotonic() > deadline:
                break
            _pause()
        deltas = {Reason(i).name if i in Reason._value2member_map_ else str(i):
                  now[i][0] - before[i][0] for i in range(REASON_COUNT)
                  if now[i][0] != before[i][0]}
        want = {r.name: n for r, n in expected.items() if n}
        self.assertEqual(deltas, want, "hb_reason packet deltas")
        return now

    def slot(self, index: int) -> dict[str, int]:
        return self.s.registers.read_slot(index)

    def snapshot(self) -> dict[str, list[int]]:
        return self.s.registers.snapshot()

    def assert_changed_only(self, before: dict[str, list[int]], after: dict[str, list[int]],
                            indexes: set[int]) -> None:
        for name, cells in after.items():
            changed = {i for i, (a, b) in enumerate(zip(before[name], cells, strict=True))
                       if a != b}
            self.assertTrue(changed <= indexes,
                            f"{name}: cells {sorted(changed)[:10]} changed, only "
                            f"{sorted(indexes)} may")

    def wait_slot(self, index: int, predicate: Callable[[dict[str, int]], bool],
                  timeout: float = TIMEOUT) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            values = self.slot(index)
            if predicate(values):
                # a slot is read cell by cell: the read that saw the predicate may have caught
                # the update half-way, so the values returned come from a read after it
                return self.slot(index)
            if time.monotonic() > deadline:
                return values
            _pause()

    def next_digest(self, index: int, timeout: float = TIMEOUT) -> DigestMessage:
        """The next digest about slot `index`. Digests about other slots are acknowledged and
        skipped: bmv2 may deliver an earlier test's notification late (before the first
        DigestEntry it buffers samples up to 1 s), and each digest test owns its slots."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self.s.digests.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise self.failureException(
                    f"no {DIGEST_NAME} digest for index {index} within {timeout}s") from None
            if all(row.get("index") == index for row in msg.data):
                return msg
            log.info("skipping a digest about another slot: %s", msg)
            self.ack(msg)

    def no_digest_pending(self, index: int) -> None:
        """No digest about slot `index` has arrived (others are skipped, see next_digest)."""
        while not self.s.digests.empty():
            msg = self.s.digests.get_nowait()
            if any(row.get("index") == index for row in msg.data):
                self.fail(f"unexpected digest: {msg}")
            self.ack(msg)

    def ack(self, msg: DigestMessage) -> None:
        from p4.v1 import p4runtime_pb2
        self.s.client.ack_digest(p4runtime_pb2.DigestList(digest_id=msg.digest_id,
                                                          list_id=msg.list_id))


def expected_rtt(rx_us: int, echoed_us: int) -> int:
    """The contract's RTT of one response (registers.p4 / docs/dataplane.md)."""
    if echoed_us > rx_us:
        return 0
    return min(rx_us - echoed_us, 0xFFFFFFFF)


def ipv4_of(frame: bytes) -> bytes:
    """The IPv4 packet of an Ethernet II frame (checks the EtherType)."""
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    assert ethertype == 0x0800, f"not IPv4: ethertype {ethertype:#06x}"
    return frame[14:]
