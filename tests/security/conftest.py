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


def small_bundle(folder: Path, *, detector: str = "lightgbm", platt: bool = False, labelled: bool = True) -> Path:
    """A tiny real model folder (LightGBM or HBOS on three feature columns), saved with checksums."""
    import numpy as np
    import polars as pl

    from shopguard.decision import Policy
    from shopguard.features import FeatureSet
    from shopguard.models import LightGBMDetector
    from shopguard.models.bundle import ModelBundle
    from shopguard.models.calibration import Calibrator
    from shopguard.models.unsupervised import HBOSDetector

    rng = np.random.default_rng(0)
    n = 900
    y = (rng.random(n) < (0.02 if platt else 0.08)).astype(int)
    cols = ["amount", "card_failed_payments_10m", "hour"]
    df = pl.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "amount": rng.lognormal(3, 0.5, n) * np.where(y == 1, 8, 1),
        "card_failed_payments_10m": rng.poisson(np.where(y == 1, 6, 0.1)).astype(float),
        "hour": rng.integers(0, 24, n).astype(float),
    })
    det = (LightGBMDetector(n_estimators=20, features=cols) if detector == "lightgbm"
           else HBOSDetector(features=cols)).fit(df[:600], y[:600])
    s = det.score(df[600:])
    cal = Calibrator().fit(s, y[600:] if labelled else None)
    pol = Policy.choose(cal.transform(s), y[600:] if labelled else None, target_fpr=0.01, alert_rate=0.02,
                        probability_kind="probability" if cal.is_probability else "percentile")
    b = ModelBundle(detector=det, calibrator=cal, policy=pol, feature_set=FeatureSet(), columns=cols,
                    split={"train_start": "2024-01-01T00:00:00", "train_end": "2024-01-08T00:00:00"})
    return b.save(folder)


def reseal(folder: Path) -> None:
    """What an attacker does after editing a model folder: recompute every checksum in the manifest."""
    import json

    from shopguard.models.bundle import _sha256

    m = json.loads((folder / "manifest.json").read_text())
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    m["files"] = {str(p.relative_to(folder)): _sha256(p) for p in files}
    (folder / "manifest.json").write_text(json.dumps(m))
