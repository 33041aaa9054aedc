"""Latency of GET /api/v1/peers with 4,096 peers (issue 6 closing number). Reported only.

A real uvicorn server on 127.0.0.1 serves the app with a real SQLite store over one of
two services:

  fabric  the real controller object (`hbmon.controller.fabric.Fabric`) holding 4,096 peers,
          not started (no data plane needed): its list_peers/all_health are part of
          what a user waits for
  fake    the in-memory test service: what remains is the API's own cost (filtering,
          joining health, JSON, gzip, HTTP)

Sequential requests on one keep-alive connection, then 4 clients at once; p50/p90/p99/max.
The inventory listing is cached between changes (see `ListingCache`); "cold" variants turn
the cache off to show the cost right after a transition.

Usage: python bench/bench_api.py [--peers 4096] [--requests 400] [--service fabric|fake|both]
                                 [--out bench/results/api.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "api"))

import httpx  # noqa: E402
from api_fakes import FakeService, make_peers  # noqa: E402
from hbmon.api.app import create_app  # noqa: E402
from hbmon.api.metrics import ControllerMetrics  # noqa: E402
from hbmon.api.server import ApiServer  # noqa: E402
from hbmon.api.settings import ApiSettings  # noqa: E402
from hbmon.config import parse_config  # noqa: E402
from hbmon.controller.fabric import Fabric  # noqa: E402
from hbmon.model import Health  # noqa: E402
from hbmon.store.events import EventBus  # noqa: E402
from hbmon.store.sql import open_store  # noqa: E402


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def pct(p: float) -> float:
        # nearest-rank: the smallest sample with at least p% of samples at or below it
        rank = max(1, int(-(-p * len(ordered) // 100)))
        return round(ordered[rank - 1], 2)

    return {"p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": round(ordered[-1], 2), "mean_ms": round(statistics.fmean(ordered), 2),
            "requests": len(ordered)}


def run_variant(url: str, params: dict[str, str], encoding: str, requests: int,
                clients: int) -> dict[str, object]:
    samples: list[float] = []
    sizes: list[int] = []
    lock = threading.Lock()
    per_client = requests // clients

    def worker() -> None:
        headers = {"Accept-Encoding": encoding}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            for _ in range(5):  # warm the connection and caches
                c.get("/api/v1/peers", params=params)
            local = []
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = c.get("/api/v1/peers", params=params)
                local.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
            with lock:
                samples.extend(local)
                sizes.append(r.num_bytes_downloaded)  # on the wire (compressed or not)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    out: dict[str, object] = dict(percentiles(samples))
    out["clients"] = clients
    out["encoding"] = encoding
    out["params"] = params
    out["response_bytes_on_wire"] = sizes[0] if sizes else 0
    out["requests_per_s"] = round(len(samples) / wall, 1)
    return out


# label, query, Accept-Encoding, clients; "cold" = listing cache off (a transition before
# every request would have the same effect)
VARIANTS = [
    ("inventory, identity", {}, "identity", 1),
    ("inventory, identity, cold", {}, "identity", 1),
    ("inventory, gzip, cold", {}, "gzip", 1),
    ("inventory, gzip", {}, "gzip", 1),
    ("inventory+health, gzip", {"include": "health"}, "gzip", 1),
    ("filtered state=DOWN (few rows)", {"state": "DOWN"}, "identity", 1),
    ("inventory, identity, 4 clients", {}, "identity", 4),
]


def bench_service(kind: str, n_peers: int, requests: int, tmp: str) -> list[dict[str, object]]:
    store = open_store(f"sqlite:///{tmp}/{kind}.db")
    bus = EventBus(store)
    peers = make_peers(n_peers, groups=16, switch="leaf-1")
    service: object
    if kind == "fabric":
        for i, p in enumerate(peers):
            p.index = i
        store.add_peers(peers)
        config = parse_config({"switches": [{"name": "leaf-1", "grpc": "127.0.0.1:1"}]})
        service = Fabric(config, store, bus)  # loads the inventory; not started
    else:
        fake = FakeService(store, bus, switches=("leaf-1",))
        fake.add_peers(peers)
        fake.set_states({p.name: Health.UP for p in peers})
        fake.set_state(peers[0].name, Health.DOWN)
        for _ in range(5):
            fake.tick()
        service = fake
    app = create_app(service, store, bus,  # type: ignore[arg-type]
                     ApiSettings(port=0, token="bench-token-x"), ControllerMetrics())
    server = ApiServer(app, "127.0.0.1", 0).start()
    results = []
    try:
        cache = app.state.hbmon.listing
        for label, params, encoding, clients in VARIANTS:
            cache.max_age = -1.0 if label.endswith("cold") else 2.0
            r = run_variant(server.url, params, encoding, requests, clients)
            r["variant"] = label
            r["service"] = kind
            results.append(r)
            print(f"{kind:6s} {label:32s} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                  f"  max {r['max_ms']:7.2f} ms  {r['requests_per_s']:6.1f} req/s  "
                  f"{r['response_bytes_on_wire']} B", flush=True)
    finally:
        server.stop()
        bus.close()
        store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4096)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--service", choices=["fabric", "fake", "both"], default="both")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    args = parser.parse_args()

    kinds = ["fabric", "fake"] if args.service == "both" else [args.service]
    results: list[dict[str, object]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hbmon-bench-api-") as tmp:
        for kind in kinds:
            results += bench_service(kind, args.peers, args.requests, tmp)

    report = {
        "bench": "api_get_peers",
        "peers": args.peers,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "note": "shared 2-CPU VM with other jobs (a p4c build) running: absolute numbers are "
                "inflated; compare variants within one run",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        if r["variant"] in ("inventory, identity", "inventory, identity, cold"):
            print(f"p99 GET /api/v1/peers, {args.peers} peers, one client, {r['service']}, "
                  f"{r['variant']}: {r['p99_ms']} ms (p50 {r['p50_ms']} ms)")


if __name__ == "__main__":
    main()
