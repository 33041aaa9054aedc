"""The controller's YAML configuration file.

One file describes a fabric: the targets (switches / hosts) one controller process drives,
the heartbeat timing, the health thresholds, the store, the REST API and the initial peer
inventory. Example (every key but `switches` is optional)::

    interval_ms: 100           # heartbeat period
    detect_mult: 3             # missed requests before DOWN
    poll_interval_ms: 800      # verdict registers read this often (loss/RTT verdicts <= 1 s)
    detail_interval_ms: 5000   # all 15 registers and the hb_reason counters this often
    monitor: {mac: "02:00:00:00:00:01", ip: 198.18.0.1}
    election_id: 10
    store: sqlite:///hbmon.db
    health: {rtt_degraded_us: 50000, loss_degraded: 0.2, flap_count: 4, hold_down_s: 10}
    api: {host: 127.0.0.1, port: 8080, token_file: /etc/hbmon/token, read_auth: false,
          max_body_bytes: 33554432, max_sse_clients: 256}
    webhooks: {urls: ["https://pager.example/hook"], secret_file: /etc/hbmon/hook.key}
    ha: {replica_id: ctl-a, program_wait_s: 3}   # replicas sharing PostgreSQL (docs/ha.md)
    switches:
      - name: s1
        kind: kernel             # kernel | bmv2
        grpc: 127.0.0.1:9559
        device_id: 1
        p4info: p4src/build/heartbeat.p4info.txtpb
        ports: {1: hb1m1}        # data-plane port -> interface (informational / targets)
        tls: {ca: ca.pem, cert: client.pem, key: client.key, server_name: s1.example}
        gtsm: true               # count only answers with TTL 255 (directly attached peers)
      - name: s2
        kind: bmv2
        grpc: 127.0.0.1:9560
        device_id: 1
        thrift_port: 9090
        bmv2_json: p4src/build/heartbeat.json
        interval_ms: 50          # per-switch overrides of interval/detect/poll/monitor
    bfd: {tick_ms: 30}           # BFD fan-out period (default: smallest desired min TX / 10)
    peers:
      - {name: web1, switch: s1, address: 198.18.1.1, peer_id: 1, mac: "02:..:01", port: 1}
      - {name: r1, kind: bfd, address: 198.18.1.2, port: 1, desired_min_tx_ms: 300,
         required_min_rx_ms: 300, detect_mult: 3}   # an RFC 5880 session (docs/bfd.md)

`tls` (optional) makes the P4Runtime channel TLS: `ca` verifies the switch's certificate
(default: the system's roots), `cert` + `key` are the controller's client certificate for
mutual TLS, `server_name` is the name the switch's certificate must carry when it is not
the host of `grpc`. Without `tls` the channel is plaintext (keep it on loopback).

`gtsm` (default false) turns on RFC 5082's TTL check for every peer of the switch: an
answer counts only if it arrives with IPv4 TTL 255 (it crossed no router); anything else is
counted BAD_TTL and changes nothing (docs/protocol.md).

Relative paths are relative to the config file. Errors name the offending key path
(`switches[1].grpc`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import yaml

from hbmon.assets import BMV2_JSON_NAME, P4INFO_NAME, p4_output
from hbmon.model import BFD_DEFAULT_TX_MS, SLOT_FIELDS, Peer, ValidationError
from hbmon.protocol import GTSM_MIN_TTL

DEFAULT_P4INFO = p4_output(P4INFO_NAME)
DEFAULT_BMV2_JSON = p4_output(BMV2_JSON_NAME)
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of the health engine (see docs: every enter threshold has an exit one)."""

    detect_mult: int = 3  # default; a peer may carry its own
    rtt_degraded_us: int = 50_000  # RTT above this: DEGRADED
    rtt_recover_us: int | None = None  # back below this to recover (default 80 % of enter)
    rtt_metric: str = "ewma"  # "ewma" (data plane's EWMA) or "last"
    loss_degraded: float = 0.2  # loss ratio over the window above this: DEGRADED
    loss_recover: float = 0.05  # back to this or below to recover
    loss_window: int = 10  # polls in the sliding loss window
    loss_min_requests: int = 5  # fewer requests in the window: no loss verdict
    flap_count: int = 4  # alive<->dead changes within flap_window_s that start damping
    flap_window_s: float = 30.0
    hold_down_s: float = 10.0  # damped until no change for this long

    def validate(self) -> None:
        if not 1 <= self.detect_mult <= 255:
            raise ValidationError("detect_mult", "must be 1 .. 255")
        if self.rtt_degraded_us <= 0:
            raise ValidationError("rtt_degraded_us", "must be > 0")
        if self.rtt_recover_us is not None and not 0 < self.rtt_recover_us <= self.rtt_degraded_us:
            raise ValidationError("rtt_recover_us", "must be > 0 and <= rtt_degraded_us")
        if self.rtt_metric not in ("ewma", "last"):
            raise ValidationError("rtt_metric", "must be 'ewma' or 'last'")
        if not 0.0 < self.loss_degraded <= 1.0:
            raise ValidationError("loss_degraded", "must be in (0, 1]")
        if not 0.0 <= self.loss_recover <= self.loss_degraded:
            raise ValidationError("loss_recover", "must be in [0, loss_degraded]")
        if self.loss_window < 1:
            raise ValidationError("loss_window", "must be >= 1")
        if self.loss_min_requests < 1:
            raise ValidationError("loss_min_requests", "must be >= 1")
        if self.flap_count < 2:
            raise ValidationError("flap_count", "must be >= 2")
        if self.flap_window_s <= 0:
            raise ValidationError("flap_window_s", "must be > 0")
        if self.hold_down_s < 0:
            raise ValidationError("hold_down_s", "must be >= 0")

    @property
    def rtt_exit_us(self) -> int:
        if self.rtt_recover_us is not None:
            return self.rtt_recover_us
        return self.rtt_degraded_us * 4 // 5

    @property
    def detail_fields(self) -> tuple[str, ...]:
        """The slot fields no verdict uses (informational: a poll may read them less often)."""
        return tuple(f for f in SLOT_FIELDS if f not in self.verdict_fields)

    @property
    def verdict_fields(self) -> tuple[str, ...]:
        """The slot fields the verdicts depend on (a poll must read these every time)."""
        rtt = "rtt_ewma_us" if self.rtt_metric == "ewma" else "rtt_last_us"
        return tuple(f for f in SLOT_FIELDS if f in (
            "rx_count", "tx_count", "miss_count", "last_rx_us", "peer_status", "state", rtt))


@dataclass(frozen=True, slots=True)
class MonitorAddress:
    """Source of the request template (and where responses go)."""

    mac: str = "02:00:00:00:00:01"
    ip: str = "198.18.0.1"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for one switch's P4Runtime channel (files checked readable when loaded)."""

    ca: Path | None = None  # PEM roots the switch's certificate must chain to; None: system
    cert: Path | None = None  # PEM client certificate (mutual TLS), with `key`
    key: Path | None = None
    server_name: str | None = None  # expected name in the switch's certificate

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    name: str
    grpc: str  # host:port of the P4Runtime server
    device_id: int = 1
    kind: str = "kernel"  # "kernel" | "bmv2"
    thrift_port: int | None = None  # bmv2 register access (hbmon.dataplane.registers)
    p4info: Path = DEFAULT_P4INFO
    bmv2_json: Path | None = None  # pushed with the P4Info on bmv2
    ports: Mapping[int, str] = field(default_factory=dict)
    interval_ms: float = 100.0
    detect_mult: int = 3
    # Verdict registers (rx, tx, miss, state, last_rx_us, peer_status, the RTT metric) are
    # read every poll_interval_ms: a loss or RTT verdict reaches the API within
    # poll_interval_ms + one read (UP/DOWN also come at once by digest), so the default stays
    # below 1 s. The other registers (dup, last_seq, last_tx_us, last_tx_seq, RTT
    # min/max/other, load) and the hb_reason counters are informational: read every
    # detail_interval_ms.
    poll_interval_ms: float = 800.0
    detail_interval_ms: float = 5000.0
    monitor: MonitorAddress = field(default_factory=MonitorAddress)
    # "auto": push when the device runs another P4Info; "always"; "never"
    push_pipeline: str = "auto"
    tls: TlsConfig | None = None  # None: plaintext P4Runtime
    # GTSM (RFC 5082): answers from this switch's peers count only with IPv4 TTL 255, i.e.
    # from a directly attached peer (min_ttl 255 in every peer entry; off: min_ttl 0)
    gtsm: bool = False

    @property
    def min_ttl(self) -> int:
        """The `min_ttl` of this switch's peer entries (docs/protocol.md classification)."""
        return GTSM_MIN_TTL if self.gtsm else 0

    @property
    def interval_s(self) -> float:
        return self.interval_ms / 1000.0

    @property
    def poll_interval_s(self) -> float:
        return self.poll_interval_ms / 1000.0

    @property
    def detail_interval_s(self) -> float:
        return self.detail_interval_ms / 1000.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Keys passed to `hbmon.api.settings.ApiSettings.from_env` (the env overrides none of
    what is set here; the token comes from `token_file` or $HBMON_API_TOKEN)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    read_auth: bool = False
    allow_anonymous_writes: bool = False
    max_body_bytes: int | None = None  # None: ApiSettings' default
    max_sse_clients: int | None = None


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    urls: tuple[str, ...] = ()
    secret_file: Path | None = None


@dataclass(frozen=True, slots=True)
class HaConfig:
    """Replicas sharing a PostgreSQL store (docs/ha.md); ignored with SQLite."""

    replica_id: str | None = None  # None: hostname:pid
    program_wait_s: float = 3.0  # a write waits this long for its leader to program it


@dataclass(frozen=True, slots=True)
class BfdSettings:
    """The BFD fan-out (docs/bfd.md "Transmit"): group 2's template goes out every tick."""

    tick_ms: float | None = None  # None: the smallest desired min TX of the switch / 10

    def tick_us(self, peers: Sequence[Peer]) -> int:
        """The tick for these bfd peers, in microseconds (at least 1 ms)."""
        if self.tick_ms is not None:
            return max(1000, round(self.tick_ms * 1000))
        fastest = min((p.desired_min_tx_ms or BFD_DEFAULT_TX_MS for p in peers),
                      default=BFD_DEFAULT_TX_MS)
        return max(1000, fastest * 100)  # ms * 1000 / 10


@dataclass(frozen=True, slots=True)
class FabricConfig:
    switches: tuple[SwitchConfig, ...]
    peers: tuple[Peer, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    # above 1 so a backup client (`hbmon shell`) can take a lower id
    election_id: int = 10
    store: str = "sqlite:///hbmon.db"
    api: ApiConfig = field(default_factory=ApiConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    bfd: BfdSettings = field(default_factory=BfdSettings)
    write_batch_size: int = 1000
    path: Path | None = None

    def switch(self, name: str) -> SwitchConfig:
        for sw in self.switches:
            if sw.name == name:
                return sw
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ValidationError(where, f"must be {what}")
    if not isinstance(value, kind):
        raise ValidationError(where, f"must be {what}, got {type(value).__name__}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, default: float, *,
            minimum: float, maximum: float | None = None, integer: bool = False) -> Any:
    if key not in data or data[key] is None:
        return default
    path = f"{where}{key}"
    value = _expect(data[key], int if integer else (int, float), path,
                    "an integer" if integer else "a number")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum} .. {maximum}" if maximum is not None else f">= {minimum}"
        raise ValidationError(path, f"must be {bounds}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ValidationError(f"{where}{key}", f"unknown key (known: {known})")


def _path(base: Path, value: Any, where: str) -> Path:
    _expect(value, str, where, "a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _monitor(data: Any, where: str, default: MonitorAddress) -> MonitorAddress:
    if data is None:
        return default
    _expect(data, dict, where.rstrip("."), "a mapping")
    _check_keys(data, {"mac", "ip"}, where)
    mac = data.get("mac", default.mac)
    ip = data.get("ip", default.ip)
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise ValidationError(f"{where}mac", f"not a MAC address: {mac!r}")
    try:
        ipaddress.IPv4Address(ip)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{where}ip", f"not an IPv4 address: {ip!r}") from exc
    return MonitorAddress(mac.lower(), str(ip))


_SWITCH_KEYS = {
    "name", "grpc", "device_id", "kind", "thrift_port", "p4info", "bmv2_json", "ports",
    "interval_ms", "detect_mult", "poll_interval_ms", "detail_interval_ms", "monitor",
    "push_pipeline", "tls", "gtsm",
}


def _tls(data: Any, where: str, base: Path) -> TlsConfig | None:
    if data is None:
        return None
    _expect(data, dict, where.rstrip("."), "a mapping (ca, cert, key, server_name)")
    _check_keys(data, {"ca", "cert", "key", "server_name"}, where)
    files: dict[str, Path | None] = {}
    for key in ("ca", "cert", "key"):
        if data.get(key) is None:
            files[key] = None
            continue
        path = _path(base, data[key], f"{where}{key}")
        try:
            with path.open("rb"):
                pass  # readable now: a typo fails at load, not at the first connection
        except OSError as exc:
            raise ValidationError(f"{where}{key}",
                                  f"cannot read {path}: {exc.strerror}") from exc
        files[key] = path
    if (files["cert"] is None) != (files["key"] is None):
        missing = "key" if files["key"] is None else "cert"
        raise ValidationError(f"{where}{missing}", "cert and key go together (mutual TLS)")
    server_name = data.get("server_name")
    if server_name is not None and (not isinstance(server_name, str) or not server_name):
        raise ValidationError(f"{where}server_name", "must be a host name")
    return TlsConfig(ca=files["ca"], cert=files["cert"], key=files["key"],
                     server_name=server_name)


def _switch(data: Any, i: int, base: Path, defaults: dict[str, Any]) -> SwitchConfig:
    where = f"switches[{i}]."
    _expect(data, dict, f"switches[{i}]", "a mapping")
    _check_keys(data, _SWITCH_KEYS, where)
    for required in ("name", "grpc"):
        if required not in data:
            raise ValidationError(f"{where}{required}", "required")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(f"{where}name", "1-63 letters, digits, '_', '.', '-'")
    grpc_addr = data["grpc"]
    if not isinstance(grpc_addr, str) or not re.match(r"^[^\s:]+:\d{1,5}$", grpc_addr):
        raise ValidationError(f"{where}grpc", f"must be host:port, got {grpc_addr!r}")
    kind = data.get("kind", "kernel")
    if kind not in ("kernel", "bmv2"):
        raise ValidationError(f"{where}kind", "must be 'kernel' or 'bmv2'")
    thrift_port = data.get("thrift_port")
    if thrift_port is not None:
        thrift_port = _number(data, "thrift_port", where, 0, minimum=1, maximum=65535,
                              integer=True)
    elif kind == "bmv2":
        thrift_port = 9090
    ports_raw = data.get("ports") or {}
    _expect(ports_raw, dict, f"{where}ports", "a mapping of port number to interface")
    ports: dict[int, str] = {}
    for key, iface in ports_raw.items():
        try:
            port = int(key)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{where}ports", f"port {key!r} is not a number") from exc
        if not 0 <= port < 511 or not isinstance(iface, str) or not iface:
            raise ValidationError(f"{where}ports.{key}", "port 0..510 -> interface name")
        ports[port] = iface
    p4info = _path(base, data["p4info"], f"{where}p4info") if "p4info" in data \
        else DEFAULT_P4INFO
    bmv2_json = None
    if data.get("bmv2_json") is not None:
        bmv2_json = _path(base, data["bmv2_json"], f"{where}bmv2_json")
    elif kind == "bmv2":
        bmv2_json = DEFAULT_BMV2_JSON
    push = data.get("push_pipeline", "auto")
    if push not in ("auto", "always", "never"):
        raise ValidationError(f"{where}push_pipeline", "must be auto, always or never")
    return SwitchConfig(
        name=name, grpc=grpc_addr,
        device_id=_number(data, "device_id", where, 1, minimum=0, maximum=2**64 - 1,
                          integer=True),
        kind=kind, thrift_port=thrift_port, p4info=p4info, bmv2_json=bmv2_json, ports=ports,
        interval_ms=_number(data, "interval_ms", where, defaults["interval_ms"], minimum=1,
                            maximum=60_000),
        detect_mult=_number(data, "detect_mult", where, defaults["detect_mult"], minimum=1,
                            maximum=255, integer=True),
        poll_interval_ms=_number(data, "poll_interval_ms", where,
                                 defaults["poll_interval_ms"], minimum=1, maximum=600_000),
        detail_interval_ms=_number(data, "detail_interval_ms", where,
                                   defaults["detail_interval_ms"], minimum=1,
                                   maximum=3_600_000),
        monitor=_monitor(data.get("monitor"), f"{where}monitor.", defaults["monitor"]),
        push_pipeline=push,
        tls=_tls(data.get("tls"), f"{where}tls.", base),
        gtsm=_expect(data.get("gtsm", False), bool, f"{where}gtsm", "true or false"),
    )


def _health(data: Any, detect_mult: int) -> HealthConfig:
    if data is None:
        data = {}
    _expect(data, dict, "health", "a mapping")
    known = {f.name for f in fields(HealthConfig)} - {"detect_mult"}
    _check_keys(data, known, "health.")
    values: dict[str, Any] = {"detect_mult": detect_mult}
    for f in fields(HealthConfig):
        if f.name in data:
            v = data[f.name]
            if f.name == "rtt_metric":
                _expect(v, str, "health.rtt_metric", "'ewma' or 'last'")
            elif f.name == "rtt_recover_us" and v is None:
                pass
            else:
                _expect(v, (int, float), f"health.{f.name}", "a number")
            values[f.name] = v
    for name in ("loss_window", "loss_min_requests", "flap_count", "rtt_degraded_us"):
        if name in values and not isinstance(values[name], int):
            raise ValidationError(f"health.{name}", "must be an integer")
    cfg = HealthConfig(**values)
    try:
        cfg.validate()
    except ValidationError as exc:
        raise ValidationError(f"health.{exc.field}", exc.message) from exc
    return cfg


def parse_config(data: Any, base: Path | None = None, path: Path | None = None,
                 ) -> FabricConfig:
    """Build a `FabricConfig` from parsed YAML; raises ValidationError naming the key."""
    base = base or Path.cwd()
    if data is None:
        data = {}
    _expect(data, dict, "config", "a mapping")
    _check_keys(data, {
        "interval_ms", "detect_mult", "poll_interval_ms", "detail_interval_ms", "monitor",
        "election_id", "store",
        "health", "api", "webhooks", "ha", "switches", "peers", "write_batch_size", "bfd",
    }, "")
    defaults = {
        "interval_ms": _number(data, "interval_ms", "", 100.0, minimum=1, maximum=60_000),
        "detect_mult": _number(data, "detect_mult", "", 3, minimum=1, maximum=255,
                               integer=True),
        "poll_interval_ms": _number(data, "poll_interval_ms", "", 800.0, minimum=1,
                                    maximum=600_000),
        "detail_interval_ms": _number(data, "detail_interval_ms", "", 5000.0, minimum=1,
                                      maximum=3_600_000),
        "monitor": _monitor(data.get("monitor"), "monitor.", MonitorAddress()),
    }
    raw_switches = data.get("switches")
    if not raw_switches:
        raise ValidationError("switches", "at least one switch is required")
    _expect(raw_switches, list, "switches", "a list")
    switches = tuple(_switch(s, i, base, defaults) for i, s in enumerate(raw_switches))
    names = [s.name for s in switches]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValidationError(f"switches[{i}].name", f"duplicate switch name {name!r}")
    endpoints = [(s.grpc, s.device_id) for s in switches]
    for i, ep in enumerate(endpoints):
        if ep in endpoints[:i]:
            raise ValidationError(f"switches[{i}].grpc", "same address and device_id twice")

    peers: list[Peer] = []
    raw_peers = data.get("peers") or []
    _expect(raw_peers, list, "peers", "a list")
    for i, raw in enumerate(raw_peers):
        _expect(raw, dict, f"peers[{i}]", "a mapping")
        item = dict(raw)
        if "switch" not in item:
            if len(switches) != 1:
                raise ValidationError(f"peers[{i}].switch", "required with several switches")
            item["switch"] = switches[0].name
        try:
            peer = Peer.from_dict(item)
        except ValidationError as exc:
            raise ValidationError(f"peers[{i}].{exc.field}", exc.message) from exc
        except TypeError as exc:
            raise ValidationError(f"peers[{i}]", str(exc)) from exc
        if peer.switch not in names:
            raise ValidationError(f"peers[{i}].switch", f"no switch named {peer.switch!r}")
        peers.append(peer)

    api_raw = data.get("api") or {}
    _expect(api_raw, dict, "api", "a mapping")
    _check_keys(api_raw, {f.name for f in fields(ApiConfig)}, "api.")
    api = ApiConfig(
        enabled=bool(api_raw.get("enabled", True)),
        host=str(api_raw.get("host", "127.0.0.1")),
        port=_number(api_raw, "port", "api.", 8080, minimum=0, maximum=65535, integer=True),
        token_file=_path(base, api_raw["token_file"], "api.token_file")
        if api_raw.get("token_file") else None,
        read_auth=bool(api_raw.get("read_auth", False)),
        allow_anonymous_writes=bool(api_raw.get("allow_anonymous_writes", False)),
        max_body_bytes=_number(api_raw, "max_body_bytes", "api.", 0, minimum=1024,
                               maximum=2**31, integer=True) or None,
        max_sse_clients=_number(api_raw, "max_sse_clients", "api.", 0, minimum=1,
                                maximum=100_000, integer=True) or None,
    )
    hooks_raw = data.get("webhooks") or {}
    _expect(hooks_raw, dict, "webhooks", "a mapping")
    _check_keys(hooks_raw, {"urls", "secret_file"}, "webhooks.")
    urls = hooks_raw.get("urls") or []
    _expect(urls, list, "webhooks.urls", "a list of URLs")
    webhooks = WebhooksConfig(
        urls=tuple(str(u) for u in urls),
        secret_file=_path(base, hooks_raw["secret_file"], "webhooks.secret_file")
        if hooks_raw.get("secret_file") else None,
    )
    ha_raw = data.get("ha") or {}
    _expect(ha_raw, dict, "ha", "a mapping")
    _check_keys(ha_raw, {"replica_id", "program_wait_s"}, "ha.")
    replica_id = ha_raw.get("replica_id")
    if replica_id is not None:
        _expect(replica_id, str, "ha.replica_id", "a string")
        if not replica_id.strip():
            raise ValidationError("ha.replica_id", "must not be empty")
    ha = HaConfig(replica_id=replica_id,
                  program_wait_s=float(_number(ha_raw, "program_wait_s", "ha.", 3.0,
                                               minimum=0, maximum=600)))
    bfd_raw = data.get("bfd") or {}
    _expect(bfd_raw, dict, "bfd", "a mapping")
    _check_keys(bfd_raw, {"tick_ms"}, "bfd.")
    tick = bfd_raw.get("tick_ms")
    bfd = BfdSettings(tick_ms=None if tick is None else float(
        _number(bfd_raw, "tick_ms", "bfd.", 0, minimum=1, maximum=60_000)))
    store = data.get("store", "sqlite:///hbmon.db")
    _expect(store, str, "store", "a URL")
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////") \
            and ":memory:" not in store:
        # relative SQLite paths are relative to the config file, like every other path
        store = "sqlite:///" + str((base / store[len("sqlite:///"):]).resolve())
    return FabricConfig(
        switches=switches, peers=tuple(peers),
        health=_health(data.get("health"), defaults["detect_mult"]),
        election_id=_number(data, "election_id", "", 10, minimum=1, maximum=2**128 - 1,
                            integer=True),
        store=store, api=api, webhooks=webhooks, ha=ha, bfd=bfd,
        write_batch_size=_number(data, "write_batch_size", "", 1000, minimum=1,
                                 maximum=100_000, integer=True),
        path=path,
    )


def load_config(path: str | Path) -> FabricConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError("config", f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError("config", f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, base=path.resolve().parent, path=path)
