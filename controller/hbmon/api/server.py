"""Running the app with uvicorn in a background thread (for `hbmon serve` and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    """uvicorn's main loop wakes every 100 ms to refresh the Date header and look for a
    shutdown request: ten wake-ups a second of an idle controller. This one ticks once a
    second (the Date header's resolution) and wakes at once when `request_exit` is called."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick refreshes headers on multiples of 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            should_exit = await self.on_tick(counter)

    def request_exit(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)


class ApiServer:
    """uvicorn in a thread: `start()` returns once the socket accepts connections.

    Port 0 binds a free port chosen by the kernel (no probe-then-bind race); `port` tells
    which. `stop()` ends the app's SSE streams first, so shutdown does not wait for
    clients that would otherwise stay connected forever.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080, *,
        log_level: str = "warning", access_log: bool = False,
    ) -> None:
        self.app = app
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=access_log,
            lifespan="on", timeout_graceful_shutdown=5, server_header=False,
        )
        self._server = _QuietServer(config)
        self._thread: threading.Thread | None = None
        self.host = host

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> ApiServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._server.run, name="hbmon-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        done = threading.Event()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"API server on {self.host} failed to start (see log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"API server did not start within {timeout} s")
            done.wait(0.01)  # polling uvicorn's flag; there is no callback to wait on
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        state = getattr(self.app.state, "hbmon", None)
        if state is not None:
            state.close_streams()
        self._server.request_exit()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
