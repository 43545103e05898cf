"""Typed settings of the decision service, with defaults that work on a laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What ``shopguard serve`` needs. Environment variables ``SHOPGUARD_SERVICE_*`` override defaults."""

    model_config = SettingsConfigDict(env_prefix="SHOPGUARD_SERVICE_", extra="forbid")

    db: Path = Field(Path("shopguard-data/shop.duckdb"), description="DuckDB store the service owns.")
    model: Path | None = Field(None, description="A model folder, or a registry root (hot swaps on promote).")
    rules: Path | None = Field(None, description="YAML rule file (reloaded when it changes).")
    sequence_model: Path | None = Field(
        None, description="Exported behaviour transformer (ONNX); its score is `sequence_score` for rules."
    )
    text_model: Path | None = Field(
        None, description="Review/chat text model (`shopguard train --detector text`): merged into their decisions."
    )
    text_min_score: float = Field(0.5, ge=0.0, le=1.0, description="Text score from which it lifts a decision.")
    pseudonym_key: str | None = Field(None, description="Secret for keyed hashing of personal identifiers. None: "
                                      "the key file beside the store (created, mode 0600, on first use).")
    allow_raw_identifiers: bool = Field(False, description="Store IPs, devices, cards, addresses, e-mails and "
                                        "phones as given (no pseudonym key). Off: safe by default.")
    max_clock_skew_s: float | None = Field(300.0, ge=0, description="Refuse events whose ts is more than this many "
                                           "seconds after the service's clock (422, counted in "
                                           "shopguard_events_rejected_total{reason=\"future_ts\"}). None: no limit.")
    case_risk_level: Literal["low", "medium", "high", "critical"] = Field(
        "high", description="Decisions at or above this risk level open a review case and fire webhooks."
    )
    webhooks: list[str] = Field(default_factory=list, description="URLs that receive every new case (JSON POST).")
    max_body_bytes: int = Field(1_048_576, ge=1_024, description="Largest request body accepted (413 above).")
    body_timeout_s: float | None = Field(10.0, gt=0, description="A request body that stops arriving for this "
                                         "long is answered 408 and its connection closed. None: wait for ever.")
    max_batch: int = Field(1_000, ge=1, description="Most events in one POST /v1/events.")
    rate_limit_per_s: float = Field(2_000.0, gt=0, description="Requests per second each API key may send.")
    rate_limit_burst: float = Field(4_000.0, gt=0, description="Requests a key may send in a burst.")
    watch_every_s: float = Field(1.0, gt=0, description="How often the rule file and model registry are checked.")
    coalesce_max_events: int = Field(256, ge=1, description="Most events of concurrent requests decided in one "
                                     "model pass (requests arriving together share a pass and a journal fsync).")
    decide_in_thread: bool | None = Field(None, description="Decide coalesced passes on a background thread "
                                          "while the event loop keeps serving (passes grow with load). None: only "
                                          "when a behaviour transformer is in the path (its ONNX run frees the GIL).")
    writer_max_batch: int = Field(2_000, ge=1, description="Most events committed in one group commit.")
    journal: bool = Field(True, description="Acknowledge after an fsync-ed journal append (DB.journal), then "
                          "write DuckDB in larger transactions; off: one DuckDB commit per group.")
    journal_apply_every_s: float = Field(1.0, gt=0, description="How often fsync-ed journal segments are written "
                                         "into DuckDB (each transaction costs ~20 ms of CPU whatever its size).")
    gil_switch_interval_s: float | None = Field(
        0.001, gt=0, description="Python's thread switch interval while serving (default 5 ms): the writer thread "
        "that answers after fsync waits at most this long for the event loop's thread. None keeps Python's.")
    journal_fsync: bool = Field(True, description="fsync the journal before acknowledging (off survives a process "
                                "crash but not a power cut).")
    auth: bool = Field(True, description="Require API keys (turn off only for local benchmarks).")
    rebuild_features: bool = Field(True, description="Rebuild online features from the store at start-up.")
    gc_freeze: bool = Field(True, description="After start-up, move the rebuilt state (millions of small objects) "
                            "out of the garbage collector's reach: a full collection over it pauses every request "
                            "for 100+ ms.")
    gc_sweep_every_s: float = Field(1.0, ge=0, description="With gc_freeze: how often a young collection runs off "
                                    "the request path and its survivors (the online state serving adds) are frozen "
                                    "too. Without it they pile up unseen by the collector's counter until one "
                                    "collection walks them all (45 ms for 150,000 objects). 0: never.")
    duckdb_threads: int | None = Field(1, ge=0, description="DuckDB worker threads of the service's store. One: the "
                                       "background journal apply and analyst reads never take the event loop's core "
                                       "(with all cores, each apply stalled requests for tens of ms). 0 or None: DuckDB's "
                                       "default (every core).")
    events_fast_path: bool = Field(True, description="Answer POST /v1/events in a pure-ASGI handler (same auth, "
                                   "checks and answers as the FastAPI route, a third less CPU per request).")
    fast_scoring: bool = Field(True, description="Score LightGBM models from the feature dicts with LightGBM's C "
                               "single-row predictor (no Polars frame; exactly the same decisions, a sixth of the CPU "
                               "per event). Other models, and off, use the frame path.")
    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry hooks. Off by default: the "
                                "service's telemetry is Prometheus /metrics, and the hooks' check costs CPU on "
                                "every request.")
