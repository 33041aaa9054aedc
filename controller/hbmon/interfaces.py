"""The persistence interfaces the controller core uses and `hbmon.store` implements.

`Store` is implemented by `hbmon.store.sql` (SQLite, PostgreSQL), `EventSink` by
`hbmon.store.events.EventBus`. They live here, below both the controller and the API, so
that the store implements them without importing `hbmon.api` (a lower layer never imports a
higher one) and the controller can be tested against an in-memory SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from hbmon.model import Event, Peer


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
