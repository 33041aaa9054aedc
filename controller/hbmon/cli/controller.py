"""`hbmon serve` (controller + REST API) and `hbmon shell` (p4runtime-shell, own venv)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import click

from hbmon.assets import state_dir
from hbmon.config import FabricConfig, SwitchConfig, load_config
from hbmon.model import ValidationError

SHELL_VENV = state_dir() / "p4rt-shell-venv"
SHELL_PACKAGE = "p4runtime-shell"


def _load(path: str) -> FabricConfig:
    try:
        return load_config(path)
    except ValidationError as exc:
        raise click.ClickException(f"{path}: {exc.field}: {exc.message}") from exc


@contextlib.contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT/SIGHUP end `serve` cleanly (switch sessions closed, store flushed)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT,
                                                        signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def build_api(fabric: Any, store: Any, bus: Any, config: FabricConfig, metrics: Any,
              host: str | None, port: int | None) -> Any:
    """The REST server of `hbmon.api` for this fabric, or None if the API is disabled."""
    if not config.api.enabled:
        return None
    from hbmon.api.app import create_app
    from hbmon.api.server import ApiServer
    from hbmon.api.settings import ApiSettings

    overrides: dict[str, Any] = {
        "read_auth": config.api.read_auth,
        "allow_anonymous_writes": config.api.allow_anonymous_writes,
    }
    if config.api.token_file is not None:
        overrides["token_file"] = str(config.api.token_file)
    for key in ("max_body_bytes", "max_sse_clients"):
        if getattr(config.api, key) is not None:
            overrides[key] = getattr(config.api, key)
    settings = ApiSettings.from_env(**overrides)
    # explicit values beat the environment: command line, then config file
    host = host or (config.api.host if "HBMON_API_HOST" not in os.environ else settings.host)
    if port is None:
        port = config.api.port if "HBMON_API_PORT" not in os.environ else settings.port
    settings = replace(settings, host=host, port=port)
    app = create_app(fabric, store, bus, settings, metrics)
    return ApiServer(app, settings.host, settings.port)


@click.command()
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False), help="YAML config file")
@click.option("--store", "store_url", help="Store URL (overrides the config file)")
@click.option("--host", help="API listen address (default from config: 127.0.0.1)")
@click.option("--port", type=int, help="API port (0: any free port)")
@click.option("--no-api", is_flag=True, help="Run the controller without the REST API")
@click.option("--log-level", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: str, store_url: str | None, host: str | None, port: int | None,
          no_api: bool, log_level: str) -> None:
    """Run the controller for every switch in the config file, and the REST API."""
    from rich.console import Console
    from rich.table import Table

    from hbmon.api.metrics import ControllerMetrics
    from hbmon.controller.fabric import Fabric
    from hbmon.sdnotify import notify
    from hbmon.store.events import EventBus
    from hbmon.store.sql import open_store
    from hbmon.store.webhooks import WebhookConfig, WebhookDispatcher, read_secret

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console(stderr=True)
    # the heartbeat thread must not wait 5 ms (the default) for the GIL while a poll of
    # thousands of cells decodes: that would jitter a 10 ms interval by half
    sys.setswitchinterval(0.0005)
    config = _load(config_path)
    if store_url:
        config = replace(config, store=store_url)
    if no_api:
        config = replace(config, api=replace(config.api, enabled=False))
    try:
        store = open_store(config.store)
    except ValidationError as exc:
        raise click.ClickException(f"{exc.field}: {exc.message}") from exc
    dispatcher = None
    try:
        hooks = WebhookConfig.from_env(urls=config.webhooks.urls)
        if config.webhooks.secret_file is not None:
            secret = read_secret("HBMON_WEBHOOK_SECRET", "HBMON_WEBHOOK_SECRET_FILE",
                                 str(config.webhooks.secret_file))
            hooks = replace(hooks, secret=secret)
        if hooks.urls:
            dispatcher = WebhookDispatcher(hooks).start()
        bus = EventBus(store, dispatcher)
        metrics = ControllerMetrics()
        fabric = Fabric(config, store, bus, metrics=metrics)
        api = build_api(fabric, store, bus, config, metrics, host, port)
    except ValidationError as exc:
        store.close()
        raise click.ClickException(f"{exc.field}: {exc.message}") from exc

    stop = threading.Event()
    with _stop_signals(stop):
        fabric.start()
        try:
            if api is not None:
                api.start()
            table = Table(title="hbmon controller", show_header=True)
            for column in ("switch", "kind", "gRPC", "device", "interval", "detect", "peers"):
                table.add_column(column)
            counts = {s.name: s.peers for s in fabric.switches()}
            for sw in config.switches:
                table.add_row(sw.name, sw.kind, sw.grpc, str(sw.device_id),
                              f"{sw.interval_ms:g} ms", f"x{sw.detect_mult}",
                              str(counts.get(sw.name, 0)))
            console.print(table)
            console.print(f"store: {config.store.split('@')[-1]}")
            if fabric.ha:  # docs/ha.md: leaders per switch among the replicas
                console.print(f"HA: replica {fabric.replica_id} (PostgreSQL leadership)")
            if api is not None:
                console.print(f"API: {api.url}/api/v1  dashboard: {api.url}/")
            notify("READY=1", "STATUS=" + (f"API on {api.url}" if api is not None
                                           else "controller running (no API)"))
            stop.wait()
        finally:
            notify("STOPPING=1")
            console.print("stopping")
            if api is not None:
                api.stop()
            fabric.stop()
            bus.close()
            if dispatcher is not None:
                dispatcher.stop()
            store.close()


# ---------------------------------------------------------------------------------------------
# shell


def _pick_switch(config: FabricConfig | None, name: str | None) -> SwitchConfig | None:
    if config is None:
        return None
    if name is None:
        if len(config.switches) > 1:
            names = ", ".join(s.name for s in config.switches)
            raise click.UsageError(f"several switches configured; pick one with --switch "
                                   f"({names})")
        return config.switches[0]
    for sw in config.switches:
        if sw.name == name:
            return sw
    raise click.UsageError(f"no switch named {name!r} in the config")


def shell_command(venv: Path, grpc_addr: str, device_id: int, election_id: int) -> list[str]:
    """p4runtime-shell connecting to a running pipeline (never `--config`: that would push
    a pipeline and wipe the controller's state)."""
    return [str(venv / "bin" / "python"), "-m", "p4runtime_sh", "--grpc-addr", grpc_addr,
            "--device-id", str(device_id),
            "--election-id", f"{election_id >> 64},{election_id & 0xFFFFFFFFFFFFFFFF}"]


def ensure_shell_venv(venv: Path = SHELL_VENV, echo: Any = click.echo) -> Path:
    """Create the p4runtime-shell venv on first use. It pins an old protobuf, so it never
    shares the project's .venv."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import p4runtime_sh"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return venv
    echo(f"creating {venv} with {SHELL_PACKAGE} (first use)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", SHELL_PACKAGE], check=True)
    return venv


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Take the switch's address and device id from this config file")
@click.option("--switch", "switch_name", help="Switch of the config file (if several)")
@click.option("--grpc-addr", help="P4Runtime server host:port (default from config)")
@click.option("--device-id", type=int, help="Device id (default from config, else 1)")
@click.option("--election-id", type=int, default=None,
              help="Election id (default: one below the controller's, so the shell is a "
                   "read-only backup while the controller runs)")
@click.option("--venv", "venv_path", type=click.Path(file_okay=False), default=str(SHELL_VENV),
              show_default=True)
def shell(config_path: str | None, switch_name: str | None, grpc_addr: str | None,
          device_id: int | None, election_id: int | None, venv_path: str) -> None:
    """Open p4runtime-shell against a switch (a backup client; its own virtualenv).

    Plaintext P4Runtime only (p4runtime-shell is given no certificates): a switch with
    `tls:` in the config is refused."""
    config = _load(config_path) if config_path else None
    sw = _pick_switch(config, switch_name)
    if sw is not None and sw.tls is not None:
        raise click.ClickException(f"switch {sw.name} uses TLS; hbmon shell speaks plaintext "
                                   "P4Runtime only")
    addr = grpc_addr or (sw.grpc if sw else "127.0.0.1:9559")
    device = device_id if device_id is not None else (sw.device_id if sw else 1)
    if election_id is None:
        controller_id = config.election_id if config else 1
        election_id = max(controller_id - 1, 1)
        if election_id >= controller_id:
            click.echo(f"note: election id {election_id} is not below the controller's "
                       f"({controller_id}); the shell may take over as primary", err=True)
    try:
        venv = ensure_shell_venv(Path(venv_path))
    except subprocess.CalledProcessError as exc:
        raise click.ClickException(f"could not set up {venv_path}: {exc}") from exc
    cmd = shell_command(venv, addr, device, election_id)
    click.echo(" ".join(cmd), err=True)
    # replace this process: the shell owns the terminal, Ctrl-D returns to the caller
    os.execv(cmd[0], cmd)
