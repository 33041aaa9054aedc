"""systemd's readiness protocol (sd_notify(3)), without libsystemd: one datagram of
newline-separated assignments to the socket named by $NOTIFY_SOCKET. A unit with
`Type=notify` counts as started only once READY=1 arrives, so `After=` ordering and
`systemctl start` wait until the service really serves. Without $NOTIFY_SOCKET (not run
by systemd) every call is a no-op."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=listening on ..."); True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(assignments).encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True
