"""Writes to a store in a loop, printing `ack <n>` after each call returned (kill -9 test).

    python store_writer.py STORE_URL
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_fakes import make_peers
from hbmon.model import Event, EventKind
from hbmon.store.sql import open_store


def main() -> None:
    store = open_store(sys.argv[1])
    for i, peer in enumerate(make_peers(60_000, groups=0, prefix="w")):
        if i % 2 == 0:
            store.add_peers([peer])
        else:
            store.append_events([Event(EventKind.PEER_UPDATED, time.time(), peer=peer.name,
                                       details={"n": i})])
        print(f"ack {i}", flush=True)


if __name__ == "__main__":
    main()
