"""`hbmon status / peers / watch` against a real server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from api_fakes import make_peers
from api_harness import TOKEN
from click.testing import CliRunner, Result
from hbmon.cli import main
from hbmon.model import Health
from real_product import Product


def run(api: Product, *args: str, token: str | None = TOKEN, **env: str) -> Result:
    full_env = {"HBMON_URL": api.url, "COLUMNS": "200", **env}
    if token:
        full_env["HBMON_API_TOKEN"] = token
    else:
        full_env["HBMON_API_TOKEN"] = ""
    return CliRunner().invoke(main, list(args), env=full_env, catch_exceptions=False)


def test_peers_add_list_rm(api: Product) -> None:
    r = run(api, "peers", "add", "cli-1", "--address", "198.18.3.1", "--peer-id", "31",
            "--mac", "02:00:00:00:03:01", "--port", "2", "--group", "edge",
            "--label", "role=lb", "--label", "zone=a")
    assert r.exit_code == 0, r.output
    assert "added cli-1" in r.output and "index 0" in r.output
    stored = api.store.get_peer("cli-1")
    assert stored.labels == {"role": "lb", "zone": "a"} and stored.group == "edge"

    r = run(api, "peers", "list", "--json")
    assert [p["name"] for p in json.loads(r.output)] == ["cli-1"]
    api.set_state("cli-1", Health.UP)
    r = run(api, "peers", "list")
    assert r.exit_code == 0 and "cli-1" in r.output and "UP" in r.output

    # errors name the field and exit non-zero
    r = run(api, "peers", "add", "cli-2", "--address", "198.18.3.1", "--peer-id", "32",
            "--mac", "02:00:00:00:03:02", "--port", "2")
    assert r.exit_code == 1 and "'address'" in r.output and "409" in r.output
    r = run(api, "peers", "add", "cli-2", "--address", "nope", "--peer-id", "32",
            "--mac", "02:00:00:00:03:02", "--port", "2")
    assert r.exit_code == 1 and "'address'" in r.output and "422" in r.output
    r = run(api, "peers", "add", "cli-2", "--address", "198.18.3.2")
    assert r.exit_code == 2 and "--peer-id" in r.output
    r = run(api, "peers", "rm", "cli-1", token=None)
    assert r.exit_code == 1 and "401" in r.output

    r = run(api, "peers", "rm", "cli-1", "ghost")
    assert r.exit_code == 1 and "404" in r.output
    r = run(api, "peers", "rm", "cli-1")
    assert r.exit_code == 0 and "removed 1" in r.output
    assert api.store.list_peers() == []


def test_peers_add_bfd(api: Product) -> None:
    """A BFD session (issue 13): no --peer-id, its timers; a timer out of range is the
    server's 422 naming the field."""
    r = run(api, "peers", "add", "rtr-1", "--kind", "bfd", "--address", "198.18.3.7",
            "--mac", "02:00:00:00:03:07", "--port", "2", "--desired-min-tx-ms", "50")
    assert r.exit_code == 0, r.output
    stored = api.store.get_peer("rtr-1")
    assert (stored.kind, stored.peer_id, stored.desired_min_tx_ms,
            stored.required_min_rx_ms) == ("bfd", 0, 50, 300)
    r = run(api, "peers", "add", "rtr-2", "--kind", "bfd", "--address", "198.18.3.8",
            "--port", "2", "--required-min-rx-ms", "0")
    assert r.exit_code == 1 and "'required_min_rx_ms'" in r.output and "422" in r.output


def test_peers_add_from_file(api: Product, tmp_path: Path) -> None:
    peers = [p.to_dict() for p in make_peers(25)]
    yaml_file = tmp_path / "peers.yaml"
    import yaml

    yaml_file.write_text(yaml.safe_dump({"peers": peers}))
    r = run(api, "peers", "add", "--file", str(yaml_file))
    assert r.exit_code == 0 and "added 25" in r.output, r.output
    bad = [p.to_dict() for p in make_peers(3, prefix="more")]
    bad[1]["port"] = 9999
    json_file = tmp_path / "bad.json"
    json_file.write_text(json.dumps(bad))
    r = run(api, "peers", "add", "--file", str(json_file))
    assert r.exit_code == 1 and "peers[1].port" in r.output
    assert len(api.store.list_peers()) == 25


def test_token_file_option(api: Product, tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text(TOKEN + "\n")
    r = run(api, "peers", "add", "tf", "--address", "198.18.3.9", "--peer-id", "39",
            "--mac", "02:00:00:00:03:09", "--port", "1", "--token-file", str(token_file),
            token=None)
    assert r.exit_code == 0, r.output


def test_status(api: Product) -> None:
    api.service.add_peers(make_peers(6))
    api.set_states({"peer-0000": Health.UP, "peer-0001": Health.DOWN,
                            "peer-0002": Health.DEGRADED})
    api.tick({"peer-0000": 1234})
    r = run(api, "status")
    assert r.exit_code == 0, r.output
    assert "6 peers" in r.output and "DOWN 1" in r.output and "UP 1" in r.output
    assert "leaf-2" in r.output and "peer-0001" in r.output and "1.23 ms" in r.output
    r = run(api, "status", "--problems", "--json")
    data = json.loads(r.output)
    assert sorted(p["name"] for p in data["peers"]) == [
        "peer-0001", "peer-0002", "peer-0003", "peer-0004", "peer-0005"]
    r = run(api, "status", "--state", "down", "--json")
    assert [p["name"] for p in json.loads(r.output)["peers"]] == ["peer-0001"]
    r = run(api, "status", "--limit", "2")
    assert "4 more" in r.output
    r = CliRunner().invoke(main, ["status", "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 1 and "cannot reach" in r.output


def test_watch_follows_and_resumes(api: Product) -> None:
    api.service.add_peers(make_peers(2))

    def trigger() -> None:
        gate = threading.Event()
        for _ in range(2000):  # until the CLI's stream is subscribed
            if api.bus.subscriber_count:
                break
            gate.wait(0.01)
        api.set_state("peer-0000", Health.UP, reason="responses")
        api.set_state("peer-0000", Health.DOWN, reason="3 misses")

    t = threading.Thread(target=trigger)
    t.start()
    r = run(api, "watch", "--count", "2")
    t.join()
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert "peer-0000" in lines[0] and "UNKNOWN -> UP" in lines[0]
    assert "UP -> DOWN" in lines[1] and "data plane:" in lines[1]
    # replay from an id, as JSON, filtered
    r = run(api, "watch", "--last-event-id", "0", "--count", "2", "--json",
            "--kind", "peer_added")
    events = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [e["peer"] for e in events] == ["peer-0000", "peer-0001"]
    assert {e["kind"] for e in events} == {"peer_added"}
