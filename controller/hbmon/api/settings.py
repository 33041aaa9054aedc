"""Settings of the REST API / dashboard server."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace

from hbmon.model import ValidationError
from hbmon.store.webhooks import read_secret

TOKEN_ENV = "HBMON_API_TOKEN"
TOKEN_FILE_ENV = "HBMON_API_TOKEN_FILE"
# The largest legal bulk add: 65,536 peers (max_bulk), each with every field at its longest
# (63-char name, switch and group, 255.255.255.254, peer_id 2**32-1, ...) is 372 bytes a
# peer in compact JSON, 473 pretty-printed with indent=2: 23.3 / 29.6 MiB. 32 MiB takes it
# with room for a few labels; a body of any size above it is refused while being read.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValidationError(name, f"expected a boolean (true/false), got {value!r}")


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"  # loopback unless the operator opens it on purpose
    port: int = 8080
    # The bearer token every write needs. Kept out of repr so it never reaches a log line.
    token: str | None = field(default=None, repr=False)
    read_auth: bool = False  # True: reads (and /metrics, SSE) need the token too
    # Without a token, writes are refused; this opens them (local demos only).
    allow_anonymous_writes: bool = False
    sse_keepalive: float = 15.0  # seconds between SSE comments on a quiet stream
    rtt_sample_interval: float = 1.0  # dashboard sparkline sampling
    rtt_samples: int = 120
    dashboard_refresh: float = 2.0  # seconds between the dashboard's health reads
    max_bulk: int = 65_536
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # request bodies above: 413 while reading
    # Live event streams at once; each holds a subscription buffer and a task (503 beyond).
    max_sse_clients: int = 256

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if not self.host or any(c.isspace() for c in self.host):
                raise ValidationError("host", f"not a host name or address: {self.host!r}") \
                    from None
        if not 0 <= self.port < 65536:
            raise ValidationError("port", "must be 0 .. 65535")
        if self.token is not None and len(self.token) < 8:
            raise ValidationError("token", "must be at least 8 characters")
        if self.read_auth and self.token is None:
            raise ValidationError("read_auth", "closing reads needs a token (HBMON_API_TOKEN)")
        for name in ("sse_keepalive", "rtt_sample_interval", "dashboard_refresh"):
            if getattr(self, name) <= 0:
                raise ValidationError(name, "must be > 0")
        if self.max_body_bytes < 1024:
            raise ValidationError("max_body_bytes", "must be at least 1024")
        if self.max_sse_clients < 1:
            raise ValidationError("max_sse_clients", "must be at least 1")
        if self.rtt_samples < 2:
            raise ValidationError("rtt_samples", "must be at least 2")

    @classmethod
    def from_env(cls, **overrides: object) -> ApiSettings:
        """Token from `HBMON_API_TOKEN` or the file named by `HBMON_API_TOKEN_FILE`;
        `HBMON_API_HOST`, `HBMON_API_PORT`, `HBMON_API_READ_AUTH` override the defaults;
        keyword arguments override everything (e.g. values from the config file)."""
        token_file = overrides.pop("token_file", None)
        secret = read_secret(TOKEN_ENV, TOKEN_FILE_ENV,
                             str(token_file) if token_file is not None else None)
        base = cls(
            host=os.environ.get("HBMON_API_HOST", cls.host),
            port=int(os.environ.get("HBMON_API_PORT", cls.port)),
            token=secret.decode() if secret is not None else None,
            read_auth=_env_bool("HBMON_API_READ_AUTH", cls.read_auth),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def writes_enabled(self) -> bool:
        return self.token is not None or self.allow_anonymous_writes
