"""The committed p4c outputs (p4src/build/) match the P4 sources and the contract.

Runs in every CI without p4c:
  * p4src/build/SOURCES.sha256 (written by `make p4-build`) must list exactly the current
    p4src/*.p4 with their current digests: editing the P4 without recompiling fails here;
  * the committed P4Info must carry every object of docs/dataplane.md with the names, ids,
    widths, sizes and action lists the doc gives;
  * the bmv2 JSON must be the same program (registers, counter, tables, digest);
  * reason codes agree between the doc, hbmon.protocol and p4src/constants.p4;
  * the BFD objects (issue 13) are docs/bfd.md's: its "P4Info additions" table and its
    `bfd_event_t` struct against the P4Info.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from hbmon.protocol import BFD_REGISTERS, REASON_COUNT, REGISTERS, Reason
from p4.config.v1 import p4info_pb2

ROOT = Path(__file__).resolve().parents[1]
P4SRC = ROOT / "p4src"
BUILD = P4SRC / "build"
DOC = (ROOT / "docs" / "dataplane.md").read_text()
BFD_DOC = (ROOT / "docs" / "bfd.md").read_text()
REBUILD = "run `make p4-build` (p4c on PATH or $P4C) and commit p4src/build/"


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, flags=re.M | re.S)
    assert m, f"docs/dataplane.md has no section {title!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def p4info() -> p4info_pb2.P4Info:
    info = p4info_pb2.P4Info()
    text_format.Parse((BUILD / "heartbeat.p4info.txtpb").read_text(), info)
    return info


@pytest.fixture(scope="module")
def bmv2() -> dict[str, Any]:
    path = BUILD / "heartbeat.json"
    assert path.is_file(), f"{path.relative_to(ROOT)} missing: {REBUILD}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _by_name(objs: Any) -> dict[str, Any]:
    return {o.preamble.name: o for o in objs}


# ---------------------------------------------------------------------------------------------
# sources digest


def test_sources_digest_matches_the_build() -> None:
    record = BUILD / "SOURCES.sha256"
    assert record.is_file(), f"{record.relative_to(ROOT)} missing: {REBUILD}"
    recorded: dict[str, str] = {}
    p4c_version = ""
    for line in record.read_text().splitlines():
        if line.startswith("# p4c:"):
            p4c_version = line.split(":", 1)[1].strip()
        if not line.strip() or line.startswith("#"):
            continue
        digest, name = line.split(maxsplit=1)
        recorded[name.lstrip("*")] = digest
    assert p4c_version, "SOURCES.sha256 does not record the p4c version"
    current = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(P4SRC.glob("*.p4"))}
    assert list(recorded) == sorted(recorded), "SOURCES.sha256 is not sorted"
    changed = sorted(n for n in current if recorded.get(n) != current[n])
    gone = sorted(set(recorded) - set(current))
    assert not changed and not gone, (
        f"P4 sources differ from the compiled outputs (changed/new: {changed}, "
        f"removed: {gone}): {REBUILD}")


# ---------------------------------------------------------------------------------------------
# the P4Info against docs/dataplane.md

_TABLE_ROW = re.compile(r"^\| `(Hb\w+\.\w+)` \| (.*?) \| (.*?) \| (\d+) \|$", re.M)


def _doc_tables() -> list[dict[str, Any]]:
    rows = []
    for name, keys, actions, size in _TABLE_ROW.findall(_section("Tables")):
        rows.append({
            "name": name,
            "keys": [(k, int(w), kind.upper())
                     for k, w, kind in re.findall(r"`(\w+)`: (\d+) (\w+)", keys)],
            "actions": {a: [(p, int(w)) for p, w in re.findall(r"(\w+): (\d+)", params)]
                        for a, params in re.findall(r"`([\w.]+)\(([^)]*)\)`", actions)},
            "plain_default": re.findall(r"default `(\w+)`", actions),
            "size": int(size),
        })
    return rows


def test_doc_lists_the_seven_tables() -> None:
    assert [t["name"] for t in _doc_tables()] == [
        "HbIngress.peers", "HbIngress.peer_ids", "HbIngress.l2_forward",
        "HbEgress.peer_requests", "HbIngress.bfd_sessions", "HbIngress.bfd_peers",
        "HbEgress.bfd_requests"]


@pytest.mark.parametrize("row", _doc_tables(), ids=lambda r: r["name"])
def test_table_matches_doc(p4info: p4info_pb2.P4Info, row: dict[str, Any]) -> None:
    tables = _by_name(p4info.tables)
    actions = _by_name(p4info.actions)
    assert row["name"] in tables, f"P4Info lacks table {row['name']}"
    table = tables[row["name"]]
    assert [(m.name, m.bitwidth, p4info_pb2.MatchField.MatchType.Name(m.match_type))
            for m in table.match_fields] == row["keys"]
    assert table.size == row["size"]
    ref_names = {a.preamble.id: a.preamble.name for a in p4info.actions}
    table_actions = {ref_names[r.id] for r in table.action_refs}
    expected = set(row["actions"]) | set(row["plain_default"])
    assert table_actions == expected
    for action, params in row["actions"].items():
        assert [(p.name, p.bitwidth) for p in actions[action].params] == params, action


_REG_ROW = re.compile(r"^\| `(hb_\w+)` \| (\d+) \|", re.M)
_BFD_REG_ROW = re.compile(r"^\| `(bfd_\w+)` \| (\d+) \|", re.M)


def test_registers_match_doc(p4info: p4info_pb2.P4Info) -> None:
    section = _section("Registers (global, size 65536, indexed by peer index)")
    doc = [(n, int(w)) for n, w in _REG_ROW.findall(section)]
    assert doc == list(REGISTERS.items()), "docs/dataplane.md and hbmon.protocol disagree"
    bfd = [(n, int(w)) for n, w in _BFD_REG_ROW.findall(section)]
    assert bfd == list(BFD_REGISTERS.items()), "docs/dataplane.md and hbmon.protocol disagree"
    regs = [(r.preamble.name, r.type_spec.bitstring.bit.bitwidth, r.size)
            for r in p4info.registers]
    assert sorted(regs) == sorted((n, w, 65536) for n, w in doc + bfd)


def test_counter_matches_doc(p4info: p4info_pb2.P4Info) -> None:
    counters = _by_name(p4info.counters)
    assert "hb_reason" in counters
    assert counters["hb_reason"].size == REASON_COUNT == 32  # protocol v2: room to grow
    assert counters["hb_reason"].spec.unit == p4info_pb2.CounterSpec.BOTH


def test_controller_headers_match_doc(p4info: p4info_pb2.P4Info) -> None:
    doc = dict(re.findall(r"^\| `(packet_\w+)` \| (.*?) \|$", _section("Fan-out (requests)"),
                          flags=re.M))
    assert set(doc) == {"packet_out", "packet_in"}
    headers = _by_name(p4info.controller_packet_metadata)
    for name, fields in doc.items():
        expected = [(f, int(w)) for f, w in re.findall(r"`(\w+)`: (\d+)", fields)]
        assert name in headers, f"P4Info lacks controller header {name}"
        assert [(m.name, m.bitwidth) for m in headers[name].metadata] == expected, name


@pytest.mark.parametrize(("name", "doc", "fields"), [
    ("peer_event_t", DOC, ["index", "state", "last_seq", "time_us"]),
    ("bfd_event_t", BFD_DOC, ["index", "state", "diag", "flags", "detect_mult", "my_disc",
                              "desired_min_tx_us", "required_min_rx_us", "time_us"]),
])
def test_digest_matches_doc(p4info: p4info_pb2.P4Info, name: str, doc: str,
                            fields: list[str]) -> None:
    struct = re.search(rf"struct {name} \{{(.*?)\}}", doc, flags=re.S)
    assert struct
    expected = [(n, int(w)) for w, n in re.findall(r"bit<(\d+)>\s+(\w+);", struct.group(1))]
    assert [n for n, _ in expected] == fields
    digests = _by_name(p4info.digests)
    assert name in digests
    type_name = digests[name].type_spec.struct.name
    members = p4info.type_info.structs[type_name].members
    assert [(m.name, m.type_spec.bitstring.bit.bitwidth) for m in members] == expected


def _doc_fixed_ids() -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for kind, name, rest, oid in re.findall(
            r"^\| (action|table|counter) `([\w.]+)`(.*?) \| `(0x[0-9a-f]+)` \|$",
            _section("Fixed P4Runtime ids"), flags=re.M):
        out[(kind, name)] = int(oid, 16)
        for sub, sub_id in re.findall(r"`(\w+)`\s*=\s*(\d+)", rest):
            out[(f"{kind}-sub", f"{name}/{sub}")] = int(sub_id)
    rows = re.findall(r"^\| registers (.*?) \| `(0x[0-9a-f]+)` … `(0x[0-9a-f]+)`",
                      _section("Fixed P4Runtime ids"), flags=re.M)
    assert len(rows) == 2, "the registers' id rows (hb_*, bfd_*) are missing"
    for listed, first_id, last_id in rows:
        names = re.findall(r"`((?:hb|bfd)_\w+)`", listed)
        first, last = int(first_id, 16), int(last_id, 16)
        assert last - first + 1 == len(names)
        for i, name in enumerate(names):
            out[("register", name)] = first + i
    return out


def test_fixed_ids_match_doc(p4info: p4info_pb2.P4Info) -> None:
    doc = _doc_fixed_ids()
    # v2: hb_last_tx_seq; BFD (issue 13): the seven bfd_* registers
    assert len([k for k in doc if k[0] == "register"]) == 15 + 7
    objs: dict[str, dict[str, Any]] = {
        "action": _by_name(p4info.actions), "table": _by_name(p4info.tables),
        "counter": _by_name(p4info.counters), "register": _by_name(p4info.registers),
    }
    for (kind, name), oid in doc.items():
        if kind.endswith("-sub"):
            obj_name, sub = name.split("/")
            obj = objs[kind[:-4]][obj_name]
            subs = obj.params if kind == "action-sub" else obj.match_fields
            assert {s.name: s.id for s in subs}[sub] == oid, f"{name} id"
        else:
            assert name in objs[kind], f"P4Info lacks {kind} {name}"
            assert objs[kind][name].preamble.id == oid, f"{kind} {name}: id {oid:#x} expected"


_BFD_ROW = re.compile(
    r"^\| (table|action|register) \| `([\w.]+)` \| `?(0x[0-9a-f]+)`? \| (.*?) \|$", re.M)


def test_bfd_objects_match_bfd_doc(p4info: p4info_pb2.P4Info) -> None:
    """docs/bfd.md "P4Info additions" (the contract the kernel target and the controller
    read) names the same objects, ids, keys and params as the P4Info."""
    m = re.search(r"^## P4Info additions\n(.*?)(?=^## |\Z)", BFD_DOC, flags=re.M | re.S)
    assert m, "docs/bfd.md has no section 'P4Info additions'"
    rows = _BFD_ROW.findall(m.group(1))
    assert len(rows) == 3 + 2 + 7
    objs: dict[str, dict[str, Any]] = {
        "action": _by_name(p4info.actions), "table": _by_name(p4info.tables),
        "register": _by_name(p4info.registers),
    }
    for kind, name, oid, rest in rows:
        assert name in objs[kind], f"P4Info lacks {kind} {name}"
        obj = objs[kind][name]
        assert obj.preamble.id == int(oid.strip("`"), 16), f"{kind} {name}: id"
        if kind == "table":
            keys = [(k, int(w)) for k, w in re.findall(r"`(\w+)`: (\d+) exact", rest)]
            assert [(f.name, f.bitwidth) for f in obj.match_fields] == keys, name
            assert obj.size == int(re.findall(r"size (\d+)", rest)[0])
        elif kind == "action":
            params = [(p, int(w)) for p, w in re.findall(r"`(\w+)`: (\d+)", rest)]
            assert [(p.name, p.bitwidth) for p in obj.params] == params, name
        else:
            assert obj.type_spec.bitstring.bit.bitwidth == BFD_REGISTERS[name], name


def test_p4info_has_nothing_the_doc_does_not_name(p4info: p4info_pb2.P4Info) -> None:
    doc_names = set(re.findall(r"`([\w.]+)", DOC))
    for group in (p4info.tables, p4info.actions, p4info.registers, p4info.counters,
                  p4info.digests, p4info.controller_packet_metadata):
        for obj in group:
            assert obj.preamble.name in doc_names, f"{obj.preamble.name} not in dataplane.md"


# ---------------------------------------------------------------------------------------------
# bmv2 JSON


def test_bmv2_json_is_this_program(bmv2: dict[str, Any], p4info: p4info_pb2.P4Info) -> None:
    arrays = {a["name"].rsplit(".", 1)[-1]: a for a in bmv2["register_arrays"]}
    for name, width in REGISTERS.items():
        assert name in arrays, f"bmv2 JSON lacks register {name}: {REBUILD}"
        assert (arrays[name]["bitwidth"], arrays[name]["size"]) == (width, 65536)
    counters = {c["name"].rsplit(".", 1)[-1]: c for c in bmv2["counter_arrays"]}
    assert counters["hb_reason"]["size"] == REASON_COUNT
    json_tables = {t["name"] for p in bmv2["pipelines"] for t in p["tables"]}
    for t in p4info.tables:
        assert t.preamble.name in json_tables, f"bmv2 JSON lacks table {t.preamble.name}"
    for name, width in BFD_REGISTERS.items():
        assert name in arrays, f"bmv2 JSON lacks register {name}: {REBUILD}"
        assert (arrays[name]["bitwidth"], arrays[name]["size"]) == (width, 65536)
    learn = {lst["name"].rsplit(".", 1)[-1] for lst in bmv2.get("learn_lists", [])}
    assert {"peer_event_t", "bfd_event_t"} <= learn, learn


# ---------------------------------------------------------------------------------------------
# reason codes


def test_reason_codes_agree() -> None:
    doc = {name: int(code) for code, name in re.findall(
        r"^\| (\d+) \| `(\w+)` \|", _section("Counter"), flags=re.M)}
    assert doc == {r.name: r.value for r in Reason}
    p4 = {name: int(code) for name, code in re.findall(
        r"const reason_t REASON_(\w+)\s*=\s*(\d+);", (P4SRC / "constants.p4").read_text())}
    assert p4 == doc


# ---------------------------------------------------------------------------------------------
# reproducible outputs (needs p4c: built by hand, found on PATH or as $P4C)


def _front_ends() -> list[Path]:
    from hbmon.dataplane import targets

    found = targets.find_p4c()
    if found is None:
        return []
    both = [found]
    sibling = found.with_name("p4c-bm2-ss" if found.name == "p4c" else "p4c")
    if sibling.is_file():  # the driver and the back end of one p4c build
        both.append(sibling)
    return both


@pytest.mark.skipif(not _front_ends(), reason="p4c not found on PATH or $P4C (built by hand; "
                    "without it the committed outputs are checked by digest only)")
@pytest.mark.parametrize("front_end", _front_ends() or [Path("p4c")], ids=lambda p: p.name)
def test_p4_build_reproduces_the_committed_outputs(front_end: Path, tmp_path: Path) -> None:
    """`make p4-build` in a copy of p4src/ elsewhere, through the driver or p4c-bm2-ss, with
    the compiler given by its full path: byte for byte the committed outputs (no machine
    path in the version line, one `program` name in the JSON)."""
    import shutil
    import subprocess

    copy = tmp_path / "elsewhere" / "p4src"
    copy.mkdir(parents=True)
    for src in [*P4SRC.glob("*.p4"), P4SRC / "Makefile"]:
        shutil.copy2(src, copy / src.name)
    subprocess.run(["make", "-s", "-C", str(copy), f"P4C={front_end.resolve()}"],
                   check=True, capture_output=True, timeout=600)
    for name in ("heartbeat.p4info.txtpb", "heartbeat.json", "SOURCES.sha256"):
        made, committed = (copy / "build" / name).read_bytes(), (BUILD / name).read_bytes()
        assert made == committed, f"{name} differs from the committed one: {REBUILD}"
