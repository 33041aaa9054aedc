#!/usr/bin/env python3
"""The differential test's recorded trace: a script of steps, generated deterministically.

    python tests/diff/trace.py            # rewrite tests/diff/trace.json
    python tests/diff/trace.py --check    # exit 1 if trace.json differs from this generator

Why a script and not a pcap: a response must echo the `tx_timestamp_us` the target itself
wrote into the request it answers, and that is only known once the target has sent it. So
each step says what to do ("send template round r3", "peer A answers r3 with status 1, load
37, its echoed time moved 40 ms back", "peer C answers r1 again") and the player builds the
bytes from the requests each target actually emitted. Everything else in a frame is fixed by
this file; nothing is random.

Every packet carries `expect` (the reason the contract gives it, or ORDINARY for traffic that
is not a heartbeat) and `why`. `model.py` derives the same reasons from the bytes, and a test
fails when the two disagree, so the script's intent is checked too.

Peers (`index` = the slot in every register, `dm` = detect_mult, `key` = nonce key,
`min_ttl` = GTSM floor, protocol v2). A's forgeries: future sequences (+1, the lockout of
issue 11 with last + 2^30 and 2^31 - 1), wrong nonces, TTL below 255; its real answer after
them is still recorded. F: the far-ahead answer that locked v1 out, then only forgeries
while it goes DOWN, then a real answer. G has GTSM off: TTL 1 is fine.

| name | index | port | peer_id | dm | min_ttl | role |
| --- | --- | --- | --- | --- | --- | --- |
| A | 0 | 1 | 1001 | 3 | 255 | answers every round; status, load, RTT vary; forgeries |
| B | 7 | 2 | 1002 | 2 | 0 | stops answering long enough for DOWN, then answers again |
| C | 300 | 1 | 1003 | 3 | 255 | duplicates, old/reordered, a future echoed time, TTL 254 |
| D | 65535 | 2 | 0xFFFFFFFF | 1 | 0 | silent from the start (UNKNOWN -> DOWN), answers at the end |
| E | 12 | 1 | 1005 | 0 | 0 | detection off: silent for a long time, never DOWN |
| F | 4096 | 2 | 1006 | 3 | 0 | serial edges, the v1 lockout answer, DOWN amid forgeries |
| G | 2 | 2 | 1007 | 3 | 0 | slot reset in the middle, then answers an old round; TTL 1 |
| H | 1 | 1 | 1008 | 255 | 0 | its `peers` entry removed (answers SPOOFED), then restored |

BFD sessions (docs/bfd.md): S1 (index 20, port 1) and S2 (index 21, port 2), each with
`bfd_sessions`, `bfd_peers` and `bfd_requests` entries and a replica in group 2 (plus one
replica, port 2 instance 22, without `bfd_requests`: REQUEST_NO_PEER). One `bfd` step after
round r3 sends their remotes' control packets: found by (source, port) while your_disc is
0, then by our discriminator; a digest only on a change, F, or a slot not UP; then every
discard reason of checks 1-6 in order. Two `bfd_round` steps then send the group-2 template
(tick 0: one round): every session is due on every round (tx_interval_us 0: due-gating's
random jitter is the PTF suite's business), S1's first packet carries F (its remote polled)
and the second not, S2 (detection time 1 µs, UP since its remote's packet) goes DOWN at the
first round, once, its remote's discriminator zeroed (RFC 5880 section 6.8.1): both rounds'
packets to S2 carry your_disc 0.

Group 1 also holds a replica (port 1, instance 9) for an index without `peer_requests`:
every round counts one REQUEST_NO_PEER. Round sequences walk across 2^32 (0 .. 8, then
0x40000000, 0x80000000, 0xC0000000, 0xFFFFFFFF, 0, 1) so every answering peer crosses the wrap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TRACE_PATH = Path(__file__).with_name("trace.json")
FORMAT_VERSION = 3  # 2: protocol v2 (peers' nonce key and min_ttl; nonce / ttl in packets);
# 3: BFD sessions and `bfd` steps

Packet = dict[str, Any]
Step = dict[str, Any]

MONITOR = {"ip": "198.18.0.1", "mac": "02:dd:00:00:00:01"}
STRANGER_IP = "198.18.9.9"  # an address no peer has
UNKNOWN_ID = 4242  # a peer_id nobody registered

PEERS: list[dict[str, Any]] = [
    {"name": "A", "index": 0, "port": 1, "ip": "198.18.1.1", "peer_id": 1001, "dm": 3},
    {"name": "B", "index": 7, "port": 2, "ip": "198.18.2.2", "peer_id": 1002, "dm": 2},
    {"name": "C", "index": 300, "port": 1, "ip": "198.18.1.3", "peer_id": 1003, "dm": 3},
    {"name": "D", "index": 65535, "port": 2, "ip": "198.18.2.4", "peer_id": 0xFFFFFFFF,
     "dm": 1},
    {"name": "E", "index": 12, "port": 1, "ip": "198.18.1.5", "peer_id": 1005, "dm": 0},
    {"name": "F", "index": 4096, "port": 2, "ip": "198.18.2.6", "peer_id": 1006, "dm": 3},
    {"name": "G", "index": 2, "port": 2, "ip": "198.18.2.7", "peer_id": 1007, "dm": 3},
    {"name": "H", "index": 1, "port": 1, "ip": "198.18.1.8", "peer_id": 1008, "dm": 255},
]
GTSM = {"A", "C"}  # single-hop GTSM (min_ttl 255) on these; off (0) on the others
for _n, _p in enumerate(PEERS, start=1):
    _p["mac"] = f"02:cc:00:00:00:{_n:02x}"
    _p["key"] = (0x9E3779B9 * _n) & 0xFFFFFFFF  # a nonce key per peer (any distinct values)
    _p["min_ttl"] = 255 if _p["name"] in GTSM else 0

EXTRA_REPLICAS = [{"port": 1, "instance": 9}]  # no peer_requests entry: REQUEST_NO_PEER

# BFD sessions: `my_disc` is our discriminator (the bfd_sessions key), `remote` the remote's.
# `tx`: the session's bfd_control params besides the addresses (docs/bfd.md "P4Info").
BFD_SESSIONS: list[dict[str, Any]] = [
    {"name": "S1", "index": 20, "port": 1, "ip": "198.18.1.20", "mac": "02:cc:00:00:01:14",
     "my_disc": 0x5EED0015, "remote": 0x0BFD0001,
     "tx": {"state": 3, "diag": 0, "flags": 0, "detect_mult": 3,
            "desired_min_tx_us": 300_000, "required_min_rx_us": 250_000,
            "tx_interval_us": 0, "detect_time_us": 0}},
    {"name": "S2", "index": 21, "port": 2, "ip": "198.18.2.21", "mac": "02:cc:00:00:01:15",
     "my_disc": 0xFFFFFFFF, "remote": 0x0BFD0002,
     "tx": {"state": 1, "diag": 1, "flags": 0x20, "detect_mult": 4,
            "desired_min_tx_us": 1_000_000, "required_min_rx_us": 1_000_000,
            "tx_interval_us": 0, "detect_time_us": 1}},
]
BFD_GROUP = 2
BFD_EXTRA_REPLICAS = [{"port": 2, "instance": 22}]  # no bfd_requests entry: REQUEST_NO_PEER
UNKNOWN_DISC = 0x0BADD15C  # a discriminator no session has


def ans(peer: str, rnd: str, expect: str = "RESPONSE_RECORDED", *, why: str = "",
        **fields: Any) -> Packet:
    """`peer` answers its request of round `rnd` (echoing that request's seq and tx time)."""
    pkt: Packet = {"from": peer, "echo": rnd, "expect": expect}
    pkt.update(fields)
    if why:
        pkt["why"] = why
    return pkt


def bfd(session: str, expect: str = "BFD_RECORDED", *, why: str = "", **fields: Any) -> Packet:
    """The remote of `session` sends a control packet: `bfd` holds the fields that differ
    from Down / its discriminator / your_disc 0 / mult 3 / 1 s timers; `frame` may change
    the IPv4/UDP framing (`ttl`, `udp_len`, `truncate` = bytes kept after UDP)."""
    pkt: Packet = {"from": session, "expect": expect}
    pkt.update(fields)
    if why:
        pkt["why"] = why
    return pkt


def ordinary(peer: str, rnd: str, why: str, **frame: Any) -> Packet:
    """A frame that is not a heartbeat (parser says so): no reason, no slot touched."""
    return {"from": peer, "echo": rnd, "frame": frame, "expect": "ORDINARY", "why": why}


def rnd(label: str, seq: int, packets: list[Packet], why: str = "") -> Step:
    step: Step = {"op": "round", "round": label, "seq": seq, "packets": packets}
    if why:
        step["why"] = why
    return step


# RTT variations of the steady peer: its echoed time is moved back by these many µs, so the
# samples are ordered by the script rather than by the machine's jitter.
A_OFFSETS = [0, 40_000, 10_000, 5_000, 80_000, 0, 20_000, 60_000, 1_000, 30_000, 15_000,
             70_000, 2_000, 50_000, 25_000]
A_STATUS = [(0, 10), (1, 37), (2, 255), (0, 0), (1, 99), (0, 100), (7, 5), (0, 1), (2, 50),
            (0, 33), (1, 66), (0, 77), (0, 88), (0, 12), (1, 3)]


def a_answer(i: int, label: str, **extra: Any) -> Packet:
    status, load = A_STATUS[i]
    return ans("A", label, status=status, load=load, tx={"offset_us": A_OFFSETS[i]}, **extra)


def build() -> dict[str, Any]:
    steps: list[Step] = []

    steps.append(rnd("r0", 0, [
        a_answer(0, "r0", why="first response of a slot: fresh although its sequence is 0"),
        ans("B", "r0", load=1), ans("C", "r0", load=2), ans("F", "r0", load=3),
        ans("G", "r0", load=4), ans("H", "r0", load=5),
    ], why="first round: six peers come UP; D and E stay silent"))

    steps.append(rnd("r1", 1, [
        a_answer(1, "r1"),
        ans("B", "r1", load=1, tx={"offset_us": 3_000}),
        ans("C", "r1", load=2, tx={"offset_us": 7_000}),
        ans("C", "r1", "DUPLICATE", why="the same answer twice"),
        ans("F", "r1", load=3), ans("G", "r1", load=4), ans("H", "r1", load=5),
    ], why="D (detect_mult 1) had one unanswered request: DOWN from UNKNOWN"))

    malformed = [
        ans("A", "r2", "TRUNCATED", frame={"truncate_hb": 27}, why="one byte short"),
        ans("A", "r2", "TRUNCATED", frame={"truncate_hb": 24}, why="a version 1 header's size"),
        ans("A", "r2", "TRUNCATED", frame={"truncate_hb": 0}, why="UDP header only"),
        ans("A", "r2", "TRUNCATED", hb={"magic": 0x4141}, frame={"truncate_hb": 10},
            why="truncated wins over a bad magic"),
        ans("A", "r2", "BAD_MAGIC", hb={"magic": 0x4843}),
        ans("A", "r2", "BAD_MAGIC", hb={"magic": 0x0000, "version": 9},
            why="magic is checked before version"),
        ans("A", "r2", "BAD_VERSION", hb={"version": 0}),
        ans("A", "r2", "BAD_VERSION", hb={"version": 1}, why="a version 1 answer"),
        ans("A", "r2", "BAD_VERSION", hb={"version": 3, "type": 1},
            why="version is checked before type"),
        ans("A", "r2", "BAD_TYPE", hb={"type": 1}, why="a REQUEST sent to the monitor"),
        ans("A", "r2", "BAD_TYPE", hb={"type": 3}),
        ans("A", "r2", "BAD_TYPE", hb={"type": 0}, frame={"extra": 4},
            why="type is checked before the lengths"),
        ans("A", "r2", "BAD_LENGTH", frame={"extra": 4}, why="UDP length 40"),
        ans("A", "r2", "BAD_LENGTH", frame={"extra": 4, "udp_len": 36},
            why="UDP length 36 but IPv4 total length 60"),
        ans("A", "r2", "BAD_LENGTH", frame={"udp_len": 35}, why="UDP length field 35"),
        ans("A", "r2", "BAD_LENGTH", frame={"ip_total_len": 57},
            why="IPv4 total length field 57"),
        ans("A", "r2", "BAD_LENGTH", frame={"udp_len": 32, "ip_total_len": 52},
            why="version 1 lengths"),
        ans("A", "r2", "BAD_LENGTH", peer_id=UNKNOWN_ID, frame={"extra": 8},
            why="lengths are checked before the peer lookup"),
    ]
    steps.append(rnd("r2", 2, [
        *malformed,
        a_answer(2, "r2", frame={"trailer": 8},
                 why="Ethernet trailer after a correct IPv4 length: still a valid response"),
        ans("C", "r2", load=2),
        ans("C", "r1", "OLD_SEQUENCE", why="an answer to round 1 after round 2's"),
        ans("F", "r2", load=3), ans("G", "r2", load=4), ans("H", "r2", load=5),
    ], why="every malformed kind, from A's port with A's identity; B stops answering"))

    steps.append(rnd("r3", 3, [
        ans("B", "r3", "SPOOFED", src_ip="198.18.1.1", port=1,
            why="B's request answered from A's address"),
        ans("A", "r3", "SPOOFED", src_ip=STRANGER_IP, why="A's id from an unknown address"),
        ans("A", "r3", "UNKNOWN_PEER", peer_id=UNKNOWN_ID, why="unknown id, known address"),
        ans("A", "r3", "UNKNOWN_PEER", peer_id=UNKNOWN_ID, src_ip=STRANGER_IP),
        ans("A", "r3", "UNKNOWN_PEER", peer_id=0, why="peer_id 0 is never registered"),
        ans("A", "r3", "SPOOFED", peer_id=1002,
            why="B's id, registered for another source, from A's address"),
        ordinary("A", "r3", "IPv4 options (IHL 6): not a heartbeat", ihl=6),
        ordinary("A", "r3", "a first fragment (MF)", frag_off=0x2000),
        ordinary("A", "r3", "a later fragment (offset 8)", frag_off=0x0001),
        ordinary("A", "r3", "UDP to the request port", dport=9190),
        ordinary("A", "r3", "protocol TCP", proto=6),
        ordinary("A", "r3", "not IPv4 (ARP ethertype)", ethertype=0x0806),
        ans("A", "r3", "BAD_TTL", frame={"ttl": 254},
            why="after the ordinary frames on the same port; A has GTSM on: one router away"),
        ans("A", "r3", "BAD_TTL", frame={"ttl": 64}, nonce={"value": 0},
            why="TTL is checked before the nonce"),
        ans("A", "r3", "BAD_NONCE", nonce={"xor": 1}, why="one bit off"),
        ans("A", "r3", "BAD_NONCE", nonce={"value": 3}, why="the sequence itself (no key)"),
        ans("A", "r3", "BAD_NONCE", seq_add=1, nonce={"value": 0},
            why="the nonce is checked before the future sequence"),
        ans("A", "r3", "FUTURE_SEQUENCE", seq_add=1, why="round 4 is not sent yet"),
        ans("A", "r3", "FUTURE_SEQUENCE", seq_add=1 << 30,
            why="the lockout of issue 11: last + 2^30 (v1 recorded it)"),
        ans("A", "r3", "FUTURE_SEQUENCE", seq=0x7FFFFFFF, why="the lockout with 2^31 - 1"),
        a_answer(3, "r3", why="A's real answer is still recorded: no lockout"),
        ans("F", "r3", load=3),
        ans("G", "r3", load=4, frame={"ttl": 1}, why="GTSM off for G: any TTL"),
        ans("H", "r3", load=5),
    ], why="identity, TTL, nonce and future-sequence faults and ordinary traffic; C skips "
           "this round (answers it late)"))

    s1, s2 = (s["my_disc"] for s in BFD_SESSIONS)
    up1 = {"state": 3, "your_disc": s1}
    steps.append({"op": "bfd", "packets": [
        bfd("S1", bfd={"state": 1}, why="Down, your_disc 0: found by (source, port); the slot "
                                        "is not UP: a digest"),
        bfd("S1", bfd={"state": 1}, why="the same again: recorded, no digest"),
        bfd("S1", bfd={"state": 2, "your_disc": s1, "desired_min_tx_us": 300_000,
                       "required_min_rx_us": 250_000},
            why="Init: found by our discriminator; state and timers changed: a digest"),
        bfd("S1", bfd={**up1, "flags": 0x20, "desired_min_tx_us": 300_000,
                       "required_min_rx_us": 250_000},
            why="Up with a Poll: a digest (state), bfd_final_due set"),
        bfd("S1", bfd={**up1, "flags": 0x10, "desired_min_tx_us": 300_000,
                       "required_min_rx_us": 250_000}, why="F: a digest although nothing changed"),
        bfd("S1", bfd={**up1, "diag": 3, "detect_mult": 5, "desired_min_tx_us": 300_000,
                       "required_min_rx_us": 250_000}, why="diag and detect mult: a digest"),
        bfd("S1", "BFD_TRUNCATED", bfd=up1, frame={"truncate": 23}, why="one byte short"),
        bfd("S1", "BFD_TRUNCATED", frame={"truncate": 0}, why="UDP header only"),
        bfd("S1", "BFD_TRUNCATED", bfd={**up1, "version": 0}, frame={"truncate": 12},
            why="truncated wins over a bad version"),
        bfd("S1", "BFD_BAD_VERSION", bfd={**up1, "version": 0}),
        bfd("S1", "BFD_BAD_VERSION", bfd={**up1, "version": 2, "detect_mult": 0},
            why="version is checked before the other rules"),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "length": 23}),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "length": 25}, why="longer than the payload"),
        bfd("S1", "BFD_MALFORMED", bfd=up1, frame={"udp_len": 30},
            why="length 24 > UDP length 30 - 8"),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "detect_mult": 0}),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "flags": 0x01}, why="M bit"),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "flags": 0x04}, why="A bit: no authentication"),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "my_disc": 0}),
        bfd("S1", "BFD_MALFORMED", bfd={"state": 3}, why="Up with your_disc 0"),
        bfd("S1", "BFD_MALFORMED", bfd={"state": 2}, why="Init with your_disc 0"),
        bfd("S1", "BFD_MALFORMED", bfd={**up1, "detect_mult": 0}, frame={"ttl": 254},
            why="malformed is checked before the TTL"),
        bfd("S1", "BFD_BAD_TTL", bfd=up1, frame={"ttl": 254}, why="one router away"),
        bfd("S1", "BFD_BAD_TTL", bfd={"state": 3, "your_disc": UNKNOWN_DISC},
            frame={"ttl": 64}, why="the TTL is checked before the lookup"),
        bfd("S1", "BFD_UNKNOWN_DISCRIMINATOR", bfd={"state": 3, "your_disc": UNKNOWN_DISC},
            why="from S1's own address and port: your_disc alone decides"),
        bfd("S1", "BFD_UNKNOWN_PEER", port=2, why="S1's address on the other port (RFC 5881 "
                                                  "section 3: source and interface)"),
        bfd("S1", "BFD_UNKNOWN_PEER", src_ip=STRANGER_IP),
        bfd("S1", "BFD_RECORDED", bfd={**up1, "diag": 3, "detect_mult": 5,
                                       "desired_min_tx_us": 300_000,
                                       "required_min_rx_us": 250_000},
            why="steady Up after the discards: recorded, no digest"),
        bfd("S2", bfd={"state": 0, "diag": 7, "desired_min_tx_us": 0, "required_min_rx_us": 0},
            why="AdminDown from S2 (our discriminator 0xFFFFFFFF): a digest"),
        bfd("S2", bfd={"state": 2, "your_disc": s2}, why="Init: found by 0xFFFFFFFF"),
    ], "why": "BFD control packets of the remotes of S1 and S2 (docs/bfd.md \"Receive\")"})
    steps.append({"op": "bfd_round", "why": "S1 answers its remote's Poll with F; S2's "
                                            "detection time (1 µs) has passed: DOWN, "
                                            "bfd_remote_disc 0, sent with your_disc 0"})
    steps.append({"op": "bfd_round", "why": "no F any more; S2 stays DOWN without a digest, "
                                            "your_disc 0"})

    steps.append(rnd("r4", 4, [
        a_answer(4, "r4"),
        ans("C", "r4", "BAD_TTL", load=2, frame={"ttl": 254},
            why="C's answer through a router: GTSM (min_ttl 255) counts it, C is not recorded"),
        ans("C", "r4", load=2),
        ans("C", "r3", "OLD_SEQUENCE", why="reordered: round 3's answer after round 4's"),
        ans("F", "r4", load=3), ans("G", "r4", load=4), ans("H", "r4", load=5),
    ], why="B's third request since its last answer finds 2 misses (detect_mult): DOWN"))

    steps.append(rnd("r5", 5, [
        a_answer(5, "r5"),
        ans("C", "r5", load=2, tx={"future": True},
            why="echoed time later than the arrival: RTT 0 (min becomes 0)"),
        ans("F", "r5", "FUTURE_SEQUENCE", seq_add=0x80000000 - 1,
            why="5 + 2^31 - 1: the farthest after the last sent (5); v1 counted it old only "
                "because the last recorded was 4"),
        ans("F", "r5", "OLD_SEQUENCE", seq_add=0x80000000,
            why="5 + 2^31: exactly half the space from the last sent is not after it, and it "
                "is not after the last recorded (4) either"),
        ans("F", "r5", load=3),
        ans("G", "r5", load=4), ans("H", "r5", load=5),
    ], why="B stays DOWN without a second digest"))

    steps.append({"op": "reset_slot", "peer": "G",
                  "why": "the controller zeroes G's slot before reusing the index"})

    steps.append(rnd("r6", 6, [
        ans("G", "r4", load=4, why="first response after a reset: fresh though older (4)"),
        ans("G", "r6", load=4),
        a_answer(6, "r6"),
        ans("B", "r6", load=1, why="B answers again: UP"),
        ans("C", "r6", load=2),
        ans("F", "r6", "FUTURE_SEQUENCE", seq=0x80000004, load=3,
            why="0x80000004 = 5 + 2^31 - 1 is newer than 5; v1 recorded it and F was locked "
                "out; it is after the last sent (6)"),
        ans("F", "r6", load=3, why="F's real answer, recorded"),
        ans("E", "r6", load=6, why="E's first answer after seven unanswered requests"),
        ans("H", "r6", load=5),
    ]))

    steps.append({"op": "delete", "table": "peers", "peer": "H",
                  "why": "H's (source, id) row goes; its peer_ids row stays"})

    steps.append(rnd("r7", 7, [
        ans("H", "r7", "SPOOFED", why="id still known, (source, id) not: SPOOFED"),
        a_answer(7, "r7"), ans("B", "r7", load=1), ans("C", "r7", load=2),
        ans("F", "r7", load=3, why="recorded: the forged 0x80000004 left no trace (v1: old)"),
        ans("G", "r7", load=4),
    ]))

    steps.append({"op": "insert", "table": "peers", "peer": "H",
                  "why": "H's row comes back: its answers count again"})

    templates = [
        {"hb": {"type": 2}, "why": "a RESPONSE is not a template"},
        {"frame": {"dport": 9191}, "why": "destination port 9191"},
        {"frame": {"sport": 9999}, "why": "source port not 9191"},
        {"hb": {"magic": 0x4141}, "why": "bad magic"},
        {"hb": {"version": 3}, "why": "bad version"},
        {"hb": {"version": 1}, "why": "a version 1 template"},
        {"frame": {"truncate_hb": 24}, "why": "cut 4 bytes short (a version 1 header)"},
        {"frame": {"truncate_hb": 20}, "why": "cut 8 bytes short"},
        {"frame": {"ihl": 6}, "why": "IPv4 options"},
        {"frame": {"udp_len": 37}, "why": "UDP length 37"},
        {"frame": {"extra": 4}, "why": "4 bytes too long (UDP 40, IPv4 60)"},
    ]
    steps.append({"op": "bad_templates", "seq": 100, "templates": templates,
                  "direct": [{"port": 2, "why": "mcast_grp 0: sent unchanged out of port 2"}],
                  "why": "PacketOuts for the fan-out group that are not templates"})

    steps.append(rnd("r8", 8, [
        ans("H", "r8", load=5, why="recorded again"),
        a_answer(8, "r8"), ans("B", "r8", load=1), ans("C", "r8", load=2),
        ans("G", "r8", load=4),
    ], why="F and E stay silent"))

    wrap = [("r9", 0x40000000), ("r10", 0x80000000), ("r11", 0xC0000000),
            ("r12", 0xFFFFFFFF), ("r13", 0), ("r14", 1)]
    for n, (label, seq) in enumerate(wrap):
        i = 9 + n
        packets = [a_answer(i, label), ans("B", label, load=1), ans("C", label, load=2),
                   ans("G", label, load=4), ans("H", label, load=5)]
        if label == "r9":
            packets.append(ans("F", label, "BAD_NONCE", load=3, nonce={"value": 0x9E3779B9},
                               why="F is silent: only forgeries with a guessed nonce"))
        elif label == "r10":
            packets.append(ans("F", label, "FUTURE_SEQUENCE", load=3, seq_add=1,
                               why="a forged answer to a round not sent yet"))
        elif label == "r11":
            packets.append(ans("F", label, "BAD_NONCE", load=3, seq_add=-1 & 0xFFFFFFFF,
                               nonce={"xor": 0x100},
                               why="DOWN at this round's request: forgeries did not help"))
            packets.append(ans("F", "r10", load=3,
                               why="F's real answer to round 10, late (0xC0000000 is more than "
                                   "2^31 after its last recorded 7): in (last recorded, last "
                                   "sent], recorded: UP"))
        else:
            packets.append(ans("F", label, load=3))
        if label == "r14":
            packets.append(ans("D", label, load=9, why="D's only answer: UP"))
            packets.append(ans("A", "r13", "OLD_SEQUENCE", why="0 is before 1, across the wrap"))
            packets.append(ans("B", label, "DUPLICATE", why="1 again"))
        steps.append(rnd(label, seq, packets,
                         why="rounds walk across 2^32 in steps below 2^31"))

    return {
        "format": FORMAT_VERSION,
        "generator": "tests/diff/trace.py",
        "monitor": MONITOR,
        "ports": [1, 2],
        "fanout_group": 1,
        "peers": PEERS,
        "extra_replicas": EXTRA_REPLICAS,
        "bfd_sessions": BFD_SESSIONS,
        "bfd_group": BFD_GROUP,
        "bfd_extra_replicas": BFD_EXTRA_REPLICAS,
        "digest": {"max_timeout_ns": 0, "max_list_size": 1, "ack_timeout_ns": 1_000_000_000},
        "steps": steps,
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def load(path: Path = TRACE_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", type=Path, default=TRACE_PATH)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} differs from the generator: run python {__file__}",
                  file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(build()['steps'])} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
