"""`mac` optional for peers (issue 14): the model and config accept a peer without it, the
store keeps NULL (schema 3, migrated from schema 2 on SQLite and PostgreSQL), the data-plane
entities of an unresolved peer have no request entry and no fan-out replica, and the
resolver's netlink event parser reads real kernel neighbour messages.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from ha.test_replica_parts import _raw, url  # noqa: F401  (url: the fixture, both backends)
from hbmon.config import parse_config
from hbmon.dataplane.inventory import REQUESTS_TABLE, PeerGuard, fanout_group, peer_entities
from hbmon.dataplane.neighbours import RTMGRP_NEIGH, parse_neigh_events
from hbmon.model import Peer, ValidationError
from hbmon.store.sql import SCHEMA_VERSION, open_store


def _peer(name: str, n: int, mac: str | None, index: int | None = None) -> Peer:
    return Peer(name=name, address=f"198.18.1.{n}", peer_id=n, mac=mac, port=1,
                switch="s1", index=index)


def test_a_peer_without_mac_is_valid_and_a_bad_mac_is_not() -> None:
    peer = Peer.from_dict({"name": "a", "address": "198.18.1.1", "peer_id": 1, "port": 1})
    assert peer.mac is None
    out = peer.to_dict()
    assert out["mac"] is None and out["next_hop"] is None  # shown as not resolved (yet)
    assert "next_hop" not in _peer("b", 2, "02:00:00:00:00:02").to_dict()
    with pytest.raises(ValidationError) as bad:
        Peer.from_dict({"name": "a", "address": "198.18.1.1", "peer_id": 1, "port": 1,
                        "mac": "02:00"})
    assert bad.value.field == "mac"
    with pytest.raises(ValidationError) as output_only:
        Peer.from_dict({"name": "a", "address": "198.18.1.1", "peer_id": 1, "port": 1,
                        "next_hop": {}})
    assert output_only.value.field == "next_hop"


def test_config_peer_without_mac(tmp_path: Path) -> None:
    config = parse_config({
        "switches": [{"name": "s1", "grpc": "127.0.0.1:9559", "ports": {1: "eth9"}}],
        "peers": [{"name": "a", "address": "198.18.1.1", "peer_id": 1, "port": 1}],
    }, base=tmp_path)
    assert config.peers[0].mac is None and config.switches[0].ports == {1: "eth9"}


def test_unresolved_peer_gets_no_request_entry_and_no_replica() -> None:
    guard = PeerGuard(b"k" * 32, "s1")
    resolved, unresolved = _peer("a", 1, "02:00:00:00:00:01", 0), _peer("b", 2, None, 1)
    assert REQUESTS_TABLE in {e.table for e in peer_entities(resolved, 3, guard)}
    tables = [e.table for e in peer_entities(unresolved, 3, guard)]
    assert len(tables) == 2 and REQUESTS_TABLE not in tables
    assert [r.instance for r in fanout_group([resolved, unresolved]).replicas] == [0]


def test_schema_2_is_migrated_to_a_nullable_mac(url: str) -> None:  # noqa: F811
    with open_store(url) as store:
        store.add_peers([_peer("a", 1, "02:00:00:00:00:01", 0)])
        store.mark_programmed("s1", ["a"], 12.5)
    raw = _raw(url)
    try:  # back to schema 2: mac NOT NULL
        if url.startswith("sqlite:"):
            # SQLite has no ALTER COLUMN: rebuild the table as schema 2 made it
            raw.execute("ALTER TABLE peers RENAME TO old")
            raw.execute("CREATE TABLE peers (name TEXT PRIMARY KEY, switch TEXT NOT NULL, "
                        "address TEXT NOT NULL, peer_id INTEGER NOT NULL, mac TEXT NOT NULL, "
                        "port INTEGER NOT NULL, grp TEXT, labels TEXT NOT NULL DEFAULT '{}', "
                        "detect_mult INTEGER, admin_down INTEGER NOT NULL DEFAULT 0, "
                        "idx INTEGER, programmed_at REAL, "
                        "CONSTRAINT peers_switch_address UNIQUE (switch, address), "
                        "CONSTRAINT peers_switch_peer_id UNIQUE (switch, peer_id))")
            raw.execute("INSERT INTO peers SELECT name, switch, address, peer_id, mac, port, "
                        "grp, labels, detect_mult, admin_down, idx, programmed_at FROM old")
            raw.execute("DROP TABLE old")
            raw.execute("CREATE UNIQUE INDEX peers_switch_idx ON peers (switch, idx)")
        else:
            raw.execute("ALTER TABLE peers ALTER COLUMN mac SET NOT NULL")
        raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        with pytest.raises(Exception, match=r"(?i)not.null"):  # schema 2 refuses NULL
            raw.execute("INSERT INTO peers (name, switch, address, peer_id, mac, port) "
                        "VALUES ('x', 's1', '198.18.9.9', 99, NULL, 1)")
    finally:
        raw.close()
    with open_store(url) as store:
        store.add_peers([_peer("b", 2, None, 1)])
        found = {p.name: p for p in store.list_peers()}
        assert found["a"].mac == "02:00:00:00:00:01" and found["a"].index == 0
        assert found["b"].mac is None
        assert store.programmed_at(["a"]) == {"a": 12.5}  # kept through the rebuild
    raw = _raw(url)
    try:
        row = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(row[0]) == SCHEMA_VERSION == 4
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):  # UNIQUE (switch, idx)
            raw.execute("INSERT INTO peers (name, switch, address, peer_id, mac, port, idx) "
                        "VALUES ('y', 's1', '198.18.9.8', 98, NULL, 1, 0)")
    finally:
        raw.close()


@pytest.mark.netns
def test_neighbour_events_name_interface_and_address() -> None:
    """A real RTM_NEWNEIGH from the kernel (an entry added on a veth of its own) is parsed."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_NEIGH))
    sock.settimeout(5)
    name = f"hbnb{abs(hash(sock)) % 10000}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}b"],
                   check=True)  # deleting one end removes both
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        subprocess.run(["ip", "neigh", "add", "198.18.77.1", "lladdr", "02:00:00:00:77:01",
                        "dev", name, "nud", "permanent"], check=True)
        index = socket.if_nametoindex(name)
        seen: set[tuple[int, str]] = set()
        while (index, "198.18.77.1") not in seen:
            seen.update(parse_neigh_events(sock.recv(65536)))  # timeout: the test fails
    finally:
        subprocess.run(["ip", "link", "del", name], check=True)
        sock.close()
