"""Judging observations: one target against the model, and bmv2 against the kernel target.

Every function returns a list of human-readable differences (empty = agreement), each naming
the step, the register or reason, the index and both values.
"""

from __future__ import annotations

import struct
from typing import Any

from hbmon.protocol import (
    BFD_REGISTERS,
    HEADER_LEN,
    IPV4_TOTAL_LEN,
    REASON_COUNT,
    REGISTERS,
    SEND_TTL,
    UDP_LEN,
    PlaneState,
    Reason,
    request_nonce,
)

from .model import (
    BFD_DIGEST_KEYS,
    EXACT_REGISTERS,
    RESPONSE_REASONS,
    TIME_REGISTERS,
    BfdDigest,
    Digest,
    Expected,
    Model,
    Span,
    ip_int,
    template_ok,
)
from .player import Observation, StepObs

# Byte counts of the reasons counted for PacketOuts are not part of the contract and differ:
# bmv2 counts standard_metadata.packet_length, fixed at ingress, so the 4-byte packet_out
# header the template arrived with is in every replica's count (74 per request); the kernel
# target counts the frame that leaves (70). Their packet counts are compared like any other.
FANOUT_REASONS = frozenset({Reason.REQUEST_SENT, Reason.REQUEST_NO_PEER, Reason.BAD_TEMPLATE,
                            Reason.BFD_SENT})  # a BFD control packet: 70 bytes vs 66

FRAME_LEN = 14 + 20 + 8 + HEADER_LEN

# Host and target clocks both tick in real microseconds, but are read at slightly different
# moments and with different granularity: bounds derived from the host clock get this slack.
SLACK_US = 2_000
SLACK_RATE = 0.005  # and 0.5 % of the window (a slewing system clock, bmv2's clock source)


def slack(window: int) -> int:
    return SLACK_US + int(abs(window) * SLACK_RATE)


def run_model(trace: dict[str, Any], obs: Observation) -> list[Expected]:
    """What each observed step must have left behind, given the target's own tx times."""
    model = Model(trace)
    peers = {p["name"]: p for p in trace["peers"]}
    out: list[Expected] = []
    for step, so in zip(trace["steps"], obs.steps, strict=False):
        if so.problem:
            break
        digests: list[Digest] = []
        reasons = []
        op = step["op"]
        if op == "round":
            model.fan_out(step["seq"],
                          {peers[n].get("index"): r.tx_us for n, r in so.requests.items()},
                          digests)
            for sent in so.sent:
                assert sent.echo_round is not None and sent.echo_peer is not None
                rnd = obs.rounds[sent.echo_round]
                tx = rnd.requests[sent.echo_peer].tx_us
                lo = sent.t_sent - rnd.t_cap
                hi = (sent.t_counted or so.t_done) - rnd.t_po
                arrival = Span(tx + max(0, lo - slack(lo)), tx + hi + slack(hi))
                reasons.append(model.response(sent.frame, arrival, sent.echoed, digests))
        elif op == "bfd":
            for sent in so.sent:
                # no echoed time: the arrival is bounded by the last round's tx times and
                # the host time between that round and this packet's count
                assert sent.echo_round is not None
                rnd = obs.rounds[sent.echo_round]
                txs = [r.tx_us for r in rnd.requests.values()]
                lo = sent.t_sent - rnd.t_cap
                hi = (sent.t_counted or so.t_done) - rnd.t_po
                arrival = Span(max(txs) + max(0, lo - slack(lo)), min(txs) + hi + slack(hi))
                reasons.append(model.bfd(sent.frame, sent.port, arrival))
        elif op == "bfd_round":
            # the replicas left between the PacketOut and the last capture: in target time,
            # after the anchor round's requests by at least the host time between them
            assert so.anchor is not None
            rnd = obs.rounds[so.anchor]
            txs = [r.tx_us for r in rnd.requests.values()]
            lo, hi = so.t_po - rnd.t_cap, so.t_cap - rnd.t_po
            model.bfd_fan_out(Span(max(txs) + max(0, lo - slack(lo)), min(txs) + hi + slack(hi)),
                              digests)
        elif op == "reset_slot":
            model.reset_slot(peers[step["peer"]]["index"])
        elif op == "delete":
            model.delete_peer(peers[step["peer"]], [step["table"]])
        elif op == "insert":
            model.insert_peer(peers[step["peer"]], [step["table"]])
        elif op == "bad_templates":
            for frame in so.templates:
                if template_ok(frame):
                    raise AssertionError(f"step {so.index}: a 'bad' template is valid: "
                                         f"{frame.hex()}")
                model.bad_template()
        else:
            raise ValueError(f"unknown op {op!r}")
        out.append(model.expected(digests, reasons))
    return out


def _where(so: StepObs) -> str:
    return f"step {so.index} ({so.label})"


def check_requests(trace: dict[str, Any], obs: Observation) -> list[str]:
    """Every captured request is the template rewritten for its peer (docs/dataplane.md)."""
    diffs: list[str] = []
    mon = trace["monitor"]
    peers = {p["name"]: p for p in trace["peers"]}
    for so in obs.steps:
        for f in so.unexpected:
            diffs.append(f"{obs.target} {_where(so)}: unexpected frame "
                         f"{f[:FRAME_LEN].hex()}")
        for port, _, seen in so.direct:
            if not seen:
                diffs.append(f"{obs.target} {_where(so)}: direct packet-out not seen on "
                             f"port {port}")
        if so.op != "round" or so.problem:
            continue
        for name, req in so.requests.items():
            p = peers[name]
            f = req.frame
            want = {
                "length": FRAME_LEN, "port": p["port"],
                "dst_mac": p["mac"].replace(":", ""), "src_mac": mon["mac"].replace(":", ""),
                "dst_ip": ip_int(p["ip"]), "src_ip": ip_int(mon["ip"]),
                "ip_total_len": IPV4_TOTAL_LEN, "udp": (9191, 9190, UDP_LEN, 0),
                "ip_csum_ok": True, "ttl": SEND_TTL,  # the template's, kept
                "peer_id": p["peer_id"], "type": 1, "version": 2,
                "nonce": request_nonce(p["key"], req.seq),  # this peer's, this round's
                "tail": b"\0\0\0\0",
            }
            got = {
                "length": len(f), "port": req.port,
                "dst_mac": f[0:6].hex(), "src_mac": f[6:12].hex(),
                "dst_ip": int.from_bytes(f[30:34], "big"),
                "src_ip": int.from_bytes(f[26:30], "big"),
                "ip_total_len": struct.unpack_from("!H", f, 16)[0],
                "udp": struct.unpack_from("!HHHH", f, 34), "ip_csum_ok": _csum_ok(f[14:34]),
                "ttl": f[22], "peer_id": struct.unpack_from("!I", f, 46)[0], "type": f[45],
                "version": f[44], "nonce": struct.unpack_from("!I", f, 54)[0],
                "tail": f[66:70],
            }
            for k, v in want.items():
                if got[k] != v:
                    diffs.append(f"{obs.target} {_where(so)}: request to {name}: {k} "
                                 f"{got[k]!r}, want {v!r}")
    return diffs


def _csum_ok(header: bytes) -> bool:
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def check_model(trace: dict[str, Any], obs: Observation,
                expected: list[Expected]) -> list[str]:
    """One target against the contract as model.py reads it."""
    diffs: list[str] = []
    t = obs.target
    if obs.problem:
        diffs.append(f"{t}: the run stopped: {obs.problem}")
    for so, exp in zip(obs.steps, expected, strict=False):
        w = f"{t} {_where(so)}"
        for r in range(REASON_COUNT):
            if so.reasons[r][0] != exp.reasons[r]:
                diffs.append(f"{w}: hb_reason[{_rname(r)}] packets {so.reasons[r][0]}, "
                             f"model {exp.reasons[r]}")
        for r, want in exp.reason_bytes.items():
            if so.reasons[r][1] != want:
                diffs.append(f"{w}: hb_reason[{_rname(r)}] bytes {so.reasons[r][1]}, "
                             f"model {want} (the frames' lengths)")
        for index, slot in exp.slots.items():
            cells = {n: so.cells[n][index] for n in REGISTERS}
            for n in EXACT_REGISTERS:
                if n == "hb_last_tx_us" and slot.tx_time is not None:  # a BFD slot's
                    if cells[n] not in slot.tx_time:
                        diffs.append(f"{w}: {n}[{index}] = {cells[n]}, model {slot.tx_time}")
                elif cells[n] != slot.exact[n]:
                    diffs.append(f"{w}: {n}[{index}] = {cells[n]}, model {slot.exact[n]}")
            for n in TIME_REGISTERS:
                if cells[n] not in slot.time[n]:
                    diffs.append(f"{w}: {n}[{index}] = {cells[n]}, model {slot.time[n]}")
            for n in BFD_REGISTERS:
                if so.cells[n][index] != slot.bfd[n]:
                    diffs.append(f"{w}: {n}[{index}] = {so.cells[n][index]}, "
                                 f"model {slot.bfd[n]}")
            if slot.last_echoed is not None:
                want_rtt = 0 if slot.last_future else cells["hb_last_rx_us"] - slot.last_echoed
                if cells["hb_rtt_last_us"] != want_rtt:
                    diffs.append(f"{w}: hb_rtt_last_us[{index}] = {cells['hb_rtt_last_us']}, "
                                 f"but hb_last_rx_us - echoed = {want_rtt}")
            diffs += _rtt_order(w, index, cells)
        diffs += _check_digests(w, so, exp)
        diffs += _check_bfd_control(w, trace, so, exp)
    if not obs.problem and obs.full:
        diffs += _check_full(obs)
    return diffs


def _check_bfd_control(w: str, trace: dict[str, Any], so: StepObs, exp: Expected,
                       ) -> list[str]:
    """Each BFD control packet is the template rewritten for its session (docs/bfd.md
    "Transmit" 3) with the payload the model says (your_disc learned, F when owed)."""
    mon = trace["monitor"]
    sessions = {s["index"]: s for s in trace.get("bfd_sessions", [])}
    diffs = []
    got_names = set(so.bfd_control)
    want_names = {sessions[i]["name"] for i in exp.bfd_control}
    if got_names != want_names:
        diffs.append(f"{w}: BFD control packets to {sorted(got_names)}, model "
                     f"{sorted(want_names)}")
    for index, payload in exp.bfd_control.items():
        s = sessions[index]
        f = so.bfd_control.get(s["name"])
        if f is None:
            continue
        want = {"dst_mac": s["mac"].replace(":", ""), "src_mac": mon["mac"].replace(":", ""),
                "dst_ip": ip_int(s["ip"]), "src_ip": ip_int(mon["ip"]), "ttl": SEND_TTL,
                "ip_total_len": 52, "ip_csum_ok": True,
                "udp": (49152 + index % 16384, 3784, 32, 0), "payload": payload.hex()}
        got = {"dst_mac": f[0:6].hex(), "src_mac": f[6:12].hex(),
               "dst_ip": int.from_bytes(f[30:34], "big"),
               "src_ip": int.from_bytes(f[26:30], "big"), "ttl": f[22],
               "ip_total_len": struct.unpack_from("!H", f, 16)[0],
               "ip_csum_ok": _csum_ok(f[14:34]), "udp": struct.unpack_from("!HHHH", f, 34),
               "payload": f[42:].hex()}
        for k, v in want.items():
            if got[k] != v:
                diffs.append(f"{w}: BFD control packet to {s['name']}: {k} {got[k]!r}, "
                             f"want {v!r}")
    return diffs


def _rname(r: int) -> str:
    try:
        return Reason(r).name
    except ValueError:
        return str(r)


def _rtt_order(w: str, index: int, c: dict[str, int]) -> list[str]:
    if c["hb_rx_count"] == 0:
        return []
    lo, mid, hi = c["hb_rtt_min_us"], c["hb_rtt_ewma_us"], c["hb_rtt_max_us"]
    if not lo <= mid <= hi or not lo <= c["hb_rtt_last_us"] <= hi:
        return [f"{w}: RTT order broken at [{index}]: min {lo}, ewma {mid}, max {hi}, "
                f"last {c['hb_rtt_last_us']}"]
    return []


def _is_bfd(row: dict[str, int]) -> bool:
    """A bfd_event_t row (the player keeps the rows of both digests in one list)."""
    return "my_disc" in row


def _check_bfd_digests(w: str, so: StepObs, exp: Expected) -> list[str]:
    got = sorted((d for d in so.digests if _is_bfd(d)),
                 key=lambda d: (tuple(d[k] for k in BFD_DIGEST_KEYS), d["time_us"]))
    want: list[BfdDigest] = sorted(exp.bfd_digests, key=lambda d: (d.key(), d.time.lo))
    got_keys = [tuple(d[k] for k in BFD_DIGEST_KEYS) for d in got]
    if got_keys != [d.key() for d in want]:
        return [f"{w}: bfd_event_t digests {got_keys}, model {[d.key() for d in want]}"]
    return [f"{w}: bfd_event_t {e.key()} time_us {g['time_us']}, model {e.time}"
            for g, e in zip(got, want, strict=True) if g["time_us"] not in e.time]


def _check_digests(w: str, so: StepObs, exp: Expected) -> list[str]:
    diffs = _check_bfd_digests(w, so, exp)
    got = sorted((d for d in so.digests if not _is_bfd(d)),
                 key=lambda d: (d["index"], d["state"], d["last_seq"], d["time_us"]))
    want = sorted(exp.digests, key=lambda d: (d.key(), d.time.lo))
    got_keys = [(d["index"], d["state"], d["last_seq"]) for d in got]
    want_keys = [d.key() for d in want]
    if got_keys != want_keys:
        return [*diffs, f"{w}: digests (index, state, last_seq) {got_keys}, "
                        f"model {want_keys}"]
    for g, e in zip(got, want, strict=True):
        if g["time_us"] not in e.time:
            diffs.append(f"{w}: digest {e.key()} time_us {g['time_us']}, model {e.time}")
        if e.is_last_rx and g["time_us"] != so.cells["hb_last_rx_us"][e.index]:
            diffs.append(f"{w}: UP digest {e.key()} time_us {g['time_us']} != hb_last_rx_us "
                         f"{so.cells['hb_last_rx_us'][e.index]}")
    return diffs


def _check_full(obs: Observation) -> list[str]:
    """After the trace: cells of unused indexes are 0, used ones what the last step read."""
    diffs: list[str] = []
    last = obs.steps[-1].cells
    used = set(obs.used_indexes)
    for n, cells in obs.full.items():
        stray = [i for i, v in enumerate(cells) if v and i not in used]
        if stray:
            diffs.append(f"{obs.target}: {n} non-zero at unused indexes {stray[:8]}")
        for i in used:
            if cells[i] != last[n][i]:
                diffs.append(f"{obs.target}: {n}[{i}] whole-array read {cells[i]}, "
                             f"cell read {last[n][i]}")
    return diffs


def compare_targets(a: Observation, b: Observation) -> list[str]:
    """bmv2 against the kernel target, directly: what must be equal is equal, and timestamps
    have the same shape (zero or not, rx before or after tx, RTT min <= ewma <= max)."""
    diffs: list[str] = []
    for obs in (a, b):
        if obs.problem:
            diffs.append(f"{obs.target}: the run stopped: {obs.problem}")
    ab = f"{a.target} vs {b.target}"
    for sa, sb in zip(a.steps, b.steps, strict=False):
        w = f"{ab} {_where(sa)}"
        if sa.problem or sb.problem:
            break
        for r in range(REASON_COUNT):
            pa, ba = sa.reasons[r]
            pb, bb = sb.reasons[r]
            if pa != pb or (ba != bb and r not in FANOUT_REASONS):
                diffs.append(f"{w}: hb_reason[{_rname(r)}] (packets, bytes) {sa.reasons[r]} "
                             f"vs {sb.reasons[r]}")
        for index in a.used_indexes:
            ca = {n: sa.cells[n][index] for n in REGISTERS}
            cb = {n: sb.cells[n][index] for n in REGISTERS}
            for n in (*EXACT_REGISTERS, *BFD_REGISTERS):
                va, vb = sa.cells[n][index], sb.cells[n][index]
                if n != "hb_last_tx_us" and va != vb:
                    diffs.append(f"{w}: {n}[{index}] {va} vs {vb}")
            for n in (*TIME_REGISTERS, "hb_last_tx_us"):
                if (ca[n] == 0) != (cb[n] == 0):
                    diffs.append(f"{w}: {n}[{index}] zero in one only: {ca[n]} vs {cb[n]}")
            sign_a = _sign(ca["hb_last_rx_us"] - ca["hb_last_tx_us"])
            sign_b = _sign(cb["hb_last_rx_us"] - cb["hb_last_tx_us"])
            if sign_a != sign_b:
                diffs.append(f"{w}: [{index}] last rx vs last tx ordered differently "
                             f"({sign_a} vs {sign_b})")
        ka = sorted((d["index"], d["state"], d["last_seq"]) for d in sa.digests
                    if not _is_bfd(d))
        kb = sorted((d["index"], d["state"], d["last_seq"]) for d in sb.digests
                    if not _is_bfd(d))
        if ka != kb:
            diffs.append(f"{w}: digests {ka} vs {kb}")
        fa = sorted(tuple(d[k] for k in BFD_DIGEST_KEYS) for d in sa.digests if _is_bfd(d))
        fb = sorted(tuple(d[k] for k in BFD_DIGEST_KEYS) for d in sb.digests if _is_bfd(d))
        if fa != fb:
            diffs.append(f"{w}: bfd_event_t digests {fa} vs {fb}")
        if sa.bfd_control != sb.bfd_control:
            diffs.append(f"{w}: BFD control packets differ: "
                         f"{ {k: v.hex() for k, v in sa.bfd_control.items()} } vs "
                         f"{ {k: v.hex() for k, v in sb.bfd_control.items()} }")
        for name in sorted(set(sa.requests) | set(sb.requests)):
            ra, rb = sa.requests.get(name), sb.requests.get(name)
            if ra is None or rb is None:
                diffs.append(f"{w}: request to {name} from one target only")
            elif _no_time(ra.frame) != _no_time(rb.frame) or ra.port != rb.port:
                diffs.append(f"{w}: request to {name} differs beyond tx_timestamp_us: "
                             f"{_no_time(ra.frame).hex()} vs {_no_time(rb.frame).hex()}")
    if len(a.steps) != len(b.steps):
        diffs.append(f"{ab}: {len(a.steps)} vs {len(b.steps)} steps played")
    if a.full and b.full:
        for n in (*REGISTERS, *BFD_REGISTERS):
            for i, (va, vb) in enumerate(zip(a.full[n], b.full[n], strict=True)):
                exact = (n in EXACT_REGISTERS or n in BFD_REGISTERS) and n != "hb_last_tx_us"
                same = (va == vb) if exact else (va == 0) == (vb == 0)
                if not same:
                    diffs.append(f"{ab} whole arrays: {n}[{i}] {va} vs {vb}")
    return diffs


def _sign(v: int) -> str:
    return "rx after tx" if v > 0 else "rx before tx" if v < 0 else "equal"


def _no_time(frame: bytes) -> bytes:
    return frame[:58] + b"\0" * 8 + frame[66:]  # tx_timestamp_us: hb offset 16


def summary(obs: Observation) -> dict[str, Any]:
    """Counts that say the trace did what it is for (used in the test's messages)."""
    last = obs.steps[-1] if obs.steps else None
    return {
        "target": obs.target,
        "steps": len(obs.steps),
        "reasons": {_rname(r): last.reasons[r][0] for r in range(15)} if last else {},
        "digests": sum(len(s.digests) for s in obs.steps),
        "downs": sum(1 for s in obs.steps for d in s.digests
                     if not _is_bfd(d) and d["state"] == PlaneState.DOWN),
    }


__all__ = ["RESPONSE_REASONS", "check_model", "check_requests", "compare_targets",
           "run_model", "summary"]
