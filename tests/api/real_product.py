"""The real product for the API tests: `hbmon serve`'s parts, assembled as `hbmon serve`
assembles them (controller/hbmon/cli/controller.py): the controller (`Fabric`), the event
bus with its webhook dispatcher, the metrics, the REST/SSE API over uvicorn and a real
store, driving real P4Runtime targets over gRPC. The targets are the kernel target's
P4Runtime device over its in-memory data plane (hbmon_kernel.memory, what
`hbmon-kernel-target --datapath memory` serves), one per switch, in this process.

They run in the test process (not as a child) so a test can reach what only exists inside:
the API's caches, the bus's subscribers, the metrics registry. tests/integration/ runs the
`hbmon serve` command itself over the kernel target in namespace labs.

The peers are simulated, not faked product parts: the memory data plane stands for the
wire, and `Peers` decides which slots answer the target's requests and with what RTT.
Time is the test's: the target runs a round only when the test calls `tick()` (its
schedule is armed by the controller as on the kernel target), so every counter is exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from api_harness import TOKEN
from hbmon.api.app import create_app
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.config import DEFAULT_P4INFO, parse_config
from hbmon.controller.fabric import Fabric
from hbmon.model import Event, EventKind, Health, Peer
from hbmon.protocol import PlaneState
from hbmon.store.events import EventBus
from hbmon.store.sql import SqlStore, open_store
from hbmon.store.webhooks import WebhookDispatcher
from hbmon_kernel.memory import MemoryTarget, serve_memory_target

SETTLE = 30.0
RTT_DEGRADED_US = 5_000
HEALTHY_RTT_US = 250
SLOW_RTT_US = RTT_DEGRADED_US * 64  # one answer this slow lifts the EWMA past the threshold
# a round a peer does not answer is counted, never a verdict (DOWN comes from `set_state`
# as the data plane's DOWN event): silent peers stay UNKNOWN however many rounds run
DETECT_MULT = 255
HEALTH = {"rtt_degraded_us": RTT_DEGRADED_US, "loss_degraded": 1.0, "loss_recover": 1.0,
          "flap_count": 1000, "hold_down_s": 0.5}


def wait_until(cond: Callable[[], bool], what: str, timeout: float = SETTLE) -> None:
    """Poll `cond` until it holds (a bounded poll, never a fixed wait)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        tick.wait(0.01)


class Peers:
    """The peers behind one memory target: a slot answers the target's requests while it
    has an RTT here (the target's `answer` hook, as hb_xdp.c records a valid response)."""

    def __init__(self, target: MemoryTarget) -> None:
        self.target = target
        self.dp = target.datapath
        self.rtt: dict[int, int] = {}
        self._answer = self.dp.answer
        self.dp.answer = self._maybe_answer  # type: ignore[method-assign]
        self.dp.answering = True  # every round asks `_maybe_answer` per replica

    def _maybe_answer(self, index: int, rtt_us: int = HEALTHY_RTT_US) -> None:
        rtt = self.rtt.get(index)
        if rtt is not None:
            self._answer(index, rtt)

    def answer_now(self, index: int) -> None:
        """A response to the last request, now (needs one request sent to the slot)."""
        if not self.dp.register_read("hb_tx_count", index):
            self.dp.run_rounds(1)  # the first request: answered inside the round
        else:
            self._answer(index, self.rtt[index])

    def register(self, name: str, index: int) -> int:
        return self.dp.register_read(name, index)


@dataclass
class Product:
    url: str
    server: ApiServer
    service: Fabric
    store: SqlStore
    bus: EventBus
    metrics: ControllerMetrics
    settings: ApiSettings
    targets: dict[str, MemoryTarget]
    peers: dict[str, Peers] = field(default_factory=dict)
    owns_targets: bool = True

    def client(self, token: str | None = TOKEN, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0,
                            **kwargs)  # type: ignore[arg-type]

    # -- the inventory, through the controller --------------------------------------------

    def add_peers(self, peers: Sequence[Peer]) -> list[Peer]:
        return self.service.add_peers(peers)

    def slot(self, name: str) -> tuple[Peers, int]:
        peer = self.service.get_peer(name)
        assert peer.index is not None, peer
        return self.peers[peer.switch], peer.index

    # -- the simulated peers ----------------------------------------------------------------

    def state(self, name: str) -> Health:
        return self.states()[name]

    def states(self) -> dict[str, Health]:
        """Every peer's state, from one read of the controller (no register read)."""
        return {h.name: h.state for h in self.service.all_health()}

    def wait_state(self, name: str, state: Health) -> None:
        wait_until(lambda: self.state(name) == state,
                   f"{name} {state} (now {self.service.health(name)})")

    def set_state(self, name: str, state: Health, reason: str = "") -> list[Event]:
        """Bring peer `name` to `state` the way the network would: UP answers, DEGRADED
        answers slowly, DOWN falls silent and the data plane declares it DOWN, ADMIN_DOWN is
        an operator's PATCH. Returns the transitions this made (`reason` is ignored: the
        controller words its own)."""
        return self.set_states({name: state})

    def set_states(self, states: dict[str, Health], reason: str = "") -> list[Event]:
        after = self.last_event_id()
        for name, state in states.items():
            peers, index = self.slot(name)
            if state == Health.ADMIN_DOWN:
                self.service.update_peer(name, {"admin_down": True})
            elif state == Health.DOWN:
                peers.rtt.pop(index, None)
                peers.dp.peer_event(index, PlaneState.DOWN,
                                    last_seq=peers.register("hb_last_seq", index))
            elif state in (Health.UP, Health.DEGRADED):
                peers.rtt[index] = HEALTHY_RTT_US if state == Health.UP else SLOW_RTT_US
                peers.answer_now(index)
            else:
                raise ValueError(f"a peer cannot be brought to {state}")
        # the RTT verdict follows the data plane's EWMA: a few more answers may be needed
        deadline = time.monotonic() + SETTLE
        next_answer = time.monotonic() + 0.2
        gate = threading.Event()
        while True:
            now_states = self.states()
            lagging = [n for n, s in states.items() if now_states[n] != s]
            if not lagging:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"peers not in their states: "
                                     f"{ {n: (now_states[n], states[n]) for n in lagging} }")
            if time.monotonic() >= next_answer:
                for name in lagging:
                    if states[name] in (Health.UP, Health.DEGRADED):
                        peers, index = self.slot(name)
                        peers.answer_now(index)
                next_answer = time.monotonic() + 0.2
            gate.wait(0.01)
        self.wait_polled()
        self.service.flush_events()
        return self.store.events(after_id=after, limit=100_000,
                                 kinds=[EventKind.TRANSITION])

    def last_event_id(self) -> int:
        """The newest stored event's id, once the controller's pending events are stored."""
        self.service.flush_events()
        events = self.store.events(before_id=2**62, limit=1)
        return events[-1].id if events else 0

    def tick(self, rtt_us: dict[str, int] | None = None,
             default_rtt_us: int | None = None) -> None:
        """One heartbeat round on every switch: answering peers answer (with `rtt_us` of
        their name where given), silent ones miss; returns once a poll has read it."""
        # a peer brought to DEGRADED stays slow; a silent one stays silent
        for name, rtt in (rtt_us or {}).items():
            peers, index = self.slot(name)
            if peers.rtt.get(index, SLOW_RTT_US) != SLOW_RTT_US:
                peers.rtt[index] = rtt
        if default_rtt_us is not None:
            for peers in self.peers.values():
                for index, rtt in peers.rtt.items():
                    if rtt != SLOW_RTT_US:
                        peers.rtt[index] = default_rtt_us
        for peers in self.peers.values():
            peers.dp.run_rounds(1)
        self.wait_polled()

    def wait_polled(self) -> None:
        """Until polls have read what the registers hold now for every peer (a detail poll,
        every detail_interval_ms, for the RTTs)."""
        fields = ("tx_count", "rx_count", "miss_count", "rtt_last_us", "rtt_ewma_us")
        want: dict[str, tuple[int, ...]] = {}
        for peer in self.service.list_peers():
            if peer.index is not None and not peer.admin_down:
                peers = self.peers[peer.switch]
                want[peer.name] = tuple(peers.register(f"hb_{f}", peer.index) for f in fields)

        def polled() -> bool:
            read = {h.name: tuple(getattr(h.slot, f) for f in fields)
                    for h in self.service.all_health()}
            return all(read[n] == v for n, v in want.items())
        wait_until(polled, "polls reading the registers")

    def stop(self) -> None:
        self.server.stop()
        self.service.stop()
        self.bus.close()
        self.store.close()
        if self.owns_targets:
            for target in self.targets.values():
                target.stop()


def start_product(tmp_path: Path, *, switches: Sequence[str] = ("default", "leaf-2"),
                  webhooks: WebhookDispatcher | None = None, db: str = "hbmon.db",
                  store_url: str | None = None, config: dict[str, Any] | None = None,
                  replica_of: Product | None = None, **settings_kwargs: Any) -> Product:
    """Memory targets for `switches`, then the controller, bus, metrics and API over them
    (cli_controller.serve's order), ready: every switch set up and polled once.
    `replica_of`: another replica of the same fabric (a shared PostgreSQL store), driving
    that product's targets."""
    targets = replica_of.targets if replica_of is not None else \
        {sw: serve_memory_target(ports=range(1, 9)) for sw in switches}
    try:
        url = store_url or f"sqlite:///{tmp_path / db}"
        data: dict[str, Any] = {
            "interval_ms": 100, "detect_mult": DETECT_MULT, "poll_interval_ms": 20,
            "detail_interval_ms": 100, "health": HEALTH, "store": url,
            "monitor": {"mac": "02:48:42:ff:00:01", "ip": "198.18.0.254"},
            "switches": [{"name": sw, "kind": "kernel", "grpc": t.address, "device_id": 1,
                          "p4info": str(DEFAULT_P4INFO)} for sw, t in targets.items()],
            "peers": [],
        }
        data.update(config or {})
        store = open_store(url)
        bus = EventBus(store, webhooks)
        metrics = ControllerMetrics()
        fabric = Fabric(parse_config(data), store, bus, metrics=metrics)
        settings_kwargs.setdefault("token", TOKEN)
        settings_kwargs.setdefault("rtt_sample_interval", 0.2)
        settings = ApiSettings(port=0, **settings_kwargs)
        fabric.start()
        if not fabric.wait_ready(SETTLE):
            fabric.stop()
            raise AssertionError(f"controller not ready: {fabric.switches()}")
        server = ApiServer(create_app(fabric, store, bus, settings, metrics),
                           "127.0.0.1", 0).start()
    except BaseException:
        if replica_of is None:
            for t in targets.values():
                t.stop()
        raise
    product = Product(server.url, server, fabric, store, bus, metrics, settings, targets,
                      owns_targets=replica_of is None)
    product.peers = replica_of.peers if replica_of is not None else \
        {sw: Peers(t) for sw, t in targets.items()}
    return product


ProductFactory = Callable[..., Product]


@contextmanager
def product_factory(tmp_path: Path) -> Iterator[ProductFactory]:
    started: list[Product] = []

    def make(**kwargs: Any) -> Product:
        p = start_product(tmp_path, **kwargs)
        started.append(p)
        return p

    try:
        yield make
    finally:
        for p in reversed(started):
            p.stop()
