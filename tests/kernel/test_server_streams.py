"""Bounded streams and messages on the real hbmon-kernel-target (issue 10): idle streams
can no longer starve Write and Read.

Before: every StreamChannel held one of 64 gRPC threads for its lifetime and nothing counted
unarbitrated streams, so 64 idle streams blocked every unary RPC. Now --max-streams caps
the streams (the next one ends at once with RESOURCE_EXHAUSTED), a stream that sends no
MasterArbitrationUpdate (P4Runtime spec §5, "the first message on the stream") within
--arbitration-timeout ends with DEADLINE_EXCEEDED, the thread pool has room for unary RPCs
beyond the cap, and --max-message-bytes bounds every message (gRPC: RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from hbmon.dataplane.inventory import PeerGuard, peer_entities
from hbmon.model import Peer
from hbmon.p4 import P4Schema, RegisterCell, RegisterRead
from hbmon.p4.client import INSERT, MODIFY, P4RuntimeClient, make_update
from hbmon_kernel.server import DEFAULT_MAX_MESSAGE_BYTES
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .bpf_lab import Lab
from .server_harness import P4INFO, KernelTarget, RawStream, uint128, wait_for

pytestmark = pytest.mark.netns

PRIMARY_ID = 1000
MAX_STREAMS = 80  # above the old pool of 64 threads, so the backups alone would starve it
BACKUPS = 65  # arbitrated backups: with the primary, 66 streams held for good
IDLE = 34  # streams that never arbitrate: 14 fit under the cap, 20 are refused
ARBITRATION_TIMEOUT = 8.0  # long enough to open all 100 on a loaded 2-core machine


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


class Traffic:
    """The primary writes a register cell and reads it back, over and over, on its own
    thread; every round trip is counted, every failure kept."""

    def __init__(self, client: P4RuntimeClient, schema: P4Schema) -> None:
        self.client, self.schema = client, schema
        self.done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        value = 0
        while not self._stop.is_set():
            value += 1
            try:
                self.client.write([make_update(
                    MODIFY, RegisterCell("hb_rx_count", 3, value), self.schema)])
                cell = self.client.read_all([RegisterRead("hb_rx_count", 3)])[0]
                got = int.from_bytes(cell.register_entry.data.bitstring, "big")
                if got != value:
                    self.errors.append(f"wrote {value}, read {got}")
            except Exception as exc:  # every failure is a finding
                self.errors.append(repr(exc))
            self.done += 1

    def advances(self, by: int = 5, timeout: float = 30.0) -> bool:
        """Whether `by` more round trips complete within `timeout` (they would all hang
        if the streams had taken every server thread)."""
        start = self.done
        return bool(wait_for(lambda: self.done >= start + by, timeout=timeout, pause=0.05))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def backup_arbitrate(stream: RawStream, i: int) -> None:
    """Make stream `i` a backup (spec §5.3). The arbiter takes at most 16 clients per
    (device, role): the first 15 join the primary's default role with ids below its id,
    the others go to roles of 15 without an election id (such a client is always a
    backup)."""
    group = i // 15
    if group == 0:
        stream.arbitrate(election_id=i + 1)
    else:
        stream.arbitrate(election_id=None, role=f"standby{group}")


def ended_with(stream: RawStream) -> grpc.StatusCode | None:
    return stream.ended.code() if stream.ended is not None else None


def test_idle_streams_do_not_starve_writes_and_reads(schema: P4Schema) -> None:
    """100 streams besides the primary's: 65 arbitrated backups (held for good), then 34
    that never arbitrate. The cap admits 80 in all (20 refused with RESOURCE_EXHAUSTED at
    once), the 14 idle ones admitted end with DEADLINE_EXCEEDED after the arbitration
    timeout, the backups stay, and the primary's writes and reads go on throughout."""
    streams: list[RawStream] = []
    with Lab(1) as lab, KernelTarget(lab.ports, extra_args=[
            "--max-streams", str(MAX_STREAMS),
            "--arbitration-timeout", str(ARBITRATION_TIMEOUT)]) as target:
        assert target.address is not None
        primary = P4RuntimeClient(target.address, 1, election_id=PRIMARY_ID, schema=schema,
                                  rpc_timeout=20)
        traffic: Traffic | None = None
        try:
            assert primary.connect(timeout=10), primary.last_error
            primary.set_pipeline(schema)
            traffic = Traffic(primary, schema)
            assert traffic.advances(), traffic.errors

            backups = []
            for i in range(BACKUPS):
                s = RawStream(target.address)
                streams.append(s)
                backups.append(s)
                backup_arbitrate(s, i)
                assert s.next("arbitration", timeout=20) is not None, \
                    (i, ended_with(s), target.output[-2000:])
            assert traffic.advances(), traffic.errors  # 66 streams > the old 64 threads

            opened = time.monotonic()
            idle = [RawStream(target.address) for _ in range(IDLE)]
            streams.extend(idle)
            refused_count = IDLE - (MAX_STREAMS - 1 - BACKUPS)

            def refused() -> list[RawStream]:
                return [s for s in idle
                        if ended_with(s) == grpc.StatusCode.RESOURCE_EXHAUSTED]

            assert wait_for(lambda: len(refused()) >= refused_count, timeout=20), \
                [ended_with(s) for s in idle]
            assert len(refused()) == refused_count
            assert "too many streams" in refused()[0].ended.details()  # type: ignore[union-attr]
            # the cap is full: 80 streams held, and unary RPCs still find a thread
            assert traffic.advances(), traffic.errors
            extra = RawStream(target.address)
            streams.append(extra)
            backup_arbitrate(extra, BACKUPS)
            end = extra.wait_end(20)
            assert end is not None and end.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            admitted_idle = [s for s in idle if s not in refused()]
            assert len(admitted_idle) == MAX_STREAMS - 1 - BACKUPS
            assert wait_for(lambda: all(s.ended is not None for s in admitted_idle),
                            timeout=ARBITRATION_TIMEOUT + 30), \
                [ended_with(s) for s in admitted_idle]
            waited = time.monotonic() - opened
            assert {ended_with(s) for s in admitted_idle} == {grpc.StatusCode.DEADLINE_EXCEEDED}
            assert "no MasterArbitrationUpdate within" in \
                admitted_idle[0].ended.details()  # type: ignore[union-attr]
            # the server's clock starts after the client's: never before the timeout
            assert waited >= ARBITRATION_TIMEOUT
            assert all(s.ended is None for s in backups), [ended_with(s) for s in backups]
            assert primary.primary

            # their places are free again: a new stream is admitted and arbitrated
            late = RawStream(target.address)
            streams.append(late)
            backup_arbitrate(late, BACKUPS + 1)
            assert late.next("arbitration", timeout=20) is not None, ended_with(late)
            assert traffic.advances(), traffic.errors
            assert not traffic.errors
            assert target.running()
        finally:
            if traffic is not None:
                traffic.stop()
            for s in streams:
                s.close()
            primary.close()


def test_max_message_bytes(schema: P4Schema) -> None:
    """A Write above --max-message-bytes is refused by gRPC with RESOURCE_EXHAUSTED before
    the target parses it; one below passes. The target goes on serving."""
    limit = 1 << 20
    with Lab(1) as lab, KernelTarget(lab.ports, extra_args=[
            "--max-message-bytes", str(limit)]) as target:
        assert target.address is not None
        with P4RuntimeClient(target.address, 1, election_id=PRIMARY_ID, schema=schema) as c:
            assert c.connect(timeout=10)
            c.set_pipeline(schema)
            channel = grpc.insecure_channel(target.address, options=[
                ("grpc.max_send_message_length", 64 << 20)])
            try:
                stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)

                def write_cells(n: int) -> p4runtime_pb2.WriteRequest:
                    req = p4runtime_pb2.WriteRequest(device_id=1,
                                                     election_id=uint128(PRIMARY_ID))
                    req.updates.extend(make_update(MODIFY, RegisterCell(
                        "hb_rx_count", i % 65536, i), schema) for i in range(n))
                    return req

                small, big = write_cells(40_000), write_cells(120_000)
                assert small.ByteSize() < limit < big.ByteSize()
                stub.Write(small, timeout=60)
                with pytest.raises(grpc.RpcError) as err:
                    stub.Write(big, timeout=60)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                stub.Write(small, timeout=60)  # still serving
            finally:
                channel.close()
        assert target.running()


def test_default_message_size_fits_the_controller_at_65536_peers(schema: P4Schema) -> None:
    """Pure arithmetic on the controller's own encoders: the largest message it can send at
    65,536 peers (the whole peer table in one Write, 3 entries a peer) fits the default
    --max-message-bytes, and would not fit gRPC's default 4 MiB."""
    req = p4runtime_pb2.WriteRequest(device_id=1, election_id=uint128(PRIMARY_ID))
    guard = PeerGuard(b"\x5e" * 32, "s1", min_ttl=255)  # every param set, as in production
    for i in range(65536):
        peer = Peer(f"p{i}", f"198.18.{i >> 8}.{i & 255 or 1}", 4_000_000_000 - i,
                    f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", 1, index=i)
        req.updates.extend(make_update(INSERT, e, schema) for e in peer_entities(peer, 3, guard))
    size = req.ByteSize()
    assert 4 << 20 < size < DEFAULT_MAX_MESSAGE_BYTES, size
