"""The heartbeat wire contract, as the controller names it: `hbmon_wire.protocol`.

The one implementation lives in `hbmon_wire` (responder/hbmon_wire/protocol.py), which the
`hbmon-responder` distribution carries so a peer installs it without the controller's
dependencies; `hbmon` depends on that distribution. Edit the contract there: this module only
re-exports its public names (the same objects: `hbmon.protocol.Reason is
hbmon_wire.protocol.Reason`).
"""

from hbmon_wire.protocol import *  # noqa: F403
