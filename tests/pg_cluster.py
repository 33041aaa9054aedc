"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, a free port, pg_ctl.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system
user (created by Debian's package) through `runuser`. It listens on 127.0.0.1 and a
socket directory inside the temp dir only, and is stopped with `pg_ctl stop` (which
signals the postmaster by the PID in its own pid file) and the directory removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class PostgresMissing(RuntimeError):
    pass


def find_bin(name: str) -> str:
    """The PostgreSQL server binary `name` (Debian keeps them off PATH)."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise PostgresMissing(
        f"{name} not found: install the Debian package 'postgresql' (make setup does)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    datadir: Path
    port: int
    user: str
    _as: list[str]

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    run_as: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="hbmon-pg-"))
    if os.getuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresMissing("no 'postgres' system user (package 'postgresql')") from exc
        run_as = ["runuser", "-u", "postgres", "--"]
        user = "postgres"
        os.chown(base, pw.pw_uid, pw.pw_gid)
    datadir = base / "data"
    log = base / "server.log"
    started = False
    # cwd=base everywhere: the server user may not be allowed into the caller's directory.
    try:
        subprocess.run(
            [*run_as, initdb, "-D", str(datadir), "-U", user, "-A", "trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=120, cwd=base)
        last_error = ""
        for _attempt in range(5):  # the free port may be taken between probe and bind
            port = free_port()
            options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                       "-c max_connections=50 -c shared_buffers=16MB")
            proc = subprocess.run(
                [*run_as, pg_ctl, "-D", str(datadir), "-l", str(log), "-o", options,
                 "-w", "-t", "60", "start"],
                capture_output=True, text=True, timeout=90, cwd=base)
            if proc.returncode == 0:
                started = True
                break
            last_error = proc.stderr + (log.read_text() if log.exists() else "")
        if not started:
            raise RuntimeError(f"PostgreSQL did not start: {last_error[-2000:]}")
        yield Cluster(datadir, port, user, run_as)
    finally:
        if started:
            pid_file = datadir / "postmaster.pid"
            pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
            stop = subprocess.run(
                [*run_as, pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "-t", "30", "stop"],
                capture_output=True, timeout=60, cwd=base)
            if stop.returncode != 0 and pid is not None:
                # SIGQUIT is PostgreSQL's immediate shutdown; the postmaster is ours by PID.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(base, ignore_errors=True)
