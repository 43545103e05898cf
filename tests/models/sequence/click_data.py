"""A small seeded click log shaped like the public ad-click logs: every event a ``view``, the app as
``item_id``, ``os`` and ``channel`` in ``attrs``, the user an IP; no category, amount, merchant or status.

It differs from the simulator where the tokenizer's vocabularies are concerned: ``status`` and
``category`` never occur before ``PRETRAIN_UNTIL`` (their tables hold only the reserved ids, so the
first real id ``OFFSET`` is out of range), apps outnumber the hash buckets, and after ``PRETRAIN_UNTIL``
new apps, OSes, channels, a category and a status appear that pretraining never saw. The span is hours.
Click bots (burst of clicks seconds apart over many apps, one channel) are labelled minutes later.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

START = datetime(2024, 3, 1)
HOURS = 12.0
PRETRAIN_UNTIL = START + timedelta(hours=8)
# `shopguard train` split of the 12 hours: test = the last 3 hours, a 14-minute label-delay gap.
TEST_DAYS = 0.125
DELAY_DAYS = 0.01


def click_log(users: int = 240, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, labels): ``users`` IPs, one in eight a click bot."""
    rng = np.random.default_rng(seed)
    end = START + timedelta(hours=HOURS)
    apps = [f"app{k}" for k in range(400)]
    pop = 1.0 / np.arange(1, len(apps) + 1)
    pop /= pop.sum()
    rows, labels = [], []

    def add(u: int, i: int, t: datetime, app: str, os_: str, channel: str) -> dict:
        late = t >= PRETRAIN_UNTIL
        e = {"event_id": f"ip{u}_{i}", "ts": t, "type": "view", "user_id": f"ip{u}", "item_id": app,
             "attrs": {"os": os_, "channel": channel},
             # only after pretraining: values the pretrained vocabularies never held
             "category": ("games" if u % 3 == 0 else "shopping") if late and i % 2 == 0 else None,
             "status": "success" if late and i % 5 == 0 else None}
        rows.append(e)
        return e

    for u in range(users):
        bot = u % 8 == 0
        os_ = f"os{rng.integers(12)}"
        t = START + timedelta(minutes=float(rng.uniform(0, 60 * HOURS - 30)))
        i = 0
        if bot:  # one or two bursts: 15-30 clicks 2-10 s apart, a new app each time, one channel
            for _ in range(int(rng.integers(1, 3))):
                for _ in range(int(rng.integers(15, 31))):
                    if t >= end:
                        break
                    e = add(u, i, t, str(rng.choice(apps)), os_, "ch_bot")
                    labels.append({"entity_kind": "event", "entity_id": e["event_id"], "label": 1,
                                   "scenario": "click_bot", "labeled_at": t + timedelta(minutes=5)})
                    t += timedelta(seconds=float(rng.uniform(2, 10)))
                    i += 1
                t += timedelta(hours=float(rng.uniform(1, 3)))
            continue
        t = START + timedelta(minutes=float(rng.uniform(0, 60)))
        while t < end:
            late = t >= PRETRAIN_UNTIL
            app = f"new_app{rng.integers(30)}" if late and rng.random() < 0.3 else str(rng.choice(apps, p=pop))
            channel = f"new_ch{rng.integers(5)}" if late and rng.random() < 0.3 else f"ch{rng.integers(40)}"
            add(u, i, t, app, "os_new" if late and u % 5 == 0 else os_, channel)
            i += 1
            t += timedelta(minutes=float(rng.exponential(25)))
    events = pl.DataFrame(rows, infer_schema_length=None).sort("ts")
    return events, pl.DataFrame(labels)


def click_features(events: pl.DataFrame) -> pl.DataFrame:
    """Point-in-time per-IP features (earlier events only; missing where there is no history)."""
    return events.sort("ts", "event_id").with_columns(
        user_events=pl.int_range(pl.len()).over("user_id").cast(pl.Float64),
        since_prev_s=(pl.col("ts") - pl.col("ts").shift(1).over("user_id")).dt.total_seconds().cast(pl.Float64),
    ).select("event_id", "ts", "type", "user_id", "user_events", "since_prev_s")
