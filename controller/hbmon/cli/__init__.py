"""`hbmon` command: one click group; each area registers its own subcommands.

Subcommand modules are imported lazily so `hbmon responder` in a lab namespace does not
pay for FastAPI or gRPC imports.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click.Command
_COMMANDS: dict[str, str] = {
    "responder": "hbmon_responder.cli:responder",
    "serve": "hbmon.cli.controller:serve",
    "shell": "hbmon.cli.controller:shell",
    "status": "hbmon.cli.api:status",
    "peers": "hbmon.cli.api:peers",
    "watch": "hbmon.cli.api:watch",
    "demo": "hbmon.cli.demo:demo",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="hbmon")
def main() -> None:
    """hbmon: heartbeat monitoring offloaded to a P4 / eBPF data plane."""
