"""The peer side of hbmon: the heartbeat responder (`hbmon responder`).

Its own package so a peer needs nothing of the controller: `responder` imports only the
standard library and the wire contract `hbmon.protocol` (itself stdlib-only); `cli` adds click
and `hbmon.sdnotify` (stdlib-only).

  responder  `Responder`: answers heartbeat requests, with fault injection for tests and demos
  cli        the `hbmon responder` click command
"""
