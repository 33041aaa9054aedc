"""One switch: `SwitchDriver`, and the request template it sends each round.

A `SwitchDriver` owns one P4Runtime session (`hbmon.p4.client`) and one thread that:

1. after every (re)connection as primary, sets up the target: pushes or verifies the
   pipeline, configures the `peer_event_t` digest and reconciles the peer tables and the
   fan-out group against the inventory (read back, add what is missing, remove what is
   stale, never duplicate);
2. every heartbeat interval sends ONE request template as PacketOut to the fan-out group;
   the data plane replicates and rewrites it per peer, so the controller's cost does not
   depend on the number of peers or (beyond this one packet) on the rate;
3. every poll interval reads the whole health-check structure, one batch per register array
   (`hbmon.dataplane.registers`), and the `hb_reason` counter, and feeds the health engine.

Digests (`peer_event_t`) arrive on the stream thread and update health at once.

BFD sessions (peers of kind bfd, docs/bfd.md) ride on the same machinery: their entries are
reconciled with the rest, a second fan-out group (2) sends their control packets from one
template (re-stated like the heartbeat one on the kernel target, sent every tick on bmv2),
and `bfd_event_t` digests feed their state machines; a session's `bfd_requests` entry is
rewritten only when what it sends must change.

`hbmon.controller.fabric.Fabric` creates one driver per configured switch and gives it
the inventory, the health engine and the event outbox.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from p4.v1 import p4runtime_pb2

from hbmon import bfd_packet, protocol
from hbmon.config import SwitchConfig
from hbmon.controller.bfd import RemoteView
from hbmon.dataplane.inventory import (
    BFD_REQUESTS_TABLE,
    IndexAllocator,
    PeerGuard,
    bfd_group,
    bfd_request_entry,
    desired_state,
    fanout_group,
    has_bfd,
    peer_entities,
    plan_reconcile,
    tables_of,
)
from hbmon.dataplane.registers import P4RuntimeRegisterAccess, RegisterAccess, open_register_access
from hbmon.model import (
    SLOT_FIELDS,
    DataPlaneError,
    Event,
    EventKind,
    Peer,
    SwitchInfo,
)
from hbmon.p4 import (
    CounterCell,
    CounterRead,
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    P4Schema,
    PacketOut,
    TableEntry,
)
from hbmon.p4.client import (
    DELETE,
    INSERT,
    MODIFY,
    P4RuntimeClient,
    P4RuntimeError,
    WriteError,
    make_update,
)
from hbmon.protocol import (
    BFD_REGISTERS,
    REGISTERS,
    Heartbeat,
    MsgType,
    PlaneState,
    Reason,
    seq_newer,
)

if TYPE_CHECKING:  # the fabric creates its drivers; a driver only refers back to it
    from hbmon.controller.fabric import Fabric

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# request template


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp_frame(src_mac: str, src_ip: str, sport: int, dport: int, payload: bytes) -> bytes:
    """Ethernet (to broadcast) / IPv4 (to 0.0.0.0, TTL 255, DF) / UDP (checksum 0) from the
    monitor address: a fan-out template, whose destinations each replica rewrites."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    eth = b"\xff" * 6 + mac + b"\x08\x00"
    src = ipaddress.IPv4Address(src_ip).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000,
                     protocol.SEND_TTL, 17, 0, src, b"\x00\x00\x00\x00")
    ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return eth + ip + udp + payload


def request_template(src_mac: str, src_ip: str, sequence: int) -> bytes:
    """Ethernet/IPv4/UDP/heartbeat (version 2) REQUEST for the fan-out: the data plane
    rewrites the destination MAC and IPv4 (and checksum), peer_id, nonce (the peer's key XOR
    the sequence; 0 here) and tx_timestamp_us per replica. IPv4 TTL 255 (RFC 5082): requests
    are sent as answers are, so a peer may apply GTSM to them too."""
    hb = Heartbeat(MsgType.REQUEST, 0, sequence & _U32, 0).pack()
    return _udp_frame(src_mac, src_ip, protocol.RESPONSE_PORT, protocol.REQUEST_PORT, hb)


def bfd_template(src_mac: str, src_ip: str, tick_us: int) -> bytes:
    """The BFD fan-out template (docs/bfd.md "Transmit"): TTL 255 (RFC 5881 section 5),
    UDP 49152 -> 3784, a control packet of zeros but version, length and, in the required
    min echo RX field, the tick period asked of a target that keeps time (0: stop)."""
    return _udp_frame(src_mac, src_ip, bfd_packet.SOURCE_PORT_BASE, bfd_packet.PORT,
                      bfd_packet.template_payload(tick_us))


# The kernel target keeps rounds itself; the controller re-states its template this often.
REARM_S = 5.0
_SEQ_AT = 14 + 20 + 8 + 8  # Ethernet, IPv4, UDP, then magic..peer_id
_NONCE_AT = _SEQ_AT + 4  # stays 0 in the template: the data plane writes it per replica
_TX_AT = _NONCE_AT + 4


def _with_round(template: bytes, sequence: int, period_us: int) -> bytes:
    """The template for a round: its sequence, and in tx_timestamp_us (which every replica
    overwrites) the round period asked of a target that keeps time (0: this round only)."""
    return (template[:_SEQ_AT] + struct.pack("!I", sequence & _U32)
            + template[_NONCE_AT:_TX_AT] + struct.pack("!Q", period_us)
            + template[_TX_AT + 8:])


def next_sequence(previous: int, now: float) -> int:
    """The next round number: wall-clock milliseconds when that is newer (so a restarted
    controller continues above what peers last echoed), else previous + 1."""
    candidate = int(now * 1000) & _U32
    return candidate if seq_newer(candidate, previous) else (previous + 1) & _U32


# ---------------------------------------------------------------------------------------------
# per switch


class SwitchDriver:
    """One target: its P4Runtime session, setup/reconcile, heartbeat and poll loop."""

    def __init__(self, fabric: Fabric, config: SwitchConfig, schema: P4Schema) -> None:
        self.fabric = fabric
        self.config = config
        self.name = config.name
        self.schema = schema
        self.allocator = IndexAllocator()
        self.info = SwitchInfo(config.name, config.grpc, config.device_id, config.kind)
        # HA: a backup without an election id until elected (then election_id + epoch);
        # no take-over of its own: the leadership decides who is primary
        self.client = P4RuntimeClient(
            config.grpc, config.device_id, None if fabric.ha else fabric.config.election_id,
            schema=schema, take_over=not fabric.ha,
            batch_size=fabric.config.write_batch_size,
            on_digest=self._on_digest, on_connection=self._on_connection,
            on_stream_error=self._on_stream_error,
            credentials=config.tls.channel_credentials() if config.tls else None,
            server_name=config.tls.server_name if config.tls else None,
        )
        # nonce keys and min_ttl of this switch's peer entries (docs/protocol.md, version 2)
        self.guard = PeerGuard(fabric.nonce_secret, config.name, config.min_ttl)
        self.registers: RegisterAccess | None = None
        self.sequence = 0
        self.counters: dict[str, tuple[int, int]] = {}
        self.polls = 0  # successful polls since the last setup
        self.heartbeats = 0
        self.group_replicas = 0  # replicas of the fan-out group as last programmed
        # BFD (docs/bfd.md): the P4Info has it; replicas of group 2 as last programmed;
        # bfd_requests MODIFYs made on session changes (steady state: none)
        self.bfd = has_bfd(schema)
        self.bfd_replicas = 0
        self.bfd_writes = 0
        self.bfd_templates = 0
        self._bfd_changed = threading.Event()  # re-state the BFD template now
        self._program_lock = threading.RLock()  # setup, reconcile and peer programming
        self._wake = threading.Event()
        self._stop = threading.Event()
        # the kernel target runs rounds itself (a timer in the data plane); bmv2 has none
        self.target_keeps_time = config.kind == "kernel"
        self._rounds_changed = threading.Event()  # re-state the template now
        self._setup_needed = True
        self._thread: threading.Thread | None = None
        self._hb_thread: threading.Thread | None = None
        self._bfd_thread: threading.Thread | None = None
        self._mac = config.monitor.mac
        self._ip = config.monitor.ip
        self._next_detail = 0.0  # monotonic time of the next full read (all registers)
        # one register read at a time: a poll, or an API client's read of a peer's details
        # (bmv2's Thrift register client is not thread-safe)
        self._read_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self.client.connect_async()
        self._thread = threading.Thread(target=self._run, name=f"hbmon-switch-{self.name}",
                                        daemon=True)
        self._thread.start()
        # its own thread: a slow poll (thousands of peers) must not delay a heartbeat
        self._hb_thread = threading.Thread(target=self._heartbeat_loop,
                                           name=f"hbmon-heartbeat-{self.name}", daemon=True)
        self._hb_thread.start()
        if self.bfd:
            self._bfd_thread = threading.Thread(target=self._bfd_loop,
                                                name=f"hbmon-bfd-{self.name}", daemon=True)
            self._bfd_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._rounds_changed.set()
        self._bfd_changed.set()
        for thread in (self._thread, self._hb_thread, self._bfd_thread):
            if thread is not None:
                thread.join(timeout=10)
        self.client.close()
        if self.registers is not None:
            self.registers.close()

    @property
    def ready(self) -> bool:
        return self.client.connected and not self._setup_needed and self.polls > 0

    @property
    def programmable(self) -> bool:
        return self.client.primary and not self._setup_needed

    # -- stream callbacks (stream thread) ---------------------------------------------------

    def _on_connection(self, connected: bool, primary: bool) -> None:
        self.info.connected, self.info.primary = connected, primary
        # every (re)connection may follow a target restart: set up and reconcile again
        self.request_setup()
        if not self.fabric._leads(self.name):
            return  # the switch's leader reports its connection (each event once)
        self.fabric._emit([Event(
            kind=EventKind.SWITCH, time=time.time(), switch=self.name,
            reason=("connected as primary" if primary else "connected as backup")
            if connected else f"disconnected: {self.client.last_error or 'stream closed'}",
            details={"connected": connected, "primary": primary, "address": self.config.grpc},
        )])

    # -- leadership (HA; the leadership thread) ---------------------------------------------

    def elected(self, epoch: int) -> None:
        """Leader of this switch: become primary on the live stream with an id above every
        earlier leader's (P4Runtime 1.4 section 5.3); the primary path then sets up and
        reconciles. take_over: a target that forgot its highest id is taken at once."""
        self.client.set_election_id(self.fabric.config.election_id + epoch, take_over=True)

    def deposed(self) -> None:
        """No longer the leader: back to a backup without an election id, no writes."""
        self.client.set_election_id(None, take_over=False)

    def _on_stream_error(self, error: p4runtime_pb2.StreamError) -> None:
        self.info.last_error = f"stream error: {error.message}"
        log.warning("%s: stream error: %s", self.name, error.message)

    def _on_digest(self, digest: p4runtime_pb2.DigestList) -> None:
        try:
            message = DigestMessage.decode(self.schema, digest)
        except Exception as exc:
            log.warning("%s: undecodable digest: %s", self.name, exc)
            return
        if message.name not in ("peer_event_t", "bfd_event_t"):
            return
        if self.fabric.metrics is not None:
            self.fabric.metrics.digest_received(self.name, len(message.data))
        if message.name == "bfd_event_t":
            self.fabric._bfd_events(self, message.data)
        else:
            self.fabric._plane_events(self, message.data)

    # -- thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        """Setup after every (re)connection, then poll every poll interval."""
        next_poll = time.monotonic()
        backoff = 0.1
        while not self._stop.is_set():
            if not self.client.connected:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._setup_needed:
                try:
                    self.setup()
                    backoff = 0.1
                    next_poll = time.monotonic()
                except Exception as exc:
                    self.info.last_error = f"setup: {exc}"
                    log.warning("%s: setup failed: %s", self.name, exc)
                    self._wake.wait(backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, 5.0)
                continue
            now = time.monotonic()
            if now >= next_poll:
                self.poll()
                next_poll += self.config.poll_interval_s
                if next_poll <= now:  # fell behind: skip, do not burst
                    next_poll = now + self.config.poll_interval_s
            delay = next_poll - time.monotonic()
            if delay > 0 and self._wake.wait(delay):
                self._wake.clear()

    def _heartbeat_loop(self) -> None:
        """Request rounds: kept by the target where it can keep time (the kernel target: one
        template asking for a period, re-stated every REARM_S), else one PacketOut per
        interval on a fixed schedule (bmv2; missed slots are skipped)."""
        template = request_template(self._mac, self._ip, 0)
        packet = PacketOut(template, {"egress_port": 0, "mcast_grp": protocol.FANOUT_GROUP}) \
            .encode(self.schema)
        if self.target_keeps_time:
            self._arm_rounds(packet, template)
        else:
            self._send_rounds(packet, template)

    def _bfd_loop(self) -> None:
        """BFD fan-out rounds (group 2), while the switch has sessions: on the kernel target
        one template asking for a round every tick, re-stated every REARM_S, at once when
        the tick or the group changes, and a last one with tick 0 at a clean stop (our
        sessions then stop sending; the remotes detect it); elsewhere (bmv2) one template
        every tick. Which replicas are due is the data plane's business (docs/bfd.md)."""
        packet = PacketOut(b"", {"egress_port": 0, "mcast_grp": bfd_packet.FANOUT_GROUP}) \
            .encode(self.schema)
        armed = 0  # the tick the target was last asked for (0: none)
        next_send = time.monotonic()
        while not self._stop.is_set():
            self._bfd_changed.clear()
            tick_us = self.fabric._bfd_tick_us(self.name)
            if self.programmable and self.bfd_replicas:
                packet.payload = bfd_template(self._mac, self._ip, tick_us)
                try:
                    self.client.packet_out(packet)
                    self.bfd_templates += 1
                    armed = tick_us
                except P4RuntimeError as exc:
                    self.info.last_error = f"bfd packet out: {exc}"
            if self.target_keeps_time or not self.bfd_replicas:
                # no sessions: nothing to send until the group changes (which sets the event)
                self._bfd_changed.wait(REARM_S)
                next_send = time.monotonic()
                continue
            next_send += tick_us / 1e6
            now = time.monotonic()
            if next_send <= now:  # fell behind: skip, do not burst
                next_send = now + tick_us / 1e6
            self._bfd_changed.wait(next_send - now)
        if self.target_keeps_time and armed and self.programmable and self.bfd_replicas:
            packet.payload = bfd_template(self._mac, self._ip, 0)
            with contextlib.suppress(P4RuntimeError):
                self.client.packet_out(packet)

    def _send_rounds(self, packet: p4runtime_pb2.PacketOut, template: bytes) -> None:
        interval = self.config.interval_s
        next_hb = time.monotonic()
        while not self._stop.is_set():
            if self.programmable and self.group_replicas:
                self.sequence = next_sequence(self.sequence, time.time())
                packet.payload = _with_round(template, self.sequence, 0)
                try:
                    self.client.packet_out(packet)
                    self.heartbeats += 1
                except P4RuntimeError as exc:
                    self.info.last_error = f"packet out: {exc}"
            next_hb += interval
            now = time.monotonic()
            if next_hb <= now:
                next_hb = now + interval
            self._stop.wait(next_hb - now)

    def _arm_rounds(self, packet: p4runtime_pb2.PacketOut, template: bytes) -> None:
        """Ask the target for a round every interval. Asking again with the same period keeps
        the target's phase and sequence (docs/dataplane.md), so the template is re-stated
        every REARM_S in case a target restart or a lost carrier ended the schedule, and at
        once after every setup or when the fan-out group stops being empty."""
        period_us = round(self.config.interval_s * 1_000_000)
        while not self._stop.is_set():
            self._rounds_changed.clear()
            if self.programmable and self.group_replicas:
                self.sequence = next_sequence(self.sequence, time.time())
                packet.payload = _with_round(template, self.sequence, period_us)
                try:
                    self.client.packet_out(packet)
                    self.heartbeats += 1
                except P4RuntimeError as exc:
                    self.info.last_error = f"packet out: {exc}"
            self._rounds_changed.wait(REARM_S)
        if self.programmable and self.group_replicas:
            # a clean stop ends the schedule (one last round); a crash leaves the target
            # monitoring on its own until a controller comes back
            packet.payload = _with_round(template, next_sequence(self.sequence, time.time()), 0)
            with contextlib.suppress(P4RuntimeError):
                self.client.packet_out(packet)

    # -- setup and reconcile ----------------------------------------------------------------

    def setup(self) -> None:
        with self._program_lock:
            primary = self.client.primary
            if primary:
                if self._ensure_pipeline():
                    self.fabric._new_target_clock(self.name)
                self._configure_digest()
            # a (re)connection may follow a target restart: register access over a channel
            # of its own (bmv2's Thrift) would still talk to the dead process, so it is
            # opened again; P4Runtime access rides on the client, which reconnected
            if not isinstance(self.registers, P4RuntimeRegisterAccess):
                fresh = open_register_access(
                    self.config.kind, client=self.client, schema=self.schema,
                    thrift_port=self.config.thrift_port or 9090,
                    bmv2_json=self.config.bmv2_json,
                )
                with self._read_lock:  # an API client's read_details may be using it
                    stale, self.registers = self.registers, fresh
                if stale is not None:
                    with contextlib.suppress(Exception):
                        stale.close()
            if primary:
                self.reconcile()
            self._init_sequence()
            self._setup_needed = False
            self._rounds_changed.set()  # a (re)started target has no schedule yet
            self.polls = 0
            self.info.last_error = None
        log.info("%s: set up (%s)", self.name, "primary" if primary else "backup")

    def _ensure_pipeline(self) -> bool:
        """True when the pipeline was pushed: the target started afresh (or ran another)."""
        mode = self.config.push_pipeline
        device_config = b""
        if self.config.kind == "bmv2" and self.config.bmv2_json is not None:
            device_config = Path(self.config.bmv2_json).read_bytes()
        if mode == "never":
            if not self.client.pipeline_matches(self.schema):
                raise DataPlaneError(
                    f"{self.name} runs another P4Info than {self.config.p4info} "
                    "(push_pipeline: never)")
            return False
        if self.client.ensure_pipeline(self.schema, device_config, force=mode == "always"):
            log.info("%s: pipeline pushed", self.name)
            return True
        return False

    def _configure_digest(self) -> None:
        for name in ("peer_event_t", "bfd_event_t") if self.bfd else ("peer_event_t",):
            entry = DigestEntry(name, max_timeout_ns=0, max_list_size=1,
                                ack_timeout_ns=100_000_000)
            try:
                self.client.write([make_update(INSERT, entry, self.schema)])
            except WriteError as exc:
                if exc.errors and exc.errors[0].code_name == "ALREADY_EXISTS":
                    self.client.write([make_update(MODIFY, entry, self.schema)])
                else:
                    raise

    def request_setup(self) -> None:
        """Set up and reconcile again, on the driver's own thread: a change could not be
        programmed, or the target may hold entries the inventory no longer has."""
        self._setup_needed = True
        self._wake.set()

    def reconcile_or_request_setup(self, what: str) -> None:
        """Reconcile now; if that fails, leave it to the driver's next setup."""
        try:
            self.reconcile()
        except Exception as exc:
            log.warning("%s: %s failed: %s; setting up again", self.name, what, exc)
            self.request_setup()

    def reconcile(self) -> dict[str, Any]:
        """Make the target hold exactly this switch's inventory; returns what changed."""
        with self._program_lock:
            # indexes held before the inventory is read: their peers are gone from it, so
            # this reconcile deletes whatever still points at them
            held = self.allocator.held
            peers = self.fabric._peers_of(self.name)
            tables = [TableEntry(t) for t in tables_of(self.schema)]
            actual = [TableEntry.decode(self.schema, e) for e in self.client.read(tables)]
            groups = [MulticastGroup.decode(self.schema, e)
                      for e in self.client.read([MulticastGroup(0)])]
            if self.bfd:
                self._bfd_sessions_lost(peers, actual)
                self._bfd_resume(peers, actual)
            # the sessions' state as it is now
            desired = desired_state(self.schema, peers, self.config.detect_mult, self.guard,
                                    self.fabric._bfd_controls(self.name))
            plan = plan_reconcile(self.schema, desired, actual, groups)
            if not plan.empty:
                log.info("%s: reconcile %s", self.name, plan.summary())
            # stale first (a peer's key may now belong to another index), then the rest
            if plan.delete:
                self._write(DELETE, plan.delete, ignore="NOT_FOUND")
            fresh = {p.index for p in peers if p.index in self.allocator.needs_reset}
            self._reset_slots(sorted(i for i in fresh if i is not None))
            if plan.insert:
                self._write(INSERT, plan.insert, ignore="ALREADY_EXISTS")
            if plan.modify:
                self._write(MODIFY, plan.modify)
                # a session whose packets changed (admin state, timers: an API change)
                # sends the change at the next tick, as push_bfd does
                self._bfd_prompt([int(str(e.match["index"])) for e in plan.modify
                                  if e.table == BFD_REQUESTS_TABLE])
            for action, group in plan.groups.values():
                kind = {"insert": INSERT, "modify": MODIFY, "delete": DELETE}[action]
                self.client.write([make_update(kind, group, self.schema)])
            self._group_programmed(len(desired.group.replicas))
            if desired.bfd_group is not None:
                self._bfd_group_programmed(len(desired.bfd_group.replicas))
            self.allocator.release_held(held)
            self.fabric._programmed(self.name, [p.name for p in peers])
            return plan.summary()

    def _bfd_sessions_lost(self, peers: Sequence[Peer], actual: Sequence[TableEntry]) -> None:
        """Sessions whose `bfd_requests` entry the target does not have (it restarted, or
        lost its state) also lost what their slots knew of the remote, its discriminator
        first: an Up or Init session goes Down (diag 1: the remote has not been heard) and
        runs the handshake again, rather than sending Up with your discriminator 0."""
        table = self.schema.table(BFD_REQUESTS_TABLE).name
        have = {int(str(e.match.get("index"))) for e in actual
                if e.table == table and not e.is_default}
        lost = [p.name for p in peers if p.is_bfd and p.index is not None
                and p.mac is not None and p.index not in have]
        if lost:
            self.fabric._bfd_sessions_lost(lost)

    def _write(self, kind: p4runtime_pb2.Update.Type, entities: Sequence[Any],
               ignore: str | None = None) -> None:
        try:
            self.client.write(make_update(kind, e, self.schema) for e in entities)
        except WriteError as exc:
            real = [e for e in exc.errors if e.code_name != ignore]
            if real or exc.not_attempted:
                raise

    def _group_programmed(self, replicas: int) -> None:
        if replicas and not self.group_replicas:
            self._rounds_changed.set()  # a target's rounds may have stopped with the group
        self.group_replicas = replicas

    def _bfd_resume(self, peers: Sequence[Peer], actual: Sequence[TableEntry]) -> None:
        """A controller that (re)starts, or takes a switch over, finds sessions the target
        runs Up: our entry says Up with our discriminator, and the slot says the remote is
        heard (hb_state UP, the data plane's detection not expired) and Up. Those continue
        Up from what the slot recorded of the remote, rather than starting Down: the
        remote's routing would see a flap for a controller restart (a clean stop ends the
        schedule, so the remote goes Down first and nothing is resumed)."""
        table = self.schema.table(BFD_REQUESTS_TABLE).name
        up = {int(str(e.match.get("index"))): e for e in actual
              if e.table == table and not e.is_default
              and int(str(e.params.get("state", 0))) == bfd_packet.State.UP}
        found = [p for p in peers if p.is_bfd and p.index in up
                 and int(str(up[p.index].params.get("my_disc", 0))) == self.guard.discriminator(p)
                 and self.fabric._bfd_fresh(p.name)]
        if not found:
            return
        names = ["hb_state", "hb_last_rx_us", *BFD_REGISTERS]
        try:
            with self._read_lock:
                cells = self._read_registers(names, [p.index or 0 for p in found])
        except Exception as exc:  # nothing resumed: the sessions start Down
            log.warning("%s: reading BFD slots to resume sessions failed: %s", self.name, exc)
            return
        for i, peer in enumerate(found):
            col = {n: int(cells[n][i]) for n in names}
            if col["hb_state"] != PlaneState.UP or not col["bfd_remote_disc"] \
                    or col["bfd_remote_state"] != bfd_packet.State.UP:
                continue
            self.fabric._bfd_resume(peer.name, RemoteView(
                state=bfd_packet.State.UP, diag=col["bfd_remote_diag"], flags=0,
                detect_mult=col["bfd_remote_mult"], my_disc=col["bfd_remote_disc"],
                desired_min_tx_us=col["bfd_remote_min_tx_us"],
                required_min_rx_us=col["bfd_remote_min_rx_us"], time_us=col["hb_last_rx_us"]))

    def _bfd_group_programmed(self, replicas: int) -> None:
        self.bfd_replicas = replicas
        self._bfd_changed.set()  # a new session may want a shorter tick; a first one rounds

    def _reset_slots(self, indexes: Sequence[int]) -> None:
        if not indexes:
            return
        assert self.registers is not None
        names = [*REGISTERS, *BFD_REGISTERS] if self.bfd else list(REGISTERS)
        self.registers.write_many([(name, i, 0) for i in indexes for name in names])
        for i in indexes:
            self.allocator.mark_reset(i)
        self.fabric._slots_were_reset(self, indexes)

    def _init_sequence(self) -> None:
        """Continue above the newest sequence any peer echoed (controller restart)."""
        indexes = sorted(self.allocator.used)
        seq = self.sequence
        if indexes:
            try:
                cells = self._read_registers(["hb_last_seq", "hb_rx_count"], indexes)
            except Exception as exc:
                log.warning("%s: could not read last sequences: %s", self.name, exc)
                cells = {}
            for last, rx in zip(cells.get("hb_last_seq", []), cells.get("hb_rx_count", []),
                                strict=False):
                if rx and seq_newer(last, seq):
                    seq = last
        self.sequence = seq

    # -- programming peers (API threads) ----------------------------------------------------

    def program_add(self, peers: Sequence[Peer], all_peers: Sequence[Peer]) -> bool:
        """Reset the new peers' slots, insert their entries, then extend the group; False
        when the switch cannot be programmed now (its next setup reconciles them in).
        On failure everything written here is undone and DataPlaneError raised."""
        with self._program_lock:
            if not self.programmable:
                return False
            entities = self._entities(peers)
            inserted: list[TableEntry] = []
            try:
                self._reset_slots([p.index for p in peers if p.index is not None])
                try:
                    self.client.write(make_update(INSERT, e, self.schema) for e in entities)
                    inserted = list(entities)
                except WriteError as exc:
                    bad = exc.failed_indexes | set(exc.not_attempted)
                    inserted = [e for i, e in enumerate(entities) if i not in bad]
                    exists = [entities[e.index] for e in exc.errors
                              if e.code_name == "ALREADY_EXISTS"]
                    if exc.not_attempted or len(exists) != len(exc.errors):
                        raise
                    # a concurrent reconcile got there first: make sure they are ours
                    self.client.write(make_update(MODIFY, e, self.schema) for e in exists)
                    inserted += exists
                self._write_group(all_peers)
            except Exception as exc:
                if inserted:
                    try:
                        self._write(DELETE, inserted, ignore="NOT_FOUND")
                    except Exception:
                        log.exception("%s: rollback failed; reconcile will fix it", self.name)
                        self.request_setup()
                raise DataPlaneError(f"switch {self.name}: {exc}") from exc
            return True

    def program_remove(self, peers: Sequence[Peer], remaining: Sequence[Peer]) -> bool:
        """Shrink the group first (no more requests), then delete the entries. False when
        the switch cannot be programmed now (its next setup reconciles); on failure the
        switch is set up again and DataPlaneError raised."""
        with self._program_lock:
            if not self.programmable:
                return False
            try:
                self._write_group(remaining)
                entities = self._entities(peers, delete=True)
                self._write(DELETE, entities, ignore="NOT_FOUND")
            except Exception as exc:
                self.request_setup()  # reconcile from the inventory
                raise DataPlaneError(f"switch {self.name}: {exc}") from exc
            return True

    def _entities(self, peers: Sequence[Peer], *, delete: bool = False) -> list[TableEntry]:
        """The peers' entries with their next hops as resolved now (a peer without a MAC
        has no request entry); `delete`: every entry a peer may have, by key only."""
        if delete:  # the MAC is no part of the key: any will do for a DELETE
            peers = [p if p.mac else dataclasses.replace(p, mac="00:00:00:00:00:00")
                     for p in peers]
        else:
            peers = [self.fabric._effective(p) for p in peers]
        if not self.bfd:
            peers = [p for p in peers if not p.is_bfd]  # nothing to program them with
        return [e for p in peers for e in peer_entities(
            p, self.config.detect_mult, self.guard,
            None if delete else self.fabric._bfd_control(p.name))]

    def _write_group(self, peers: Sequence[Peer]) -> None:
        """Both fan-out groups as `peers` want them (each written only if it changed)."""
        group = fanout_group(peers)
        if group.replicas or self.group_replicas:
            self._write_one_group(group, self.group_replicas)
        self._group_programmed(len(group.replicas))
        if self.bfd:
            bfd = bfd_group(peers)
            if bfd.replicas or self.bfd_replicas:
                self._write_one_group(bfd, self.bfd_replicas)
            self._bfd_group_programmed(len(bfd.replicas))

    def _write_one_group(self, group: MulticastGroup, programmed: int) -> None:
        if group.replicas:
            kind = MODIFY if programmed else INSERT
            try:
                self.client.write([make_update(kind, group, self.schema)])
            except WriteError as exc:
                code = exc.errors[0].code_name if exc.errors else ""
                if code not in ("NOT_FOUND", "ALREADY_EXISTS"):
                    raise
                other = INSERT if kind == MODIFY else MODIFY
                self.client.write([make_update(other, group, self.schema)])
        elif programmed:
            self._write(DELETE, [MulticastGroup(group.id)], ignore="NOT_FOUND")

    def bfd_farewell(self, names: Sequence[str]) -> None:
        """The sessions `names` (AdminDown now) send one more packet before they go (their
        entries say AdminDown and are due at once: `push_bfd`); this waits, a few ticks at
        most, until the data plane has sent it. Best effort: the removal goes on whatever
        happens here."""
        indexes = self.push_bfd(names)
        if not indexes:
            return
        try:
            deadline = time.monotonic() + max(
                0.5, 4 * self.fabric._bfd_tick_us(self.name) / 1e6)
            waiter = threading.Event()
            while time.monotonic() < deadline:
                with self._read_lock:
                    sent = self._read_registers(["hb_last_tx_us"], indexes)["hb_last_tx_us"]
                if all(sent):
                    return
                waiter.wait(0.005)  # the data plane tells nobody it sent: poll its time
            log.info("%s: AdminDown of deleted sessions %s not seen sent", self.name, names)
        except Exception as exc:
            log.warning("%s: AdminDown of deleted sessions %s: %s", self.name, names, exc)

    def push_bfd(self, names: Sequence[str]) -> list[int]:
        """The sessions `names` changed what they send: one MODIFY of each one's
        `bfd_requests` entry (nothing else is written on a session change), and the
        change goes out at the next tick, not an interval later (`hb_last_tx_us` zeroed:
        due, docs/bfd.md "Transmit" 2): a remote must hear our AdminDown, Down or Poll
        before its detection time, which our slower interval while not Up (RFC 5880
        section 6.8.3) could exceed. Returns the slots written. A switch that cannot be
        programmed now gets the entries at its next setup (reconcile); a failed write
        sets it up again."""
        with self._program_lock:
            if not self.programmable or not self.bfd:
                return []
            entries, indexes = [], []
            for name in names:
                control = self.fabric._bfd_control(name)
                try:
                    peer = self.fabric._effective(self.fabric.get_peer(name))
                except KeyError:
                    continue  # removed meanwhile
                if control is None or peer.mac is None or peer.index is None \
                        or peer.switch != self.name:
                    continue
                entries.append(bfd_request_entry(peer, self.guard, control))
                indexes.append(peer.index)
            if not entries:
                return []
            try:
                self.client.write(make_update(MODIFY, e, self.schema) for e in entries)
                self.bfd_writes += len(entries)
                self._bfd_prompt(indexes)
            except Exception as exc:
                log.warning("%s: updating BFD sessions %s failed (%s); reconciling",
                            self.name, list(names), exc)
                self.request_setup()
                return []
            return indexes

    def _bfd_prompt(self, indexes: Sequence[int]) -> None:
        """These sessions are due at the next tick (docs/bfd.md "Transmit" 2: their
        hb_last_tx_us zeroed; bmv2 gets its next template now)."""
        if not indexes:
            return
        assert self.registers is not None
        with self._read_lock:
            self.registers.write_many([("hb_last_tx_us", i, 0) for i in indexes])
        if not self.target_keeps_time:
            self._bfd_changed.set()

    # -- polling ----------------------------------------------------------------------------

    def _read_registers(self, names: Sequence[str], indexes: Sequence[int],
                        ) -> dict[str, list[int]]:
        """`_read_columns` as lists, for callers that want Python ints."""
        return {n: c.tolist() for n, c in zip(names, self._read_columns(names, indexes),
                                              strict=True)}

    def _read_columns(self, names: Sequence[str], indexes: Sequence[int],
                      ) -> list[npt.NDArray[np.uint64]]:
        """Cells `indexes` of each register in `names`, one array per register
        (RegisterAccess.read_columns: chosen cells or whole arrays, whichever is cheaper)."""
        assert self.registers is not None
        return self.registers.read_columns(names, indexes)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        """The `hb_reason` counters now: reason name -> (packets, bytes)."""
        counters: dict[str, tuple[int, int]] = {}
        for e in self.client.read([CounterRead("hb_reason")]):
            cell = CounterCell.decode(self.schema, e)
            try:
                reason = Reason(cell.index).name
            except ValueError:
                reason = f"reason_{cell.index}"
            counters[reason] = (cell.packets, cell.bytes)
        return counters

    def read_details(self, index: int) -> dict[str, int]:
        """The registers of slot `index` that polls read only every detail interval, read
        now (an API client asks for one peer's details): slot field -> value."""
        fields = self.fabric.engine.config.detail_fields
        with self._read_lock:
            cells = self._read_registers([f"hb_{f}" for f in fields], [index])
        return {f: int(cells[f"hb_{f}"][0]) for f in fields}

    def poll(self) -> bool:
        """Read the verdict registers of every peer (all registers and the hb_reason
        counters every detail interval) and feed the health engine in one batch."""
        started = time.perf_counter()
        members = self.fabric._poll_members(self.name)
        detail = time.monotonic() >= self._next_detail
        fields = SLOT_FIELDS if detail else self.fabric.engine.config.verdict_fields
        # a slot waiting for its reset still holds the previous peer's counts: a read taken
        # before the reset must not become the new peer's first evidence (a false UP). Taken
        # before the read, so a reset during it counts as pending too. Only the primary resets
        # slots (program_add, reconcile); a backup, which never does, reads on as before.
        pending = self.allocator.needs_reset.copy() if self.programmable else set()
        try:
            indexes = members.indexes
            with self._read_lock:
                cells = self._read_columns([f"hb_{f}" for f in fields], indexes) \
                    if indexes else []
            counters = self.read_counters() if detail else None
        except Exception as exc:
            self.info.last_error = f"poll: {exc}"
            if self.fabric.metrics is not None:
                self.fabric.metrics.poll_failed(self.name)
            log.warning("%s: poll failed: %s", self.name, exc)
            return False
        if counters is not None:
            self.counters = counters
            self._next_detail = time.monotonic() + self.config.detail_interval_s
        if indexes:
            self.fabric._observe(self, members, fields,
                                 np.stack(cells).astype(np.uint64, copy=False), pending)
        self.polls += 1
        self.info.last_poll = time.time()
        if self.fabric.metrics is not None:
            self.fabric.metrics.observe_poll(self.name, time.perf_counter() - started)
        return True
