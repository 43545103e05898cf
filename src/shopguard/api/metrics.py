"""Prometheus metrics of the decision service (one registry per app, so tests can run several apps)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("shopguard.service")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Request latency, decisions by action, model version, errors, cases and webhook deliveries."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram("shopguard_request_latency_seconds", "HTTP request latency.",
                                         ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.decision_latency = Histogram("shopguard_decision_latency_seconds",
                                          "Time to decide one event (features, model, rules), before commit.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("shopguard_decisions_total", "Decisions by action.", ["action", "risk_level"],
                                 registry=r)
        self.errors = Counter("shopguard_errors_total", "Errors by kind.", ["kind"], registry=r)
        self.events_rejected = Counter("shopguard_events_rejected_total", "Events refused at the boundary by reason "
                                       "(future_ts: later than the clock-skew limit).", ["reason"], registry=r)
        self.model_info = Gauge("shopguard_model_info", "Model version in service (1 = serving).", ["version"],
                                registry=r)
        self.model_swaps = Counter("shopguard_model_swaps_total", "Models swapped in.", registry=r)
        self.cases = Counter("shopguard_cases_opened_total", "Review cases opened.", registry=r)
        self.webhooks = Counter("shopguard_webhook_deliveries_total", "Webhook deliveries.", ["outcome"], registry=r)
        self.rules_loaded = Gauge("shopguard_rules_loaded", "Rules in force.", registry=r)
        # How late the event loop wakes a 10 ms timer: every stall (a long pass, a collection, a thread
        # holding the GIL or the core) shows here whatever the load, which request latency alone hides.
        self.loop_lag = Histogram("shopguard_event_loop_lag_seconds", "Lateness of a 10 ms event-loop timer.",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag_max = Gauge("shopguard_event_loop_lag_max_seconds", "Largest event-loop lag since start.",
                                  registry=r)
        # Garbage-collection pauses by generation (``gc.callbacks``): a collection stops every thread of
        # the process, so a long one is a stall that no profile of the request path shows.
        self.gc_pause = Histogram("shopguard_gc_pause_seconds", "Garbage-collection pauses.", ["generation"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._gc_children = [self.gc_pause.labels(str(g)) for g in range(3)]
        self._gc_start = 0.0
        self._lag_max = 0.0
        self._version: str | None = None
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}

    def observe_decision(self, decision: dict[str, Any], seconds: float) -> None:
        self.decision_latency.observe(seconds)
        key = (decision["action"], decision["risk_level"])
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Label lookups cost more than the observation: keep each (route, method, status) child.
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_latency.labels(route, method, str(status))
        child.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)
        if seconds > self._lag_max:
            self._lag_max = seconds
            self.loop_lag_max.set(seconds)

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """For ``gc.callbacks``: times each collection."""
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            took = time.perf_counter() - self._gc_start
            gen = min(int(info.get("generation", 0)), 2)
            self._gc_children[gen].observe(took)
            self._gc_start = 0.0
            if took > 0.05:
                log.warning("garbage collection of generation %d paused the process for %.0f ms (%d objects "
                            "collected, thread %s)", gen, took * 1000, info.get("collected", 0),
                            threading.current_thread().name)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def rejected(self, reason: str) -> None:
        self.events_rejected.labels(reason).inc()

    def cases_opened(self, n: int) -> None:
        if n:
            self.cases.inc(n)

    def webhook_result(self, url: str, ok: bool) -> None:
        self.webhooks.labels("delivered" if ok else "failed").inc()

    def set_model(self, version: str | None) -> None:
        if self._version is not None:
            self.model_info.remove(self._version)
        self._version = version or "none"
        self.model_info.labels(self._version).set(1)
        self.model_swaps.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
