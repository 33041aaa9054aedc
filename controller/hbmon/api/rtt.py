"""A short RTT history per peer for the dashboard's sparklines.

The data plane keeps only the last/min/max/EWMA RTT; the dashboard wants a trend. A
background thread samples the service every `interval` seconds into a ring per peer. A
sample is None while the peer is not answering (DOWN, UNKNOWN, ADMIN_DOWN), so a dead peer
shows a gap instead of repeating its last RTT.
"""

from __future__ import annotations

import collections
import logging
import threading

from ..model import Health
from ..service import HbmonService

# Sampling does not follow the heartbeat rate, so "rx changed since the last sample" would
# show false gaps; the state says whether the last RTT is current.
_ANSWERING = frozenset({Health.UP, Health.DEGRADED})

log = logging.getLogger(__name__)


class RttHistory:
    def __init__(self, service: HbmonService, interval: float, samples: int) -> None:
        self.service = service
        self.interval = interval
        self.samples = samples
        self._rings: dict[str, collections.deque[int | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        health = self.service.all_health()
        with self._lock:
            seen = set()
            for h in health:
                seen.add(h.name)
                ring = self._rings.get(h.name)
                if ring is None:
                    ring = self._rings[h.name] = collections.deque(maxlen=self.samples)
                answering = h.state in _ANSWERING and h.slot.rx_count > 0
                ring.append(h.slot.rtt_last_us if answering else None)
            for gone in set(self._rings) - seen:
                del self._rings[gone]

    def snapshot(self, names: set[str] | None = None) -> dict[str, list[int | None]]:
        with self._lock:
            return {name: list(ring) for name, ring in self._rings.items()
                    if names is None or name in names}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:
                # The controller may be reconnecting; the next tick tries again.
                log.exception("RTT sampling failed")

    def start(self) -> None:
        if self._thread is None:
            try:
                self.sample()
            except Exception:
                log.exception("RTT sampling failed")
            self._thread = threading.Thread(target=self._run, name="hbmon-rtt", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
