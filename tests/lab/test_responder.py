"""hbmon responder over real UDP on loopback: protocol, validation, faults, control socket."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hbmon.model import ValidationError
from hbmon.protocol import (
    HEADER_LEN,
    MAGIC,
    SEND_TTL,
    Heartbeat,
    MsgType,
    PeerStatus,
    build_response,
)
from hbmon_responder.responder import (
    ControlClient,
    ControlError,
    Faults,
    Responder,
    apply_changes,
    parse_assignments,
)


class Running:
    def __init__(self, responder: Responder, ctl: ControlClient) -> None:
        self.responder = responder
        self.ctl = ctl
        self.port = responder.addresses[0][1]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)

    def send(self, payload: bytes) -> None:
        self.sock.sendto(payload, ("127.0.0.1", self.port))

    def request(self, peer_id: int = 7, seq: int = 1, tx: int = 123_456_789,
                nonce: int = 0x5EED_0001) -> bytes:
        payload = Heartbeat(MsgType.REQUEST, peer_id, seq, tx, nonce=nonce).pack()
        self.send(payload)
        return payload

    def recv(self) -> tuple[Heartbeat, tuple[str, int]]:
        data, source = self.sock.recvfrom(2048)
        return Heartbeat.unpack(data, expect=MsgType.RESPONSE), source

    def nothing_queued(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(2048)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def wait_stats(self, predicate: str, timeout: float = 5.0) -> dict[str, object]:
        """Poll the control socket until `predicate` (a Python expression over `s`) holds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.ctl.get()["stats"]
            if eval(predicate, {}, {"s": stats}):
                return dict(stats)
            if time.monotonic() > deadline:
                raise AssertionError(f"{predicate} never held: {stats}")
            time.sleep(0.01)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    ctl_path = str(tmp_path / "r.sock")
    responder = Responder(port=0, binds=["127.0.0.1"], ctl_path=ctl_path, seed=1)
    responder.open()
    thread = threading.Thread(target=responder.serve_forever, daemon=True)
    thread.start()
    r = Running(responder, ControlClient(ctl_path))
    try:
        yield r
    finally:
        responder.stop()
        thread.join(timeout=5)
        responder.close()
        r.sock.close()
    assert not thread.is_alive()
    assert not Path(ctl_path).exists(), "control socket left behind"


def test_answers_per_protocol(running: Running) -> None:
    request = running.request(peer_id=0xDEADBEEF, seq=0xFFFFFFFF, tx=2**64 - 2,
                              nonce=0xA5C3_0F1E)
    response, source = running.recv()
    assert source == ("127.0.0.1", running.port)  # from the port requests go to
    assert response.type is MsgType.RESPONSE
    assert (response.peer_id, response.sequence, response.nonce, response.tx_timestamp_us) == (
        0xDEADBEEF, 0xFFFFFFFF, 0xA5C3_0F1E, 2**64 - 2)
    assert (response.status, response.load) == (PeerStatus.HEALTHY, 0)
    # byte-for-byte what docs/protocol.md prescribes (and what the shared codec builds)
    running.send(request)
    raw, _ = running.sock.recvfrom(2048)
    assert raw == build_response(request, PeerStatus.HEALTHY, 0)
    assert len(raw) == HEADER_LEN and raw[3] == MsgType.RESPONSE and raw[26:] == b"\0\0"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x48\x42\x01", "TRUNCATED"),
        (struct.pack("!HBBIIIQBBH", 0x1234, 2, 1, 7, 1, 9, 1, 0, 0, 0), "BAD_MAGIC"),
        # a version-1 header padded to the v2 length (v1's 24 bytes count as TRUNCATED)
        (struct.pack("!HBBIIIQBBH", MAGIC, 1, 1, 7, 1, 9, 1, 0, 0, 0), "BAD_VERSION"),
        (struct.pack("!HBBIIQBBH", MAGIC, 1, 1, 7, 1, 1, 0, 0, 0), "TRUNCATED"),
        (Heartbeat(MsgType.RESPONSE, 7, 1, 1).pack(), "BAD_TYPE"),
        (struct.pack("!HBBIIIQBBH", MAGIC, 2, 9, 7, 1, 9, 1, 0, 0, 0), "BAD_TYPE"),
        (Heartbeat(MsgType.REQUEST, 7, 1, 1).pack() + b"\0", "BAD_LENGTH"),
    ],
)
def test_ignores_and_counts_invalid(running: Running, payload: bytes, reason: str) -> None:
    running.send(payload)
    running.request(seq=99)  # answered after the invalid one was handled (one socket, in order)
    response, _ = running.recv()
    assert response.sequence == 99
    stats = running.wait_stats("s['answered'] == 1")
    assert stats["invalid"] == {reason: 1}
    assert stats["received"] == 2
    assert running.nothing_queued()


def test_status_and_load_change_at_run_time(running: Running) -> None:
    reply = running.ctl.set(status="draining", load=77)
    assert reply["faults"]["status"] == "draining"
    running.request()
    response, _ = running.recv()
    assert (response.status, response.load) == (PeerStatus.DRAINING, 77)
    running.ctl.set(status="degraded", load=255)
    running.request()
    response, _ = running.recv()
    assert (response.status, response.load) == (PeerStatus.DEGRADED, 255)


def test_mute_stops_answering_and_start_resumes(running: Running) -> None:
    running.ctl.set(mute=True)
    for seq in range(1, 6):
        running.request(seq=seq)
    stats = running.wait_stats("s['received'] == 5")
    assert stats["dropped_mute"] == 5 and stats["answered"] == 0
    assert running.nothing_queued()
    running.ctl.set(mute="off")
    running.request(seq=6)
    response, _ = running.recv()
    assert response.sequence == 6


def test_loss_drops_a_share_of_answers(running: Running) -> None:
    running.ctl.set(loss=50)
    n = 400
    for seq in range(n):
        running.request(seq=seq)
    stats = running.wait_stats(f"s['received'] == {n}")
    answered, lost = int(stats["answered"]), int(stats["dropped_loss"])  # type: ignore[call-overload]
    assert answered + lost == n
    assert 100 < answered < 300, stats  # 50 % with a fixed seed: far from both ends
    seen = 0
    while not running.nothing_queued():
        seen += 1
    assert seen == answered  # every answer the responder counted arrived


def test_delay_holds_answers(running: Running) -> None:
    running.ctl.set(delay_ms=300)
    sent = time.monotonic()
    running.request(seq=5)
    stats = running.wait_stats("s['received'] == 1")
    assert stats["answered"] == 0
    response, _ = running.recv()
    assert response.sequence == 5
    assert time.monotonic() - sent >= 0.29


def test_flap_alternates_answering_and_silence(running: Running) -> None:
    responder = running.responder
    faults = Faults(flap=2.0)
    epoch = responder._flap_epoch
    assert responder._answering(faults, epoch + 0.5) is None
    assert responder._answering(faults, epoch + 2.5) == "dropped_flap"
    assert responder._answering(faults, epoch + 4.1) is None
    assert responder._answering(faults, epoch + 7.9) == "dropped_flap"
    # and over the wire: a short period, requests until both phases were seen
    running.ctl.set(flap=0.15)
    deadline = time.monotonic() + 5
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        running.request(seq=seq)
        stats = running.ctl.get()["stats"]
        if stats["answered"] > 0 and stats["dropped_flap"] > 0:
            break
        time.sleep(0.02)  # pacing the probe, not waiting for a result
    assert stats["answered"] > 0 and stats["dropped_flap"] > 0


def test_control_rejects_bad_settings_without_changing_anything(running: Running) -> None:
    before = running.ctl.get()["faults"]
    for bad in ({"loss": 101}, {"loss": "x"}, {"status": "sleepy"}, {"load": 3.5},
                {"mute": "maybe"}, {"bogus": 1}, {"delay_ms": -1}):
        with pytest.raises(ControlError) as info:
            running.ctl.set(**{"load": 10, **bad})
        assert info.value.field == next(iter(bad))
    assert running.ctl.get()["faults"] == before
    with pytest.raises(ControlError, match="unknown op"):
        running.ctl.request({"op": "explode"})


def test_control_protocol_errors(running: Running, tmp_path: Path) -> None:
    with pytest.raises(ControlError) as info:
        running.ctl.request({"nope": 1})
    assert info.value.field == "op"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(running.ctl.path)
        s.sendall(b"{not json\n{\"op\": \"get\"}\n")
        buf = b""
        while buf.count(b"\n") < 2:
            buf += s.recv(4096)
    first, second = buf.splitlines()[:2]
    assert b'"ok": false' in first and b'"field": "json"' in first
    assert b'"ok": true' in second


def test_reset_clears_faults_and_counters(running: Running) -> None:
    running.ctl.set(mute=True, loss=10, status="degraded")
    running.request()
    running.wait_stats("s['received'] == 1")
    reply = running.ctl.reset()
    assert reply["faults"] == Faults().to_dict()
    assert reply["stats"]["received"] == 0
    running.request(seq=3)
    assert running.recv()[0].sequence == 3


def test_apply_changes_is_pure_and_validates() -> None:
    base = Faults()
    new = apply_changes(base, {"loss_pct": "12.5", "delay": 3, "flap_s": "1", "mute": "yes"})
    assert base == Faults()
    assert (new.loss, new.delay_ms, new.flap, new.mute) == (12.5, 3.0, 1.0, True)
    with pytest.raises(ValidationError) as info:
        apply_changes(base, {"load": 256})
    assert info.value.field == "load"
    assert parse_assignments(["loss=5", "status = degraded"]) == {"loss": "5",
                                                                  "status": "degraded"}
    with pytest.raises(ValidationError):
        parse_assignments(["loss"])


IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Python 3.12+ names it; <linux/in.h> value


def _recv_ttl(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and the IPv4 TTL it arrived with (IP_RECVTTL ancillary data)."""
    data, ancdata, _flags, _source = sock.recvmsg(2048, socket.CMSG_SPACE(4))
    ttls = [int.from_bytes(cdata[:4], sys.byteorder) for level, ctype, cdata in ancdata
            if level == socket.IPPROTO_IP and ctype == socket.IP_TTL]
    assert len(ttls) == 1, ancdata
    return data, ttls[0]


@pytest.mark.parametrize(("bind", "batched"), [("127.0.0.1", True), ("127.0.0.1", False),
                                               ("0.0.0.0", True), ("0.0.0.0", False)])
def test_v2_answer_echoes_nonce_with_ttl_255(bind: str, batched: bool) -> None:
    """docs/protocol.md (version 2) responder rule on every send path (sendmmsg with and
    without IP_PKTINFO, sendmsg): the nonce comes back unchanged in every answer, and the
    answer leaves with IPv4 TTL 255 (RFC 5082), which loopback delivers undecremented."""
    responder = Responder(port=0, binds=[bind], batched=batched)
    responder.open()
    thread = threading.Thread(target=responder.serve_forever, daemon=True)
    thread.start()
    port = responder.addresses[0][1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        try:
            for seq, nonce in ((1, 0xFFFF_FFFF), (2, 0), (3, 0x1234_5678)):
                request = Heartbeat(MsgType.REQUEST, 9, seq, 77, nonce=nonce).pack()
                sock.sendto(request, ("127.0.0.1", port))
                data, ttl = _recv_ttl(sock)
                assert data == build_response(request)
                assert Heartbeat.unpack(data).nonce == nonce
                assert ttl == SEND_TTL == 255
        finally:
            responder.stop()
            thread.join(timeout=5)
            responder.close()


def test_bind_conflict_is_a_clear_error(running: Running) -> None:
    other = Responder(port=running.port, binds=["127.0.0.1"])
    with pytest.raises(OSError, match=f"cannot bind UDP 127.0.0.1:{running.port}"):
        other.open()
