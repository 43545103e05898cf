"""An in-process service (FastAPI TestClient, no model) for the attack regressions of issue 15."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shopguard.api import ServiceSettings, create_app
from shopguard.api.deps import create_key
from shopguard.store import EventStore

T0 = datetime(2024, 3, 9, 12, 0, 0)
GOOD_RULES = ("rules:\n  - {name: tiny, when: 'amount < 2', action: review, reason: TINY}\n"
              "lists:\n  deny: {users: [u_bad]}\n")


def make_keys(db: Path) -> dict[str, str]:
    with EventStore(db) as store:
        return {scope: create_key(store, scope, f"test {scope}")[0] for scope in ("ingest", "analyst", "admin")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(eid: str | None, *, user: str = "u1", seconds: float = 0, **fields: Any) -> dict[str, Any]:
    base = {"type": "pay", "ts": (T0 + timedelta(seconds=seconds)).isoformat() + "Z", "user_id": user,
            "amount": 25.0, "status": "success", "payment_instrument": f"card_{user}", "device_id": f"dev_{user}",
            "ip": "10.0.0.1"}
    if eid is not None:
        base["event_id"] = eid
    base.update(fields)
    return base


@contextmanager
def running(tmp_path: Path, **overrides: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A service on a fresh store (rules written from ``GOOD_RULES`` unless ``rules`` is given)."""
    db = tmp_path / "shop.duckdb"
    keys = make_keys(db)
    if "rules" not in overrides:
        rules = tmp_path / "rules.yaml"
        rules.write_text(GOOD_RULES)
        overrides["rules"] = rules
    settings = ServiceSettings(db=db, gc_freeze=False, watch_every_s=0.05, rebuild_features=True,
                               **overrides)
    with TestClient(create_app(settings)) as client:
        yield client, keys


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with running(tmp_path) as s:
        yield s
