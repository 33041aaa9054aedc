"""`hbmon status`, `hbmon peers add/rm/list`, `hbmon watch`: clients of the REST API.

They talk HTTP to a running `hbmon serve` (`--url`, default `$HBMON_URL` or
http://127.0.0.1:8080) with the bearer token from `--token`, `$HBMON_API_TOKEN`,
`--token-file` or `$HBMON_API_TOKEN_FILE`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hbmon.model import EventKind, Health

DEFAULT_URL = "http://127.0.0.1:8080"
STATE_STYLE = {
    "UP": "bold green", "DEGRADED": "bold yellow", "DOWN": "bold red", "UNKNOWN": "dim",
    "ADMIN_DOWN": "blue",
}
F = TypeVar("F", bound=Callable[..., Any])


class ApiError(click.ClickException):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{message} (field {field!r}, HTTP {status})" if field
                         else f"{message} (HTTP {status})")
        self.status = status
        self.field = field


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "hbmon-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def stream_events(
        self, last_event_id: int | None, params: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        """Events from the SSE stream; raises httpx errors when the connection drops."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(10.0, read=None)  # the stream is quiet between events
        with self._http.stream("GET", "/api/v1/events", headers=headers, params=params,
                               timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            data: list[str] = []
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield json.loads("\n".join(data))
                        data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


def _api_error(response: httpx.Response) -> ApiError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, dict):
        return ApiError(response.status_code, str(detail.get("field", "")),
                        str(detail.get("message", "")))
    return ApiError(response.status_code, "", str(detail or response.reason_phrase))


def _read_token(token: str | None, token_file: str | None) -> str | None:
    if token:
        return token.strip()
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise click.BadParameter(f"cannot read {token_file}: {exc.strerror}",
                                     param_hint="--token-file") from exc
    return None


def api_options(fn: F) -> F:
    """--url / --token / --token-file, resolved into an `ApiClient` passed as `client`."""

    # functools.wraps carries the command's own click options (__click_params__) over.
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, url: str, token: str | None, token_file: str | None,
                **kwargs: Any) -> Any:
        client = ApiClient(url, _read_token(token, token_file))
        ctx.call_on_close(client.close)
        return fn(client=client, **kwargs)

    decorated = click.pass_context(wrapper)
    for option in (
        click.option("--token-file", envvar="HBMON_API_TOKEN_FILE", default=None,
                     type=click.Path(dir_okay=False), help="File holding the token"),
        click.option("--token", envvar="HBMON_API_TOKEN", default=None,
                     help="Bearer token ($HBMON_API_TOKEN)"),
        click.option("--url", envvar="HBMON_URL", default=DEFAULT_URL, show_default=True,
                     help="Base URL of the hbmon API ($HBMON_URL)"),
    ):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


def _state_text(state: str | None) -> Text:
    state = state or "UNKNOWN"
    return Text(state, style=STATE_STYLE.get(state, ""))


def _rtt(us: int | None) -> str:
    if not us:
        return "-"
    return f"{us} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _peer_params(state: str | None, switch: str | None, group: str | None) -> dict[str, str]:
    params = {"include": "health"}
    if state:
        params["state"] = state
    if switch:
        params["switch"] = switch
    if group:
        params["group"] = group
    return params


def _peers_table(peers: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", expand=False)
    for col, kw in (("name", {}), ("state", {}), ("since", {}), ("address", {}),
                    ("switch", {}), ("group", {}), ("RTT", {"justify": "right"}),
                    ("loss", {"justify": "right"}), ("rx", {"justify": "right"}),
                    ("reason", {})):
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for p in peers:
        h = p.get("health") or {}
        table.add_row(
            p["name"], _state_text(p.get("state")), _ago(p.get("since")), p["address"],
            p["switch"], p.get("group") or "", _rtt(h.get("rtt_last_us")),
            f"{h.get('loss_ratio', 0) * 100:.1f}%" if h else "-", str(h.get("rx_count", "-")),
            p.get("reason") or "",
        )
    return table


_STATE_CHOICE = click.Choice([h.value for h in Health], case_sensitive=False)


@click.command()
@api_options
@click.option("--state", type=_STATE_CHOICE, help="Only peers in this state")
@click.option("--switch", help="Only peers of this switch")
@click.option("--group", help="Only peers of this group")
@click.option("--problems", is_flag=True, help="Only peers that are not UP")
@click.option("--limit", default=200, show_default=True, help="Peer rows to show (0: all)")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables")
def status(client: ApiClient, state: str | None, switch: str | None, group: str | None,
           problems: bool, limit: int, as_json: bool) -> None:
    """Health summary, switches and peers of a running hbmon."""
    summary = client.request("GET", "/api/v1/health")
    switches = client.request("GET", "/api/v1/switches")["switches"]
    peers = client.request("GET", "/api/v1/peers",
                           params=_peer_params(state and state.upper(), switch, group))["peers"]
    if problems:
        peers = [p for p in peers if p.get("state") != "UP"]
    if as_json:
        click.echo(json.dumps({"summary": summary, "switches": switches, "peers": peers},
                              indent=2))
        return
    console = Console()
    line = Text(f"{summary['total']} peers  ")
    for s in ("UP", "DEGRADED", "DOWN", "UNKNOWN", "ADMIN_DOWN"):
        line.append(f"{s} {summary['states'].get(s, 0)}", style=STATE_STYLE[s])
        line.append("  ")
    line.append("ready" if summary.get("ready") else "not ready",
                style="green" if summary.get("ready") else "red")
    console.print(line)

    sw_table = Table(title="switches", header_style="bold")
    for col in ("switch", "kind", "address", "connected", "primary", "peers", "last poll",
                "error"):
        sw_table.add_column(col)
    for s in switches:
        sw_table.add_row(
            s["name"], s["kind"], s["address"],
            Text("yes", style="green") if s["connected"] else Text("no", style="bold red"),
            "yes" if s["primary"] else "no", str(s["peers"]), _ago(s["last_poll"]),
            s.get("last_error") or "")
    console.print(sw_table)

    shown = peers if limit <= 0 else peers[:limit]
    console.print(_peers_table(shown, title="peers"))
    if len(shown) < len(peers):
        console.print(f"... {len(peers) - len(shown)} more (--limit 0 shows all)",
                      style="dim")


@click.group()
def peers() -> None:
    """List, add and remove monitored peers."""


@peers.command("list")
@api_options
@click.option("--state", type=_STATE_CHOICE, help="Only peers in this state")
@click.option("--switch", help="Only peers of this switch")
@click.option("--group", help="Only peers of this group")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def peers_list(client: ApiClient, state: str | None, switch: str | None, group: str | None,
               as_json: bool) -> None:
    """List peers with their state."""
    rows = client.request("GET", "/api/v1/peers",
                          params=_peer_params(state and state.upper(), switch, group))["peers"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    Console().print(_peers_table(rows))


def _parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--label")
        out[key] = value
    return out


def _load_peer_file(path: str) -> list[dict[str, Any]]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict) and "peers" in data:
        data = data["peers"]
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise click.BadParameter("expected a list of peers (or {peers: [...]})",
                                 param_hint="--file")
    return data


@peers.command("add")
@api_options
@click.argument("name", required=False)
@click.option("--address", help="IPv4 address of the peer")
@click.option("--peer-id", type=int, help="Peer id carried in the heartbeat header")
@click.option("--mac", help="Next-hop MAC address (omitted: resolved by the controller)")
@click.option("--port", type=int, help="Data-plane port")
@click.option("--switch", default="default", show_default=True)
@click.option("--group")
@click.option("--label", "labels", multiple=True, help="key=value (repeatable)")
@click.option("--detect-mult", type=int, help="Misses before DOWN (default: switch's)")
@click.option("--admin-down", is_flag=True, help="Add without monitoring")
@click.option("--kind", type=click.Choice(["heartbeat", "bfd"]), default="heartbeat",
              show_default=True, help="bfd: an RFC 5880 BFD neighbour (no --peer-id)")
@click.option("--desired-min-tx-ms", type=int, help="BFD: desired min TX interval (300)")
@click.option("--required-min-rx-ms", type=int, help="BFD: required min RX interval (300)")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="JSON/YAML list of peers: added all or nothing")
def peers_add(client: ApiClient, name: str | None, address: str | None, peer_id: int | None,
              mac: str | None, port: int | None, switch: str, group: str | None,
              labels: tuple[str, ...], detect_mult: int | None, admin_down: bool,
              kind: str, desired_min_tx_ms: int | None, required_min_rx_ms: int | None,
              file_: str | None) -> None:
    """Add one peer (NAME and options) or many (--file)."""
    if file_:
        if name:
            raise click.UsageError("give either NAME or --file")
        items = _load_peer_file(file_)
        result = client.request("POST", "/api/v1/peers/bulk", json={"peers": items})
        click.echo(f"added {result['total']} peers")
        return
    if not name:
        raise click.UsageError("NAME is required (or --file)")
    required = [("--address", address), ("--port", port)]
    if kind == "heartbeat":
        required.append(("--peer-id", peer_id))
    missing = [opt for opt, value in required if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    body: dict[str, Any] = {"name": name, "address": address, "peer_id": peer_id, "mac": mac,
                            "port": port, "switch": switch, "labels": _parse_labels(labels),
                            "admin_down": admin_down, "kind": kind}
    for key, value in (("desired_min_tx_ms", desired_min_tx_ms),
                       ("required_min_rx_ms", required_min_rx_ms)):
        if value is not None:
            body[key] = value
    if group:
        body["group"] = group
    if detect_mult is not None:
        body["detect_mult"] = detect_mult
    peer = client.request("POST", "/api/v1/peers", json=body)
    click.echo(f"added {peer['name']} (switch {peer['switch']}, index {peer['index']})")


@peers.command("rm")
@api_options
@click.argument("names", nargs=-1, required=True)
def peers_rm(client: ApiClient, names: tuple[str, ...]) -> None:
    """Remove peers (all or nothing)."""
    result = client.request("POST", "/api/v1/peers/bulk-delete", json={"names": list(names)})
    click.echo(f"removed {len(result['removed'])} peers")


def _event_line(e: dict[str, Any]) -> Text:
    t = time.strftime("%H:%M:%S", time.localtime(e["time"]))
    line = Text(f"{t} #{e['id']:<6} ", style="dim")
    if e["kind"] == EventKind.TRANSITION:
        line.append(f"{e['peer']} ", style="bold")
        line.append_text(_state_text(e["old_state"]))
        line.append(" -> ")
        line.append_text(_state_text(e["new_state"]))
        if e.get("reason"):
            line.append(f"  {e['reason']}", style="dim")
    elif e["kind"] == EventKind.SWITCH:
        line.append(f"switch {e['switch']}: {e.get('reason', '')}", style="cyan")
    else:
        line.append(f"{e['peer']} ", style="bold")
        line.append(e["kind"].replace("peer_", ""), style="cyan")
    return line


@click.command()
@api_options
@click.option("--peer", help="Only this peer's events")
@click.option("--kind", type=click.Choice([k.value for k in EventKind]), multiple=True,
              help="Only these kinds (repeatable)")
@click.option("--last-event-id", type=int, help="Replay events after this id first")
@click.option("--count", type=int, default=0, help="Exit after this many events (0: never)")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
def watch(client: ApiClient, peer: str | None, kind: tuple[str, ...],
          last_event_id: int | None, count: int, as_json: bool) -> None:
    """Follow live events (reconnects and resumes where it left off)."""
    console = Console(highlight=False)
    params: dict[str, Any] = {}
    if peer:
        params["peer"] = peer
    if kind:
        params["kind"] = list(kind)
    seen = 0
    backoff = 0.5
    last = last_event_id
    while True:
        try:
            for event in client.stream_events(last, params):
                backoff = 0.5
                last = event["id"]
                if as_json:
                    click.echo(json.dumps(event))
                else:
                    console.print(_event_line(event))
                seen += 1
                if count and seen >= count:
                    return
        except httpx.HTTPError as exc:
            console.print(f"stream interrupted ({exc.__class__.__name__}); reconnecting",
                          style="dim")
        except KeyboardInterrupt:
            return
        # Reconnect with backoff, resuming after the last event shown.
        time.sleep(backoff)
        backoff = min(backoff * 2, 15.0)
