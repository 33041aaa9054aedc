"""Ordinary traffic (not UDP to port 9191): switched by l2_forward, untouched, uncounted."""

from __future__ import annotations

import hb_examples as ex
from hb_base import HbTest, peer_mac

HOST_B = "02:48:42:00:02:0b"
NOBODY = "02:48:42:00:02:0c"


class L2Forward(HbTest):
    """Frames to a known MAC leave unchanged through its port (a heartbeat request passing
    through, another UDP datagram, a non-IP frame); a frame to an unknown MAC leaves through
    no port (bmv2 drops it, the kernel target hands it to the host); no reason counted."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_l2(HOST_B, p[1])
        before = self.reasons()
        frames = [
            ex.frame(HOST_B, peer_mac(1), ex.REQUEST),  # UDP to 9190: not for the monitor
            ex.frame(HOST_B, peer_mac(1), ex.with_fields(ex.REQUEST, dport=5353)),
            bytes.fromhex(HOST_B.replace(":", "")) + bytes.fromhex("024842000101")
            + b"\x88\xb5" + bytes(range(46)),  # local experimental EtherType
        ]
        for frame in frames:
            self.send(p[0], frame)
            self.assertEqual(self.receive(p[1]).hex(), frame.hex())
        self.send(p[0], ex.frame(NOBODY, peer_mac(1), ex.REQUEST))
        self.assert_nothing_else(p, sender=p[0])
        self.assertEqual(self.reasons(), before)
