"""systemd readiness, as the controller and the kernel target name it: `hbmon_wire.sdnotify`
(responder/hbmon_wire/sdnotify.py, carried by the `hbmon-responder` distribution, which
`hbmon` depends on). Edit it there: this module only re-exports it."""

from hbmon_wire.sdnotify import notify

__all__ = ["notify"]
