"""The live-stack tests reuse the API tests' helpers (SSE reader, metrics scrape, Chromium
launch), which live as plain modules in tests/api/ (that directory is not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

_API_TESTS = str(Path(__file__).resolve().parents[1] / "api")
if _API_TESTS not in sys.path:
    sys.path.insert(0, _API_TESTS)
