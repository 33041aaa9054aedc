"""Fixtures shared by every test area. Keep this small: area-specific fixtures live beside
their tests (tests/<area>/conftest.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest
from hbmon_topo.model import Topology
from hbmon_topo.netns import NetnsLab
from pg_cluster import Cluster, cluster


@pytest.fixture
def free_udp_port() -> Callable[[], int]:
    """A function returning a UDP port on 127.0.0.1 that is free right now."""

    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    return pick


@pytest.fixture
def netns_lab() -> Iterator[Callable[[Topology], NetnsLab]]:
    """Factory: `lab = netns_lab(topology)` builds a namespace lab removed after the test."""
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    labs: list[NetnsLab] = []

    def make(topology: Topology) -> NetnsLab:
        lab = NetnsLab(topology)
        labs.append(lab)
        lab.start()
        return lab

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.stop()


# Team rule: only tests that need bmv2 (or p4c) may skip; any other skip fails the run, so
# a missing install step in CI cannot hide behind a quiet "s".
_ALLOWED_SKIP_WORDS = ("bmv2", "simple_switch", "p4c")
_bad_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if not any(word in reason for word in _ALLOWED_SKIP_WORDS):
            _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _bad_skips:
        terminalreporter.section("skips that are not allowed (only bmv2/p4c tests may skip)")
        for line in _bad_skips:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    with cluster() as c:
        yield c


_db_counter = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database on the session's PostgreSQL cluster."""
    return pg_cluster.create_database(f"hbmon_test_{os.getpid()}_{next(_db_counter)}")
