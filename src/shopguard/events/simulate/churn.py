"""Customers who leave: an opt-in churn process applied to a simulated shop after the fact.

The base simulator keeps every user active for the whole window (a persona's session rate never
changes), so "will this user go quiet?" only measures how rarely someone shops. Real shops lose
customers: some drift away at a steady rate, more leave after a bad experience (a late or lost parcel,
a declined payment, a return), and most fade out over a few days rather than stopping dead.
``apply_churn`` draws such a leaving time per user and removes what the user would have done after it,
seeded and without touching the simulator itself, so every existing scenario's same-seed output stays
byte for byte what it was (churn is off unless a caller applies it).

The process, per user with a ``user_id``:

- a steady hazard: leaving time ~ Exponential(mean ``30 / monthly_rate`` days) from the user's first
  event in the window (the signup for new accounts);
- each bad experience at time *b* (``shipment`` delayed / lost, ``pay`` failure, ``return``,
  ``refund``, ``cancel``) makes the user leave at *b* + Exponential(``reaction_days``) with probability
  ``bad_experience_leave``; the earliest of all candidate times wins;
- fading: a session starting within ``fade_days`` before the leaving time survives with probability
  (time left) / ``fade_days``; after the leaving time the user's own events are gone. What others do
  to the account stays: shipments and refunds of orders placed before, and labelled abuse events (an
  attacker does not care whether the owner still shops).

>>> from shopguard.events.simulate import SimulationConfig, simulate_shop
>>> shop = simulate_shop(SimulationConfig(users=100, days=10, seed=3))
>>> churned, leaving = apply_churn(shop, ChurnConfig(monthly_rate=0.5))
>>> churned.events.height < shop.events.height, leaving.columns
(True, ['user_id', 'churn_at', 'cause'])
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from shopguard.events.simulate.simulator import SimulatedShop

# Events others cause on an account: they keep coming after the owner left (orders placed before).
PASSIVE_TYPES: tuple[str, ...] = ("shipment", "refund", "price_change")
DAY_S = 86_400.0


class ChurnConfig(BaseModel):
    """How users leave the shop (see the module docstring). Defaults: ~12% a month, bad experiences
    make a quarter of the affected users leave within days."""

    model_config = ConfigDict(extra="forbid")

    monthly_rate: float = Field(0.12, ge=0, le=5, description="Steady leaving hazard per 30 days.")
    bad_experience_leave: float = Field(0.25, ge=0, le=1, description="Chance a bad experience makes "
                                        "the user leave.")
    reaction_days: float = Field(3.0, gt=0, description="Mean delay between a bad experience and leaving.")
    fade_days: float = Field(5.0, ge=0, description="Activity thins out over this many days before leaving.")
    seed: int = Field(11, ge=0)


def bad_experiences(events: pl.DataFrame) -> pl.DataFrame:
    """The bad experiences in a shop's events (``user_id``, ``ts``, ``cause``)."""
    cause = (
        pl.when((pl.col("type") == "shipment") & pl.col("status").is_in(["delayed", "lost"]))
        .then(pl.lit("shipment_") + pl.col("status"))
        .when((pl.col("type") == "pay") & (pl.col("status") == "failure")).then(pl.lit("payment_failure"))
        .when(pl.col("type").is_in(["return", "refund", "cancel"])).then(pl.col("type"))
        .otherwise(None)
    )
    return (events.filter(pl.col("user_id").is_not_null()).with_columns(cause.alias("cause"))
            .filter(pl.col("cause").is_not_null()).select("user_id", "ts", "cause"))


def apply_churn(shop: SimulatedShop, config: ChurnConfig | None = None) -> tuple[SimulatedShop, pl.DataFrame]:
    """The shop with churned users' later activity removed, and each leaver's time and cause.

    Returns ``(shop, leaving)``: ``leaving`` has one row per user who left inside the window
    (``user_id``, ``churn_at``, ``cause`` = ``steady`` or the bad experience that triggered it).
    Deterministic for a given shop and ``config.seed``.
    """
    cfg = config or ChurnConfig()
    ev = shop.events
    rng = np.random.default_rng(cfg.seed)
    start = shop.config.start
    horizon = start + timedelta(days=shop.config.days)

    # Users in a fixed order so the draws do not depend on frame order.
    first = (ev.filter(pl.col("user_id").is_not_null()).group_by("user_id").agg(pl.col("ts").min().alias("first"))
             .sort("user_id"))
    users = first["user_id"].to_list()
    first_s = _seconds(first["first"], start)
    rate_per_s = cfg.monthly_rate / (30 * DAY_S)
    steady = np.full(len(users), np.inf)
    if rate_per_s > 0:
        steady = np.maximum(first_s, 0.0) + rng.exponential(1.0 / rate_per_s, len(users))
    best = pl.DataFrame({"user_id": users, "churn_s": steady, "cause": ["steady"] * len(users)},
                        schema={"user_id": pl.Utf8, "churn_s": pl.Float64, "cause": pl.Utf8})

    bad = bad_experiences(ev).sort(["user_id", "ts", "cause"])
    if bad.height and cfg.bad_experience_leave > 0:
        leave = rng.random(bad.height) < cfg.bad_experience_leave
        delay = rng.exponential(cfg.reaction_days * DAY_S, bad.height)
        cand = bad.with_columns(churn_s=pl.Series(_seconds(bad["ts"], start) + delay)).filter(pl.Series(leave))
        best = pl.concat([best, cand.select("user_id", "churn_s", "cause")])
    best = best.sort(["user_id", "churn_s"]).group_by("user_id", maintain_order=True).first()
    horizon_s = (horizon - start).total_seconds()
    best = best.filter(pl.col("churn_s") < horizon_s)
    leaving = best.select(
        "user_id",
        (pl.lit(start) + pl.duration(microseconds=(pl.col("churn_s") * 1e6).cast(pl.Int64))).alias("churn_at"),
        "cause",
    )

    labelled = set(shop.labels.filter(pl.col("entity_kind") == "event")["entity_id"].to_list())
    joined = ev.with_row_index("_row").join(best.select("user_id", "churn_s"), on="user_id", how="left")
    t = _seconds(joined["ts"], start)
    churn_s = joined["churn_s"].fill_null(np.inf).to_numpy()
    # One draw per session decides whether a session inside the fade survives, so sessions stay whole.
    session_start = joined.group_by("session_id").agg(pl.col("ts").min().alias("_s0"))
    joined = joined.join(session_start, on="session_id", how="left")
    s0 = np.where(joined["session_id"].is_null().to_numpy(), t, _seconds(joined["_s0"].fill_null(start), start))
    sess_keys = joined["session_id"].fill_null("").to_list()
    uniq = sorted(set(sess_keys))
    u_draw = dict(zip(uniq, rng.random(len(uniq)), strict=True))
    draw = np.array([u_draw[k] if k else 0.0 for k in sess_keys])
    no_session = joined["session_id"].is_null().to_numpy()
    if no_session.any():
        draw[no_session] = rng.random(int(no_session.sum()))
    fade = cfg.fade_days * DAY_S
    time_left = churn_s - s0
    survive_fade = (time_left >= fade) | (draw < np.clip(time_left / fade if fade > 0 else 1.0, 0.0, 1.0))
    passive = joined["type"].is_in(list(PASSIVE_TYPES)).to_numpy()
    is_label = joined["event_id"].is_in(list(labelled)).to_numpy()
    keep = is_label | passive | ((t < churn_s) & survive_fade)
    # Passive events of orders placed after the user left cannot exist: drop those with their order.
    kept_orders = set(joined.filter(pl.Series(keep) & (pl.col("type") == "order"))["order_id"].drop_nulls().to_list())
    order_kept = joined["order_id"].is_in(list(kept_orders)).fill_null(False).to_numpy()
    orphan = passive & joined["order_id"].is_not_null().to_numpy() & ~order_kept & (t >= churn_s)
    keep &= ~orphan
    rows = joined.filter(pl.Series(keep))["_row"]
    events = ev.with_row_index("_row").filter(pl.col("_row").is_in(rows.implode())).drop("_row")
    dropped = set(ev["event_id"].to_list()) - set(events["event_id"].to_list())
    labels = shop.labels.filter(~((pl.col("entity_kind") == "event") & pl.col("entity_id").is_in(list(dropped))))
    return SimulatedShop(shop.config, events, labels), leaving


def _seconds(ts: pl.Series, start: object) -> np.ndarray:
    """Seconds from ``start`` of each timestamp."""
    micros = ts.to_frame("t").select((pl.col("t") - pl.lit(start)).dt.total_microseconds())["t"]
    return micros.to_numpy().astype(np.float64) / 1e6
