"""The API's view of the running controller.

`HbmonService` is what the REST API, metrics and CLI need from the running controller
(`hbmon.controller.fabric.Fabric` implements it). Keeping it a Protocol lets the API be
unit-tested against a fake service. The persistence interfaces (`Store`, `EventSink`) are in
`hbmon.interfaces`, below the API, as the store implements them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hbmon.model import Health, Peer, PeerHealth, SwitchInfo


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
