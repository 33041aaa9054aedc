"""Interfaces between the controller core, persistence and the fabric-manager surface.

`Store` is implemented by `hbmon.store.sql` (SQLite, PostgreSQL). `HbmonService` is what the
REST API, metrics and CLI need from the running controller (`hbmon.controller.fabric.Fabric`
implements it). Keeping them as Protocols lets the API be unit-tested against a fake
service and the controller against an in-memory SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from hbmon.model import Event, Health, Peer, PeerHealth, SwitchInfo


class Store(Protocol):
    """Durable inventory, transition history and settings.

    Every method is one transaction: a bulk call applies all or nothing, and a call that
    returned has been committed durably (survives kill -9).
    """

    def list_peers(self) -> list[Peer]: ...

    def get_peer(self, name: str) -> Peer:  # raises NotFoundError
        ...

    def add_peers(self, peers: Sequence[Peer]) -> None:  # ConflictError on name/address/id clash
        ...

    def update_peer(self, peer: Peer) -> None: ...

    def remove_peers(self, names: Sequence[str]) -> None:  # NotFoundError, nothing removed
        """Also records each removed peer's (switch, index) as needing a reset."""
        ...

    def pending_slot_resets(self) -> dict[str, set[int]]:
        """Switch -> slots a peer left (removal, move) whose registers were not reset."""
        ...

    def slots_reset(self, switch: str, indexes: Sequence[int]) -> None: ...

    def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Persist events; returns them with their assigned ids (strictly increasing)."""
        ...

    def events(
        self, *, peer: str | None = None, after_id: int = 0, limit: int = 100,
        before_id: int | None = None,
    ) -> list[Event]: ...

    def get_setting(self, key: str) -> Any | None: ...

    def set_setting(self, key: str, value: Any) -> None: ...

    def setting_default(self, key: str, value: Any) -> Any:
        """The stored value of `key`, storing `value` first if there is none (atomic)."""
        ...

    def close(self) -> None: ...


class EventSink(Protocol):
    """Where the controller sends every event (persist first, then fan out to SSE/webhooks)."""

    def publish(self, events: Iterable[Event]) -> list[Event]: ...


class HbmonService(Protocol):
    """The running controller as the API sees it."""

    def list_peers(self) -> list[Peer]: ...

    def get_peer(self, name: str) -> Peer: ...

    def add_peers(self, peers: Sequence[Peer]) -> list[Peer]:
        """All or nothing; returns the peers with their assigned indexes."""
        ...

    def update_peer(self, name: str, changes: dict[str, Any]) -> Peer: ...

    def remove_peers(self, names: Sequence[str]) -> None: ...

    def peer_listing(self) -> list[tuple[Peer, Health | None, float | None, str | None]]:
        """Every peer sorted by name with its reported state, since and reason: what
        GET /peers lists, without a copy per peer. The Peer objects may be the service's
        own: never modify them (the service replaces a Peer when it changes, so an
        unchanged object is an unchanged peer)."""
        ...

    def health(self, name: str) -> PeerHealth: ...

    def all_health(self) -> list[PeerHealth]: ...

    def summary(self) -> dict[Health, int]: ...

    def switches(self) -> list[SwitchInfo]: ...

    def dataplane_counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per switch, per reason name: (packets, bytes) of the `hb_reason` counter."""
        ...

    def ready(self) -> bool:
        """True once every configured switch is connected and has been read at least once."""
        ...
