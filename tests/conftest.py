"""Shared test fixtures: paths to the shared reference data and real traces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIMTUNE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
TRACES = SHARED / "traces"


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared data not found at {SHARED} (set SIMTUNE_SHARED)")
    return SHARED
