"""The peer side of hbmon: the heartbeat responder (`hbmon-responder`, `hbmon responder`).

Its own distribution (`hbmon-responder`, responder/pyproject.toml) so a peer needs nothing of
the controller: `responder` imports only the standard library and the wire contract
`hbmon_wire.protocol` (stdlib-only, shipped alongside); `cli` adds click and
`hbmon_wire.sdnotify` (stdlib-only).

  responder  `Responder`: answers heartbeat requests, with fault injection for tests and demos
  cli        the click command: `hbmon-responder`, and `hbmon responder` in the controller's CLI
"""
