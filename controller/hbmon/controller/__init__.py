"""The health logic and the controller that runs it.

  health  `HealthEngine`: pure logic, register slots and digests in, peer verdicts and events out
  driver  `SwitchDriver`: one switch's P4Runtime session, its set-up, rounds and polls
  fabric  `Fabric`: every switch, the inventory, HA leadership and the event outbox
          (the `HbmonService` the API and CLI use)
"""
