"""Per-user baseline: judged against one's own history, new users against the population."""

from __future__ import annotations

import numpy as np
import polars as pl

from shopguard.models import UserBaselineDetector


def _history() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u, (level, hour) in {"small": (10.0, 9), "big": (1000.0, 21)}.items():
        for _ in range(60):
            rows.append({"user_id": u, "amount": level * rng.lognormal(0, 0.1), "hour": float((hour + rng.normal(0, 1)) % 24),
                         "new_device": float(rng.random() < 0.02)})
    return pl.DataFrame(rows)


def test_deviation_is_relative_to_the_user() -> None:
    det = UserBaselineDetector().fit(_history())
    test = pl.DataFrame({"user_id": ["small", "big", "small", "big"], "amount": [1000.0, 1000.0, 10.0, 10.0],
                         "hour": [9.0, 21.0, 9.0, 21.0], "new_device": [0.0, 0.0, 0.0, 0.0]})
    s = det.score(test)
    # 1000 is normal for "big" and wild for "small", and the other way round for 10.
    assert s[0] > 5 * s[1] and s[3] > 5 * s[2]


def test_hour_is_circular_and_flags_are_surprises() -> None:
    det = UserBaselineDetector().fit(_history())
    assert det.kinds_ == {"amount": "value", "hour": "periodic", "new_device": "flag"}
    t = pl.DataFrame({"user_id": ["big"] * 3, "amount": [1000.0] * 3, "hour": [21.0, 22.5, 9.0],
                      "new_device": [0.0, 0.0, 1.0]})
    e = det.explain(t)
    assert e["hour"][1] < e["hour"][2]  # 22:30 is near 21h; 9h is the other side of the clock
    assert e["new_device"][2] > 3.0  # a new device for a user who never changes devices


def test_new_user_falls_back_to_population() -> None:
    det = UserBaselineDetector().fit(_history())
    s = det.score(pl.DataFrame({"user_id": ["stranger", "stranger"], "amount": [100.0, 1e6], "hour": [15.0, 15.0],
                                "new_device": [0.0, 0.0]}))
    assert np.isfinite(s).all() and s[1] > s[0]
