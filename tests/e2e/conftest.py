"""Fixtures for the whole-loop tests: the integration suite's emulated cluster, reused as is.

tests/integration holds the emulator package, the Prometheus helper and the operator subprocess helper;
its folder goes on sys.path and its `cluster` fixture is re-exported here under the same name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(INTEGRATION))

_spec = importlib.util.spec_from_file_location("integration_conftest", INTEGRATION / "conftest.py")
assert _spec is not None and _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

cluster = _integration.cluster
