"""A short RTT history per peer for the dashboard's sparklines.

The data plane keeps only the last/min/max/EWMA RTT; the dashboard wants a trend. A
background thread samples the service every `interval` seconds into a ring per peer. A
sample is None while the peer is not answering (DOWN, UNKNOWN, ADMIN_DOWN), so a dead peer
shows a gap instead of repeating its last RTT.

Sampling runs every second whether or not a dashboard is open, so it must not cost a Python
object per peer: the rings are one array (peer x sample) written a column at a time, from
the service's `rtt_sample()` arrays when it has them (the controller's `Fabric` does).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from hbmon.api.service import HbmonService
from hbmon.model import Health

# Sampling does not follow the heartbeat rate, so "rx changed since the last sample" would
# show false gaps; the state says whether the last RTT is current.
_ANSWERING = frozenset({Health.UP, Health.DEGRADED})
_GAP, _NONE = -1, -2  # ring cell: not answering (a gap), not sampled yet (no cell)

log = logging.getLogger(__name__)


class RttHistory:
    def __init__(self, service: HbmonService, interval: float, samples: int) -> None:
        self.service = service
        self.interval = interval
        self.samples = samples
        self._names: list[str] = []  # peer of each ring row
        self._rows: dict[str, int] = {}
        self._ring = np.full((0, samples), _NONE, np.int64)
        self._next = 0  # ring column the next sample goes to
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        arrays = getattr(self.service, "rtt_sample", None)
        if arrays is not None:
            names, rtt, answering = arrays()
            values = np.where(answering, rtt, _GAP)
        else:  # a service without arrays: one PeerHealth per peer
            health = self.service.all_health()
            names = [h.name for h in health]
            values = np.array([h.slot.rtt_last_us
                               if h.state in _ANSWERING and h.slot.rx_count > 0 else _GAP
                               for h in health], np.int64)
        with self._lock:
            if names is not self._names and names != self._names:
                self._rebuild(names)
            self._ring[:, self._next] = values
            self._next = (self._next + 1) % self.samples

    def _rebuild(self, names: list[str]) -> None:
        """New rows for a changed inventory: kept peers keep their history."""
        ring = np.full((len(names), self.samples), _NONE, np.int64)
        rows = {name: i for i, name in enumerate(names)}
        for name, i in rows.items():
            old = self._rows.get(name)
            if old is not None:
                ring[i] = self._ring[old]
        self._names, self._rows, self._ring = names, rows, ring

    def snapshot(self, names: set[str] | None = None) -> dict[str, list[int | None]]:
        """Each peer's samples, oldest first (None: not answering)."""
        with self._lock:
            wanted = self._names if names is None else [n for n in names if n in self._rows]
            rows = np.array([self._rows[n] for n in wanted], np.intp)
            chronological = np.roll(self._ring[rows], -self._next, axis=1).tolist()
        return {name: [None if v == _GAP else v for v in cells if v != _NONE]
                for name, cells in zip(wanted, chronological, strict=True)}

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
