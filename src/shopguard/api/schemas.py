"""Request and response models of the HTTP API (what the OpenAPI document publishes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shopguard.events.schema import Event, to_utc_naive
from shopguard.store.duckdb import ENTITY_KINDS

EntityKind = Literal["event", "order", "user", "merchant", "device", "ip", "payment_instrument", "item", "review"]
assert set(EntityKind.__args__) == set(ENTITY_KINDS)  # type: ignore[attr-defined]
RiskLevel = Literal["low", "medium", "high", "critical"]
ActionName = Literal["allow", "review", "challenge", "block"]
Scope = Literal["ingest", "analyst", "admin"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- events and decisions ---------------------------------------------------------------------------------
class EventBatchIn(_In):
    """Several events decided in one call (all validated first: one bad event rejects the batch)."""

    events: list[Event] = Field(min_length=1, max_length=1_000)


EVENTS_BODY = TypeAdapter(Event | EventBatchIn)


class ReasonOut(BaseModel):
    code: str
    text: str = ""
    source: Literal["model", "rule"] = "rule"


class DecisionOut(BaseModel):
    event_id: str
    score: float | None = Field(None, description="Model score (higher = riskier); null when no model is loaded.")
    probability: float | None = Field(None, description="Calibrated probability of abuse, when the model has one.")
    risk_level: RiskLevel
    action: ActionName
    reasons: list[ReasonOut] = Field(default_factory=list)
    rule_hits: list[str] = Field(default_factory=list)
    model_version: str | None = None
    latency_ms: float | None = Field(None, description="Time to decide (features, model, rules), before commit.")


class DecisionBatchOut(BaseModel):
    decisions: list[DecisionOut]


# -- labels -----------------------------------------------------------------------------------------------
class LabelIn(_In):
    entity_kind: EntityKind
    entity_id: str = Field(min_length=1, max_length=256)
    label: Literal[0, 1]
    scenario: str = Field("", max_length=64)
    labeled_at: datetime | None = Field(None, description="When the label became known; default now (UTC).")
    source: str = Field("analyst", min_length=1, max_length=64)

    @field_validator("labeled_at", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        # Same rules as event timestamps: naive UTC within the accepted years.
        return None if v is None else to_utc_naive(v, "labeled_at")


class LabelBatchIn(_In):
    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


class LabelsOut(BaseModel):
    stored: int


# -- users ------------------------------------------------------------------------------------------------
class TimelineOut(BaseModel):
    user_id: str
    events: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    linked_accounts: list[Any] = Field(default_factory=list)



class ErasureOut(BaseModel):
    user_id: str
    tombstone_id: str = Field(description="Keyed hash of the user id kept so re-ingests and the service leave "
                                          "the user out (never the id itself).")
    already_erased: bool = Field(description="An earlier erasure had tombstoned the user (idempotent repeat).")
    removed: dict[str, int] = Field(description="Rows deleted per table (events, labels, decisions, cases).")
    erased_at: datetime | None = None

# -- cases ------------------------------------------------------------------------------------------------
class CaseOut(BaseModel):
    case_id: str
    event_id: str
    user_id: str | None = None
    opened_at: datetime
    status: Literal["open", "resolved"]
    risk_level: str | None = None
    action: str | None = None
    score: float | None = None
    scenario: str | None = None
    reasons: Any = None
    rule_hits: Any = None
    resolved_at: datetime | None = None
    resolution_label: int | None = None
    resolved_by: str | None = None
    note: str | None = None


class CasesOut(BaseModel):
    cases: list[CaseOut]


class ResolveIn(_In):
    label: Literal[0, 1] = Field(description="1 = abuse confirmed, 0 = legitimate.")
    scenario: str | None = Field(None, max_length=64)
    note: str = Field("", max_length=2_000)


# -- admin ------------------------------------------------------------------------------------------------
class KeyCreateIn(_In):
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    name: str = Field("", max_length=128)


class KeyCreatedOut(BaseModel):
    key: str = Field(description="The full key: shown once, only its hash is stored.")
    key_id: str
    scopes: list[str]


class KeyRevokedOut(BaseModel):
    key_id: str
    revoked: bool
    revoked_at: datetime


class ModelStatusOut(BaseModel):
    version: str | None
    source: str | None
    last_error: str | None
    swaps: int


class RulesStatusOut(BaseModel):
    path: str | None
    rules: int
    mode: str
    last_error: str | None
    reloads: int


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: bool
    model_version: str | None
    rules: int
    problems: list[str]


class ErrorOut(BaseModel):
    error: str
    message: str
    field: str | None = None
    value: str | None = None
