"""Typed configuration of the shop simulator: population size, window, seed and abuse rates.

Abuse rates are given per 1,000 user-days (or as shares of users) so that the mix of normal and
malicious behaviour stays the same whatever the size of the simulated shop. Every enabled scenario
happens at least ``min_incidents`` times, so even a tiny test shop carries every label.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCENARIOS: tuple[str, ...] = (
    "account_takeover",
    "card_testing",
    "brushing",
    "bot_ordering",
    "refund_abuse",
    "coupon_abuse",
    "fake_review",
    "price_anomaly",
    "logistics_anomaly",
)


class ScenarioRates(BaseModel):
    """How often each abuse scenario happens (``0`` switches it off).

    Units are incidents per 1,000 user-days unless the name says ``share`` (a share of all users).
    Defaults give each scenario well over 30 malicious events at 2,000 users x 14 days.
    """

    model_config = ConfigDict(extra="forbid")

    account_takeover: float = Field(0.25, ge=0, description="Accounts taken over per 1,000 user-days.")
    card_testing: float = Field(0.12, ge=0, description="Card-testing bursts per 1,000 user-days.")
    brushing: float = Field(0.06, ge=0, description="Brushing rings per 1,000 user-days.")
    bot_ordering: float = Field(0.07, ge=0, description="Limited-item drops hit by bots per 1,000 user-days.")
    refund_abuse: float = Field(0.005, ge=0, le=0.2, description="Share of users who abuse refunds.")
    coupon_abuse: float = Field(0.12, ge=0, description="Multi-account coupon farms per 1,000 user-days.")
    fake_review: float = Field(0.3, ge=0, description="Paid or malicious review bursts per 1,000 user-days.")
    price_anomaly: float = Field(
        1.2, ge=0, description="Anomalous merchant price changes per 1,000 user-days."
    )
    logistics_anomaly: float = Field(
        0.15, ge=0, description="Carrier/merchant failure incidents per 1,000 user-days."
    )


class SimulationConfig(BaseModel):
    """What to simulate. Defaults give a two-week shop of 2,000 users in a few seconds.

    >>> SimulationConfig(users=300, days=5).user_days
    1500
    """

    model_config = ConfigDict(extra="forbid")

    users: int = Field(2000, ge=20, le=5_000_000, description="Users in the population (incl. new signups).")
    days: int = Field(14, ge=1, le=366, description="Length of the simulated window in days.")
    seed: int = Field(7, ge=0, description="Same seed, same events (byte for byte).")
    start: datetime = Field(datetime(2024, 3, 1), description="First moment of the window (naive UTC).")
    merchants: int | None = Field(None, ge=3, description="Merchants (default: users / 40, at least 20).")
    items: int | None = Field(None, ge=10, description="Items (default: users / 2, at least 200).")
    new_user_share: float = Field(
        0.06, ge=0, le=0.5, description="Share of users who sign up inside the window."
    )
    activity: float = Field(1.0, gt=0, le=20, description="Multiplier of every user's session rate.")
    currency: str = Field("USD", min_length=3, max_length=3)
    rates: ScenarioRates = Field(default_factory=ScenarioRates)
    min_incidents: int = Field(1, ge=0, description="Each enabled scenario happens at least this often.")

    @field_validator("start")
    @classmethod
    def _naive_utc(cls, v: datetime) -> datetime:
        # The store keeps naive UTC; an aware start is converted rather than silently shifted.
        if v.tzinfo is not None:
            from datetime import UTC

            v = v.astimezone(UTC).replace(tzinfo=None)
        return v

    @property
    def user_days(self) -> int:
        return self.users * self.days

    @property
    def n_merchants(self) -> int:
        return self.merchants or max(20, self.users // 40)

    @property
    def n_items(self) -> int:
        return self.items or max(200, self.users // 2)

    def incidents(self, scenario: str) -> int:
        """How many incidents of a scenario to inject (rate x user-days, at least ``min_incidents``)."""
        rate = float(getattr(self.rates, scenario))
        if rate <= 0:
            return 0
        return max(self.min_incidents, int(round(rate * self.user_days / 1000.0)))
