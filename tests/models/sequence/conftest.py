"""Small seeded behaviour logs with a planted account-takeover pattern, and a tiny pretrained model."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from shopguard.models.sequence.config import PretrainConfig, preset
from shopguard.models.sequence.network import FoundationModel
from shopguard.models.sequence.pretrain import pretrain

torch.set_num_threads(1)

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 12,
        "tokenizer": {"merchant_buckets": 32, "item_buckets": 32, "min_count": 1}}
ROUTINE = ("login", "view", "view", "add_to_cart", "order", "pay")


def make_log(n_users: int = 40, n_events: int = 30, takeover_frac: float = 0.3, seed: int = 0) -> pl.DataFrame:
    """Routine shoppers; some accounts get taken over: login from a new device/IP/country, password and
    address change, then a large order paid with a new card, in quick succession. ``label`` marks those."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = datetime(2024, 3, 1)
    for u in range(n_users):
        t = t0 + timedelta(hours=float(rng.uniform(0, 24)))
        cats = rng.choice(["books", "toys", "food", "garden", "tools"], size=2, replace=False)
        hijack_at = int(rng.integers(n_events // 2, n_events - 5)) if rng.random() < takeover_frac else -1
        i = 0
        while i < n_events:
            if i == hijack_at:
                for typ, amount in (("login", None), ("password_change", None), ("address_change", None),
                                    ("order", float(rng.uniform(800, 1500))), ("pay", float(rng.uniform(800, 1500)))):
                    t += timedelta(seconds=float(rng.uniform(5, 40)))
                    rows.append(dict(event_id=f"u{u}e{i}", ts=t, type=typ, user_id=f"u{u}", device_id=f"x{u}",
                                     ip=f"bad{u}", geo="ZZ", category=None,
                                     merchant_id="m_fence" if typ in ("order", "pay") else None,
                                     payment_instrument=f"stolen{u}" if typ == "pay" else None,
                                     amount=amount, status="success" if typ in ("login", "pay") else None, label=1))
                    i += 1
                continue
            typ = ROUTINE[i % len(ROUTINE)]
            t += timedelta(minutes=float(rng.exponential(90)))
            rows.append(dict(
                event_id=f"u{u}e{i}", ts=t, type=typ, user_id=f"u{u}", device_id=f"d{u}", ip=f"ip{u}", geo="FR",
                category=str(rng.choice(cats)) if typ in ("view", "add_to_cart") else None,
                merchant_id=f"m{int(rng.integers(8))}" if typ in ("order", "pay") else None,
                payment_instrument=f"card{u}" if typ == "pay" else None,
                amount=float(rng.lognormal(3, 0.5)) if typ in ("order", "pay") else None,
                status="success" if typ in ("login", "pay") else None, label=0))
            i += 1
    return pl.DataFrame(rows)


@pytest.fixture(scope="session")
def toy_log() -> pl.DataFrame:
    return make_log()


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory: pytest.TempPathFactory, toy_log: pl.DataFrame) -> Path:
    out = tmp_path_factory.mktemp("pretrained")
    pretrain(toy_log.drop("label"), network=preset("tiny", **TINY),
             config=PretrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=3), out_dir=out)
    return out


@pytest.fixture
def pretrained(pretrained_dir: Path) -> FoundationModel:
    return FoundationModel.load(pretrained_dir)


def tabular(log: pl.DataFrame) -> pl.DataFrame:
    """Point-in-time per-user features (earlier events only), with a missing value where there is no history."""
    return log.sort("ts").with_columns(
        user_events=pl.int_range(pl.len()).over("user_id").cast(pl.Float64),
        since_prev_s=(pl.col("ts") - pl.col("ts").shift(1).over("user_id")).dt.total_seconds().cast(pl.Float64),
        new_device=(pl.col("device_id") != pl.col("device_id").shift(1).over("user_id")).cast(pl.Float64),
    ).select("event_id", "ts", "type", "user_id", "amount", "user_events", "since_prev_s", "new_device")
