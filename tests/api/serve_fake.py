"""A standalone API server over a fake service and a real store (the kill -9 test's target).

    python serve_fake.py --store sqlite:///path.db --port-file FILE

The token comes from $HBMON_API_TOKEN. Once listening, the port is written to FILE
(atomically: written to a temp name, then renamed) and the process serves until killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_fakes import FakeService
from hbmon.api.app import create_app
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    store = open_store(args.store)
    bus = EventBus(store)
    service = FakeService(store, bus)
    settings = ApiSettings.from_env(port=0)
    app = create_app(service, store, bus, settings, ControllerMetrics())
    server = ApiServer(app, "127.0.0.1", 0).start()
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(server.port))
    os.replace(tmp, args.port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    store.close()


if __name__ == "__main__":
    main()
