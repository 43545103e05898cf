"""Alerts and the review queue: cases opened from risky decisions, resolved by analysts, pushed to webhooks.

A decision at or above the configured risk level opens a case in the same store transaction as the
event and its decision (see ``EventStore.append_decided``), so a case never points at an event that
was not stored. Resolving a case writes its label (``entity_kind='event'``) into the labels table, so
analyst feedback flows into training and evaluation like any other label.

Webhook delivery runs in one background thread with its own queue: the decision path only does a
non-blocking ``put``; a full queue drops the alert (counted) rather than slow a checkout.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from shopguard.errors import Conflict, NotFound, ValidationFailed
from shopguard.store import EventStore

RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high", "critical")
RISK_RANK: dict[str, int] = {r: i for i, r in enumerate(RISK_LEVELS)}
CASE_STATUSES: tuple[str, ...] = ("open", "resolved")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def should_open(risk_level: str, threshold: str) -> bool:
    """Whether a decision at ``risk_level`` opens a case when cases start at ``threshold``."""
    return RISK_RANK.get(risk_level, 0) >= RISK_RANK[threshold]


def case_for(decision: dict[str, Any], event: dict[str, Any], scenario: str | None) -> dict[str, Any]:
    """The case row for a decision (one case per event: the id derives from the event id)."""
    return {
        "case_id": f"case_{decision['event_id']}",
        "event_id": decision["event_id"],
        "user_id": event.get("user_id"),
        "opened_at": decision.get("decided_at") or _now(),
        "status": "open",
        "risk_level": decision.get("risk_level"),
        "action": decision.get("action"),
        "score": decision.get("score"),
        "scenario": scenario,
        "reasons": json.dumps(decision.get("reasons", []), default=str),
        "rule_hits": json.dumps(decision.get("rule_hits", []), default=str),
    }


class CaseQueue:
    """Listing and resolving cases in the store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def list(self, *, status: str | None = None, scenario: str | None = None, risk_level: str | None = None,
             limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        where, params = [], []  # type: ignore[var-annotated]
        if status is not None:
            if status not in CASE_STATUSES:
                raise ValidationFailed(f"status must be one of {', '.join(CASE_STATUSES)} (got {status!r})",
                                       field="status", value=status)
            where.append("status = ?")
            params.append(status)
        if scenario is not None:
            where.append("scenario = ?")
            params.append(scenario)
        if risk_level is not None:
            if risk_level not in RISK_RANK:
                raise ValidationFailed(f"risk_level must be one of {', '.join(RISK_LEVELS)} (got {risk_level!r})",
                                       field="risk_level", value=risk_level)
            where.append("risk_level = ?")
            params.append(risk_level)
        sql = "SELECT * FROM cases" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY opened_at DESC, case_id LIMIT {int(limit)} OFFSET {int(offset)}"
        return [_case_row(r) for r in self.store.query(sql, params).iter_rows(named=True)]

    def get(self, case_id: str) -> dict[str, Any]:
        df = self.store.query("SELECT * FROM cases WHERE case_id = ?", [case_id])
        if df.height == 0:
            raise NotFound(f"no case {case_id!r}", field="case_id", value=case_id)
        return _case_row(df.row(0, named=True))

    def resolve(self, case_id: str, *, label: int, scenario: str | None = None, note: str = "",
                resolved_by: str = "analyst", resolved_at: datetime | None = None) -> dict[str, Any]:
        """Close a case with a label (1 = abuse confirmed, 0 = legitimate); the label enters ``labels``."""
        if label not in (0, 1):
            raise ValidationFailed(f"label must be 0 or 1 (got {label!r})", field="label", value=label)
        case = self.get(case_id)
        if case["status"] == "resolved":
            raise Conflict(f"case {case_id!r} is already resolved", field="case_id", value=case_id)
        when = resolved_at or _now()
        scen = scenario if scenario is not None else (case.get("scenario") or "")
        with self.store._lock:  # one writer: the update and the label land together or not at all
            self.store.execute("BEGIN TRANSACTION")
            try:
                self.store.execute(
                    "UPDATE cases SET status = 'resolved', resolved_at = ?, resolution_label = ?, resolved_by = ?, "
                    "note = ?, scenario = coalesce(nullif(?, ''), scenario) WHERE case_id = ?",
                    [when, label, resolved_by, note, scen, case_id],
                )
                # Plain SQL, not append_labels: that opens its own transaction and we are inside ours.
                self.store.execute(
                    "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET label = excluded.label, "
                    "labeled_at = excluded.labeled_at, source = excluded.source",
                    ["event", case["event_id"], label, scen, when, "analyst"],
                )
                self.store.execute("COMMIT")
            except Exception:
                self.store.execute("ROLLBACK")
                raise
        return self.get(case_id)


def _case_row(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    for k in ("reasons", "rule_hits"):
        v = out.get(k)
        if isinstance(v, str):
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                pass
    return out


class WebhookDispatcher:
    """POSTs alerts to webhook URLs from a background thread, retrying failures with exponential backoff.

    ``submit`` never blocks: a full queue drops the alert and counts it in ``dropped``. Each delivery is
    tried up to ``max_attempts`` times, waiting ``base_delay * 2**attempt`` (with jitter, capped at
    ``max_delay``) between tries; waiting deliveries sit in a heap so one dead endpoint does not hold
    back the others.
    """

    def __init__(self, urls: Sequence[str], *, max_attempts: int = 5, base_delay: float = 0.2,
                 max_delay: float = 30.0, timeout: float = 2.0, queue_size: int = 10_000,
                 on_result: Callable[[str, bool], None] | None = None) -> None:
        self.urls = list(urls)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.on_result = on_result
        self._q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self.urls and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shopguard-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, payload: dict[str, Any]) -> bool:
        if not self.urls:
            return False
        try:
            self._q.put_nowait(payload)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def pending(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        waiting: list[tuple[float, int, str, int, bytes]] = []  # (due, seq, url, attempt, body)
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else 0.5
                try:
                    payload = self._q.get(timeout=min(timeout, 0.5))
                    body = json.dumps(payload, default=str).encode()
                    for url in self.urls:
                        heapq.heappush(waiting, (time.monotonic(), next(self._seq), url, 0, body))
                except queue.Empty:
                    pass
                now = time.monotonic()
                while waiting and waiting[0][0] <= now and not self._stop.is_set():
                    _, _, url, attempt, body = heapq.heappop(waiting)
                    ok = self._post(client, url, body)
                    if ok:
                        self.delivered += 1
                    elif attempt + 1 < self.max_attempts:
                        delay = min(self.max_delay, self.base_delay * 2**attempt) * (0.5 + random.random() / 2)
                        heapq.heappush(waiting, (time.monotonic() + delay, next(self._seq), url, attempt + 1, body))
                        continue
                    else:
                        self.failed += 1
                    if self.on_result is not None:
                        self.on_result(url, ok)

    def _post(self, client: httpx.Client, url: str, body: bytes) -> bool:
        try:
            r = client.post(url, content=body, headers={"content-type": "application/json"})
            return r.status_code < 300
        except httpx.HTTPError:
            return False
