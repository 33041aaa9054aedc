"""`python -m hbmon_topo.farm`: run a peer farm in the foreground (benches, labs).

    python -m hbmon_topo.farm --ifname eth0 --netns hb1a2b3c-peers --prefix 198.18.0.0/16 \\
        --exclude 198.18.0.1 --mute 198.18.1.7 --loss 198.18.1.8=0.3 --status 198.18.1.9=1

The farm answers until SIGINT/SIGTERM, then detaches. With --interval, one JSON line of
counters per interval on stdout (the first once the farm is attached: a "ready" signal).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from types import FrameType

from . import FarmError, PeerFarm


def _pair(text: str) -> tuple[str, str]:
    address, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ADDRESS=VALUE, got {text!r}")
    return address, value


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hbmon_topo.farm",
                                 description="XDP peer farm: answer heartbeats for a prefix")
    ap.add_argument("--ifname", required=True, help="interface the requests arrive on")
    ap.add_argument("--netns", default=None, help="its network namespace (default: ours)")
    ap.add_argument("--prefix", required=True, help="addresses to answer for, e.g. 198.18.0.0/16")
    ap.add_argument("--exclude", action="append", default=[], metavar="ADDRESS",
                    help="an address of the prefix not to answer for (repeatable)")
    ap.add_argument("--default-status", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument("--default-load", type=int, default=0)
    ap.add_argument("--mute", action="append", default=[], metavar="ADDRESS")
    ap.add_argument("--loss", action="append", default=[], type=_pair, metavar="ADDRESS=P")
    ap.add_argument("--status", action="append", default=[], type=_pair, metavar="ADDRESS=S")
    ap.add_argument("--load", action="append", default=[], type=_pair, metavar="ADDRESS=L")
    ap.add_argument("--interval", type=float, default=0.0,
                    help="print counters as JSON every this many seconds (0: only at exit)")
    ap.add_argument("--skb-mode", action="store_true",
                    help="generic (skb) XDP instead of native, for drivers without XDP")
    args = ap.parse_args(argv)

    from hbmon_kernel import libbpf as lb

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    flags = lb.XDP_FLAGS_SKB_MODE if args.skb_mode else lb.XDP_FLAGS_DRV_MODE
    try:
        with PeerFarm(args.ifname, args.netns, args.prefix, exclude=args.exclude,
                      default_status=args.default_status, default_load=args.default_load,
                      xdp_flags=flags) as farm:
            for address in args.mute:
                farm.set_fault(address, mute=True)
            for address, value in args.loss:
                farm.set_fault(address, loss=float(value))
            for address, value in args.status:
                farm.set_fault(address, status=int(value))
            for address, value in args.load:
                farm.set_fault(address, load=int(value))
            while True:
                if args.interval > 0:
                    print(json.dumps(asdict(farm.counters())), flush=True)
                if stop.wait(args.interval if args.interval > 0 else None):
                    break
            print(json.dumps(asdict(farm.counters())), flush=True)
    except (FarmError, OSError, ValueError) as exc:
        print(f"farm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
