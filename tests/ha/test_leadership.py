"""Leadership per switch on a real PostgreSQL (hbmon.store.ha): one leader per switch, epochs
that only grow, and a new leader within the retry interval once the old one's session
ends, including when its process is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hbmon.store.ha import Leadership, lock_key


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    waiter = threading.Event()
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        waiter.wait(0.02)


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("s1") == lock_key("s1") != lock_key("s2")
    assert 0 <= lock_key("s1") < 2**63


def test_one_leader_per_switch_and_the_epoch_grows(pg_url: str) -> None:
    elected: list[tuple[str, str, int]] = []

    def make(name: str) -> Leadership:
        return Leadership(pg_url, ["s1", "s2"], replica_id=name,
                          on_elected=lambda sw, ep: elected.append((name, sw, ep)))

    a, b = make("a").start(), make("b").start()
    try:
        assert wait_for(lambda: len(a.led()) + len(b.led()) == 2)
        for sw in ("s1", "s2"):
            assert a.is_leader(sw) != b.is_leader(sw)  # exactly one leader per switch
        holder = {sw: ("a" if a.is_leader(sw) else "b") for sw in ("s1", "s2")}
        first = {sw: ep for _, sw, ep in elected}
        assert first == {"s1": 1, "s2": 1}
        assert {i.switch: i.holder for i in a.current()} == holder
        # the leader of s1 stops: the other replica takes s1 over with a higher epoch
        loser, winner = (a, b) if holder["s1"] == "a" else (b, a)
        loser.stop()
        assert wait_for(lambda: winner.is_leader("s1") and winner.is_leader("s2"), 5)
        assert winner.epoch("s1") == 2
        assert [e for e in elected if e[1] == "s1"][-1] == (winner.replica_id, "s1", 2)
    finally:
        a.stop()
        b.stop()


CHILD = """
import sys, threading
from hbmon.store.ha import Leadership
l = Leadership(sys.argv[1], ["s1"], replica_id="child",
               on_elected=lambda sw, ep: print("elected", sw, ep, flush=True)).start()
threading.Event().wait()
"""


def test_a_killed_leader_is_replaced(pg_url: str) -> None:
    """SIGKILL: no clean release; PostgreSQL ends the session when the socket closes."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, pg_url], stdout=subprocess.PIPE,
                             text=True)
    standby: Leadership | None = None
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["elected", "s1", "1"]
        deposed: list[str] = []
        standby = Leadership(pg_url, ["s1"], replica_id="standby",
                             on_deposed=deposed.append).start()
        time.monotonic()
        assert not wait_for(lambda: standby.is_leader("s1"), 0.5)  # the child holds it
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert wait_for(lambda: standby.is_leader("s1"), 5)
        took = time.monotonic() - killed
        assert took < 2.0, f"new leader after {took:.2f}s"
        assert standby.epoch("s1") == 2 and not deposed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if standby is not None:
            standby.stop()
