"""Wheels for the install tests (tests/lab/test_wheel.py, tests/lab/test_responder_install.py):
this checkout's two distributions, and a wheel of an installed pure-Python dependency so a
fresh venv can install it with `pip install --no-index` (no package index, no network)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# dist-info files that describe one installation, not the distribution
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def build_wheel(project: Path, dest: Path) -> Path:
    """`pip wheel` of a project of this checkout into `dest`, with this venv's setuptools (no
    build isolation: nothing is downloaded). A sub-project (responder/) is copied first, so
    the build sees only its sources and leaves nothing in the checkout; hbmon itself (ROOT,
    with its venv and build outputs) is built in place, its setup.py emptying build/lib."""
    source = project
    if project != ROOT:
        source = dest.parent / f"src-{project.name}"
        shutil.copytree(project, source, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", "*.pyc"))
    before = set(dest.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dest), str(source)],
                   check=True, cwd=dest.parent, capture_output=True, timeout=600)
    [wheel] = set(dest.glob("*.whl")) - before
    return wheel


def wheel_of_installed(name: str, dest: Path) -> Path:
    """A wheel of the pure-Python distribution `name` as installed in this venv: its files
    per its RECORD (bytecode left out) and its metadata, with a fresh RECORD. Refuses a
    distribution with files outside site-packages (scripts), which this does not carry."""
    dist = importlib.metadata.distribution(name)
    files = dist.files or []
    [info] = {f.parts[0] for f in files if f.parts[0].endswith(".dist-info")}
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    assert tags == ["py3-none-any"], f"{name} is not a pure-Python wheel: {tags}"
    wheel = dest / f"{info.removesuffix('.dist-info')}-{tags[0]}.whl"
    record: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            path = f.as_posix()
            assert not path.startswith(".."), f"{name} installs {path} outside site-packages"
            if ("__pycache__" in f.parts or path.endswith(".pyc")
                    or (f.parts[0] == info and f.name in _INSTALL_ONLY)):
                continue
            data = Path(str(f.locate())).read_bytes()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel
