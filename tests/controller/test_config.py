"""Config file parsing: defaults, overrides, relative paths and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hbmon.config import DEFAULT_P4INFO, load_config, parse_config
from hbmon.model import ValidationError

FULL = """
interval_ms: 50
detect_mult: 4
poll_interval_ms: 200
monitor: {mac: "02:00:00:00:00:AA", ip: 198.18.0.1}
election_id: 7
store: sqlite:///state/hbmon.db
health: {rtt_degraded_us: 20000, loss_degraded: 0.3, flap_count: 3, hold_down_s: 5}
api: {port: 9000, token_file: token.txt, read_auth: true}
webhooks: {urls: ["http://127.0.0.1:9/hook"]}
switches:
  - name: k1
    grpc: 127.0.0.1:9559
    ports: {1: veth-a}
  - name: b1
    kind: bmv2
    grpc: 127.0.0.1:9560
    device_id: 2
    interval_ms: 100
    monitor: {ip: 198.18.0.2}
    p4info: p4/heartbeat.p4info.txtpb
peers:
  - {name: web1, switch: k1, address: 198.18.1.1, peer_id: 1, mac: "02:00:00:00:01:01", port: 1}
  - {name: web2, switch: b1, address: 198.18.1.2, peer_id: 2, mac: "02:00:00:00:01:02", port: 1,
     detect_mult: 5, labels: {role: web}}
"""


def test_full_config(tmp_path: Path) -> None:
    path = tmp_path / "hbmon.yaml"
    path.write_text(FULL)
    cfg = load_config(path)
    k1, b1 = cfg.switches
    assert (k1.kind, k1.interval_ms, k1.detect_mult, k1.poll_interval_ms) == ("kernel", 50, 4, 200)
    assert k1.p4info == DEFAULT_P4INFO
    assert k1.ports == {1: "veth-a"}
    assert k1.monitor.mac == "02:00:00:00:00:aa"
    assert (b1.kind, b1.device_id, b1.thrift_port, b1.interval_ms) == ("bmv2", 2, 9090, 100)
    assert b1.monitor.ip == "198.18.0.2" and b1.monitor.mac == "02:00:00:00:00:aa"
    assert b1.p4info == tmp_path / "p4" / "heartbeat.p4info.txtpb"
    assert b1.bmv2_json is not None and b1.bmv2_json.name == "heartbeat.json"
    assert cfg.election_id == 7
    assert cfg.store == f"sqlite:///{tmp_path / 'state' / 'hbmon.db'}"
    assert cfg.health.detect_mult == 4 and cfg.health.rtt_degraded_us == 20000
    assert cfg.api.port == 9000 and cfg.api.token_file == tmp_path / "token.txt"
    assert cfg.webhooks.urls == ("http://127.0.0.1:9/hook",)
    assert [p.name for p in cfg.peers] == ["web1", "web2"]
    assert cfg.peers[1].labels == {"role": "web"}
    assert cfg.switch("b1") is b1


def test_minimal_config_defaults() -> None:
    cfg = parse_config({"switches": [{"name": "s", "grpc": "127.0.0.1:1"}],
                        "peers": [{"name": "p", "address": "198.18.1.1", "peer_id": 1,
                                   "mac": "02:00:00:00:00:02", "port": 0}]})
    assert cfg.switches[0].interval_ms == 100 and cfg.switches[0].detect_mult == 3
    assert cfg.peers[0].switch == "s"  # the only switch
    assert cfg.store.startswith("sqlite:///") and cfg.api.host == "127.0.0.1"
    assert (cfg.switches[0].gtsm, cfg.switches[0].min_ttl) == (False, 0)


def test_gtsm_is_per_switch() -> None:
    """`gtsm: true` -> min_ttl 255 (RFC 5082 single hop) for the switch's peers only."""
    cfg = parse_config({"switches": [{"name": "s", "grpc": "h:1", "gtsm": True},
                                     {"name": "t", "grpc": "h:2", "gtsm": False}]})
    assert [(s.gtsm, s.min_ttl) for s in cfg.switches] == [(True, 255), (False, 0)]


@pytest.mark.parametrize(("data", "field"), [
    ({}, "switches"),
    ({"switches": [{"name": "s"}]}, "switches[0].grpc"),
    ({"switches": [{"name": "s", "grpc": "nohostport"}]}, "switches[0].grpc"),
    ({"switches": [{"name": "s", "grpc": "h:1", "kind": "tofino"}]}, "switches[0].kind"),
    ({"switches": [{"name": "s", "grpc": "h:1", "bogus": 1}]}, "switches[0].bogus"),
    ({"switches": [{"name": "s", "grpc": "h:1"}, {"name": "s", "grpc": "h:2"}]},
     "switches[1].name"),
    ({"switches": [{"name": "s", "grpc": "h:1"}, {"name": "t", "grpc": "h:1"}]},
     "switches[1].grpc"),
    ({"switches": [{"name": "s", "grpc": "h:1", "detect_mult": 0}]}, "switches[0].detect_mult"),
    ({"switches": [{"name": "s", "grpc": "h:1", "interval_ms": "fast"}]},
     "switches[0].interval_ms"),
    ({"switches": [{"name": "s", "grpc": "h:1", "monitor": {"ip": "x"}}]},
     "switches[0].monitor.ip"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "monitor": {"mac": "zz"}}, "monitor.mac"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "health": {"loss_degraded": 2}},
     "health.loss_degraded"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "health": {"nope": 1}}, "health.nope"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "peers": [{"name": "p"}]}, "peers[0].address"),
    ({"switches": [{"name": "s", "grpc": "h:1"}],
      "peers": [{"name": "p", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:00:02",
                 "port": 0, "switch": "t"}]}, "peers[0].switch"),
    ({"switches": [{"name": "s", "grpc": "h:1"}, {"name": "t", "grpc": "h:2"}],
      "peers": [{"name": "p", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:00:02",
                 "port": 0}]}, "peers[0].switch"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "api": {"port": 70000}}, "api.port"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "webhooks": {"urls": "x"}}, "webhooks.urls"),
    ({"switches": [{"name": "s", "grpc": "h:1"}], "typo": 1}, "typo"),
    ({"switches": [{"name": "s", "grpc": "h:1", "gtsm": "yes"}]}, "switches[0].gtsm"),
    ({"switches": [{"name": "s", "grpc": "h:1", "gtsm": 1}]}, "switches[0].gtsm"),
])
def test_errors_name_the_key(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_config(data)
    assert info.value.field == field


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("switches: [\n")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_config(bad)
