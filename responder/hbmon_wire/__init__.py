"""The stdlib-only modules both ends of a heartbeat share, shipped with the responder
(distribution `hbmon-responder`) so a peer needs nothing of the controller:

  protocol  the heartbeat wire contract (docs/protocol.md): header codec, codes, nonces
  sdnotify  systemd readiness (sd_notify), for the responder, the controller, the kernel target

The controller imports them as `hbmon.protocol` and `hbmon.sdnotify` (re-exports).
"""
