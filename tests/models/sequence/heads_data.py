"""A small seeded shop where users leave (the opt-in churn process), and a tiny model pretrained on it.

Shared by the next-interest and churn tests (cached per process: pretraining once is the slow part).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import polars as pl
import torch

from shopguard.events.simulate import SimulationConfig, simulate_shop
from shopguard.events.simulate.churn import ChurnConfig, apply_churn
from shopguard.models.sequence.config import PretrainConfig, preset
from shopguard.models.sequence.pretrain import pretrain

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 16,
        "tokenizer": {"merchant_buckets": 64, "item_buckets": 64, "min_count": 1}}
START = datetime(2024, 3, 1)
DAYS = 28
PRETRAIN_DAYS = 14


@lru_cache(maxsize=1)
def churned_shop() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, leaving) of a 120-user, 28-day shop with a brisk churn rate."""
    shop = simulate_shop(SimulationConfig(users=120, days=DAYS, seed=5, start=START))
    shop, leaving = apply_churn(shop, ChurnConfig(monthly_rate=0.6, seed=5))
    return shop.events, leaving


@lru_cache(maxsize=1)
def pretrained_dir() -> Path:
    """A tiny model pretrained on the first two weeks (unlabeled events only)."""
    torch.set_num_threads(1)
    events, _ = churned_shop()
    out = Path(tempfile.mkdtemp(prefix="seqheads-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # one per test process; do not leave it in /tmp
    pretrain(events.filter(pl.col("ts") < START + timedelta(days=PRETRAIN_DAYS)), network=preset("tiny", **TINY),
             config=PretrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=3), out_dir=out)
    return out


def day(d: float) -> datetime:
    return START + timedelta(days=d)
