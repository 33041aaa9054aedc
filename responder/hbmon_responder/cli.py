"""`hbmon responder`: answer heartbeats, or steer a running responder.

Serve:   hbmon responder [--port 9190] [--bind ADDR]... [--ctl SOCKET] [--loss 20] ...
Control: hbmon responder --ctl SOCKET get | set KEY=VALUE... | reset | stop | start
"""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType
from typing import Any

import click
from hbmon_wire.protocol import REQUEST_PORT, ValidationError
from hbmon_wire.sdnotify import notify

from hbmon_responder.responder import (
    STATUS_NAMES,
    ControlClient,
    ControlError,
    Faults,
    Responder,
    apply_changes,
    parse_assignments,
)

_ACTIONS = ("get", "set", "reset", "stop", "start")


@click.command()
@click.version_option(package_name="hbmon-responder")
@click.option("--port", type=click.IntRange(1, 65535), default=REQUEST_PORT, show_default=True,
              help="UDP port to answer on.")
@click.option("--bind", "binds", multiple=True, metavar="ADDR",
              help="Bind to this address (repeatable). Default: 0.0.0.0, answering from "
                   "whichever address each request was sent to.")
@click.option("--ctl", "ctl_path", metavar="SOCKET",
              help="UNIX control socket: a serving responder listens here; with an ACTION, "
                   "the running responder to steer.")
@click.option("--mute", is_flag=True, help="Start without answering (a stopped peer).")
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0, help="Drop this % of answers.")
@click.option("--delay-ms", type=click.FloatRange(0, 60_000), default=0.0,
              help="Answer this many ms late.")
@click.option("--flap", type=click.FloatRange(0, 3600), default=0.0, metavar="SECONDS",
              help="Answer for SECONDS, stay silent for SECONDS, and so on.")
@click.option("--status", type=click.Choice(sorted(STATUS_NAMES)), default="healthy",
              help="Status reported in every answer.")
@click.option("--load", type=click.IntRange(0, 255), default=0,
              help="Load reported in every answer (percent; 255 = unknown).")
@click.option("--seed", type=int, default=None, help="Seed of the loss dice (reproducible runs).")
@click.option("--batch/--no-batch", default=True, show_default=True,
              help="recvmmsg/sendmmsg batches (else one system call per datagram each way).")
@click.option("--json", "as_json", is_flag=True, help="Control actions: print the raw JSON reply.")
@click.argument("action", required=False, type=click.Choice(_ACTIONS))
@click.argument("assignments", nargs=-1)
def responder(
    port: int, binds: tuple[str, ...], ctl_path: str | None, mute: bool, loss: float,
    delay_ms: float, flap: float, status: str, load: int, seed: int | None, batch: bool,
    as_json: bool,
    action: str | None, assignments: tuple[str, ...],
) -> None:
    """Answer hbmon heartbeats (docs/protocol.md, version 2), with fault injection.

    Answers echo the request's nonce and leave with IPv4 TTL 255 (RFC 5082), from the
    address the request was sent to.

    \b
    Control a running responder through its --ctl socket (`hbmon-responder` is the same
    command as `hbmon responder`):
      hbmon responder --ctl /tmp/p1.sock set loss=20 delay_ms=5 status=degraded
      hbmon responder --ctl /tmp/p1.sock stop      # stop answering (mute=true)
      hbmon responder --ctl /tmp/p1.sock start     # answer again
      hbmon responder --ctl /tmp/p1.sock get       # faults and counters
      hbmon responder --ctl /tmp/p1.sock reset     # no faults, counters zeroed
    Settings: mute, loss (%), delay_ms, flap (s), status (healthy|degraded|draining), load.
    """
    if action is not None:
        _control(ctl_path, action, assignments, as_json)
        return
    if assignments:
        raise click.UsageError(f"unexpected arguments: {' '.join(assignments)}")
    faults = Faults(mute=mute, loss=loss, delay_ms=delay_ms, flap=flap, status=status, load=load)
    server = Responder(port=port, binds=binds or ("0.0.0.0",), ctl_path=ctl_path, faults=faults,
                       seed=seed, batched=batch)
    try:
        server.open()
    except OSError as exc:
        raise click.ClickException(str(exc.strerror or exc)) from exc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = ", ".join(f"{a}:{p}" for a, p in server.addresses)
    click.echo(f"hbmon responder: answering on {where}"
               + (f", control socket {ctl_path}" if ctl_path else ""))
    sys.stdout.flush()
    notify("READY=1", f"STATUS=answering on {where}")
    try:
        server.serve_forever()
    finally:
        notify("STOPPING=1")
        server.close()


def _control(ctl_path: str | None, action: str, assignments: tuple[str, ...],
             as_json: bool) -> None:
    if not ctl_path:
        raise click.UsageError(f"'{action}' needs --ctl SOCKET (the responder's control socket)")
    try:
        if action == "set":
            changes = parse_assignments(assignments)
            if not changes:
                raise click.UsageError("set needs KEY=VALUE arguments")
            apply_changes(Faults(), changes)  # refuse bad input before talking to anyone
            message: dict[str, Any] = {"op": "set", **changes}
        elif assignments:
            raise click.UsageError(f"'{action}' takes no KEY=VALUE arguments")
        elif action == "stop":
            message = {"op": "set", "mute": True}
        elif action == "start":
            message = {"op": "set", "mute": False}
        else:
            message = {"op": action}
        reply = ControlClient(ctl_path).request(message)
    except (ValidationError, ControlError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach responder at {ctl_path}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    f, s = reply["faults"], reply["stats"]
    click.echo("faults: " + " ".join(f"{k}={v}" for k, v in f.items()))
    invalid = sum(s["invalid"].values())
    click.echo(f"stats: received={s['received']} answered={s['answered']} invalid={invalid} "
               f"dropped_mute={s['dropped_mute']} dropped_loss={s['dropped_loss']} "
               f"dropped_flap={s['dropped_flap']} delayed_pending={s['delayed_pending']}")


if __name__ == "__main__":
    responder()
