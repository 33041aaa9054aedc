"""Where the build outputs the commands need live: the P4 compiler's outputs (P4Info, bmv2
JSON) and the BPF objects.

In a checkout they are `p4src/build/` (committed) and `build/bpf/` (`make setup`). An
installed wheel carries copies inside its packages (`hbmon/p4build/`, `hbmon_kernel/bpf/`),
put there when the wheel is built (setup.py), so `hbmon serve` and `hbmon-kernel-target`
work outside the repository. The packaged copy wins when present: an editable install and a
checkout have none.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when running from one
P4INFO_NAME = "heartbeat.p4info.txtpb"
BMV2_JSON_NAME = "heartbeat.json"
BPF_OBJECTS = ("hb_xdp.o", "hb_tc.o")


def in_checkout() -> bool:
    return (CHECKOUT / "p4src" / "heartbeat.p4").is_file()


def p4_output(name: str) -> Path:
    """A file of p4c's output: the packaged copy, else the checkout's p4src/build/."""
    packaged = Path(str(resources.files("hbmon") / "p4build" / name))
    if packaged.is_file():
        return packaged
    return CHECKOUT / "p4src" / "build" / name


def bpf_dir() -> Path:
    """The BPF objects: $HBMON_BPF_DIR, else the packaged copy, else the checkout's
    build/bpf/."""
    env = os.environ.get("HBMON_BPF_DIR")
    if env:
        return Path(env)
    packaged = Path(str(resources.files("hbmon_kernel") / "bpf"))
    if all((packaged / f).is_file() for f in BPF_OBJECTS):
        return packaged
    return CHECKOUT / "build" / "bpf"


def state_dir() -> Path:
    """Where a command keeps what it builds for itself (e.g. `hbmon shell`'s venv): the
    checkout's build/, else $XDG_CACHE_HOME/hbmon (~/.cache/hbmon)."""
    if in_checkout():
        return CHECKOUT / "build"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hbmon"
