"""Fixtures shared by the whole suite: small seeded data, a fresh store, the ../shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopguard.store import EventStore

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHOPGUARD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    """An empty store in a temporary DuckDB file."""
    s = EventStore(tmp_path / "shop.duckdb")
    yield s
    s.close()


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips the test with a clear message when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set SHOPGUARD_SHARED_DATA)")
    return SHARED_DATA
