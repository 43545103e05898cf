"""The HTTP contract: decisions, batches, lookups, labels, timelines, cases, health, metrics, errors."""

from __future__ import annotations

import pytest
from tests.api.conftest import Service, event

DECISION_KEYS = {"event_id", "score", "probability", "risk_level", "action", "reasons", "rule_hits", "model_version",
                 "latency_ms"}


def test_one_event_gets_a_full_decision(service: Service) -> None:
    with service.client("ingest") as c:
        r = c.post("/v1/events", json=event("c-one", user="c1"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) == DECISION_KEYS
    assert d["event_id"] == "c-one" and d["risk_level"] in ("low", "medium", "high", "critical")
    assert d["action"] in ("allow", "review", "challenge", "block") and d["latency_ms"] >= 0
    if service.registry is not None:
        assert d["model_version"] == "v0001" and isinstance(d["score"], float)
        assert any(x["source"] == "model" for x in d["reasons"])


def test_batch_answers_in_order_and_lookup_matches(service: Service) -> None:
    evs = [event(f"c-batch-{i}", user="c2", seconds=i) for i in range(5)]
    with service.client("ingest") as c:
        r = c.post("/v1/events", json={"events": evs})
    assert r.status_code == 200, r.text
    out = r.json()["decisions"]
    assert [d["event_id"] for d in out] == [e["event_id"] for e in evs]
    with service.client("analyst") as c:
        got = c.get("/v1/decisions/c-batch-3").json()
        assert got == out[3]
        missing = c.get("/v1/decisions/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "event_id"


def test_rules_and_deny_list_drive_the_action(service: Service) -> None:
    with service.client() as c:
        d = c.post("/v1/events", json=event("c-denied", user="u_denied")).json()
    assert d["action"] == "block" and d["risk_level"] == "critical"
    assert d["rule_hits"] == ["denylist:users"] and d["reasons"][0]["code"] == "DENYLIST_USERS"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 422, "body"),
        (b"", 422, "body"),
        (b"42", 422, "body"),
        ({"type": "pay", "user_id": "u"}, 422, "ts"),
        ({**event("x1"), "type": "teleport"}, 422, "type"),
        ({**event("x2"), "amount": "lots"}, 422, "amount"),
        ({**event("x3"), "status": "maybe"}, 422, "status"),
        ({**event("x4"), "colour": "red"}, 422, "colour"),
        ({"events": [event("x5"), {**event("x6"), "amount": -3}]}, 422, "events[1].amount"),
        ({"events": []}, 422, "events"),
        ({"events": [event(f"x7-{i}") for i in range(51)]}, 422, "events"),
        ({"events": [event("x8")], "extra": 1}, 422, "extra"),
        ({"events": [event("x9", text="y" * 70_000)]}, 413, "body"),
    ],
)
def test_malformed_events_get_4xx_naming_the_field(service: Service, body: object, status: int, field: str) -> None:
    with service.client("ingest") as c:
        r = c.post("/v1/events", content=body) if isinstance(body, bytes) else c.post("/v1/events", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    # Nothing of a rejected request is stored.
    assert service.store.query("SELECT count(*) AS n FROM events WHERE event_id LIKE 'x%'")["n"][0] == 0


def test_labels_are_stored_and_validated(service: Service) -> None:
    with service.client("analyst") as c:
        r = c.post("/v1/labels", json={"labels": [
            {"entity_kind": "event", "entity_id": "c-one", "label": 1, "scenario": "card_testing",
             "labeled_at": "2024-03-20T00:00:00Z"}]})
        assert r.status_code == 200 and r.json()["stored"] == 1
        bad = c.post("/v1/labels", json={"labels": [{"entity_kind": "planet", "entity_id": "x", "label": 1}]})
        assert bad.status_code == 422 and bad.json()["field"] == "labels[0].entity_kind"
        bad = c.post("/v1/labels", json={"labels": [{"entity_kind": "user", "entity_id": "x", "label": 7}]})
        assert bad.status_code == 422 and bad.json()["field"] == "labels[0].label"
    labels = service.store.labels(entity_kind="event")
    row = labels.filter(labels["entity_id"] == "c-one").row(0, named=True)
    assert row["label"] == 1 and row["scenario"] == "card_testing" and row["labeled_at"].day == 20


def test_timeline_lists_events_newest_first_with_decisions(service: Service) -> None:
    with service.client("ingest") as c:
        for i in range(3):
            assert c.post("/v1/events", json=event(f"c-tl-{i}", user="c-tl", seconds=60 * i)).status_code == 200
    with service.client("analyst") as c:
        tl = c.get("/v1/users/c-tl/timeline", params={"limit": 2}).json()
    assert tl["user_id"] == "c-tl" and [e["event_id"] for e in tl["events"]] == ["c-tl-2", "c-tl-1"]
    assert all("action" in e for e in tl["events"])


def test_cases_open_resolve_and_feed_labels(service: Service) -> None:
    with service.client() as c:
        c.post("/v1/events", json=event("c-case", user="u_denied", seconds=5))
        cases = c.get("/v1/cases", params={"status": "open", "risk_level": "critical"}).json()["cases"]
        case = next(x for x in cases if x["event_id"] == "c-case")
        r = c.post(f"/v1/cases/{case['case_id']}/resolve", json={"label": 1, "scenario": "card_testing", "note": "ok"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "resolved" and r.json()["resolution_label"] == 1
        again = c.post(f"/v1/cases/{case['case_id']}/resolve", json={"label": 0})
        assert again.status_code == 409
        assert c.post("/v1/cases/nope/resolve", json={"label": 0}).status_code == 404
        assert c.get("/v1/cases", params={"status": "weird"}).status_code == 422
        resolved = c.get("/v1/cases", params={"status": "resolved", "scenario": "card_testing"}).json()["cases"]
    assert any(x["case_id"] == case["case_id"] for x in resolved)
    lab = service.store.query("SELECT * FROM labels WHERE entity_id = 'c-case'").row(0, named=True)
    assert lab["label"] == 1 and lab["source"] == "analyst" and lab["scenario"] == "card_testing"


def test_health_ready_metrics_and_openapi(service: Service) -> None:
    import httpx

    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(service.url + "/readyz").json()
    assert ready["ready"] is True and ready["rules"] >= 5
    with service.client("analyst") as c:
        text = c.get("/metrics").text
    for name in ("shopguard_request_latency_seconds_bucket", "shopguard_decisions_total", "shopguard_model_info",
                 "shopguard_errors_total", "shopguard_event_loop_lag_seconds_bucket",
                 "shopguard_event_loop_lag_max_seconds"):
        assert name in text
    # POST /v1/events is answered by the pure-ASGI fast path; its requests keep their route label.
    assert 'route="/v1/events"' in text
    spec = httpx.get(service.url + "/openapi.json").json()
    assert "/v1/events" in spec["paths"] and "Event" in spec["components"]["schemas"]


@pytest.mark.parametrize(("headers", "body", "status", "field"), [
    ({}, b'{"type": "pay"}', 401, "Authorization"),
    ({"Authorization": "Bearer sg_nope_nope"}, b'{"type": "pay"}', 401, "Authorization"),
    (None, b"", 422, "body"),
    (None, b"{not json", 422, "body"),
    (None, b'{"events": []}', 422, "events"),
    (None, b'{"events": [{"type": "pay"}], "x": 1}', 422, "x"),
])
def test_events_fast_path_answers_errors_like_the_route(service: Service, headers: dict[str, str] | None,
                                                         body: bytes, status: int, field: str) -> None:
    """The fast path checks auth before the body and maps errors exactly like the app's handlers."""
    import httpx

    h = {"content-type": "application/json", **(service.headers("ingest") if headers is None else headers)}
    r = httpx.post(service.url + "/v1/events", content=body, headers=h, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["field"] == field
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_events_fast_path_refuses_a_key_without_the_ingest_scope(service: Service) -> None:
    import httpx

    keys = {s for s in service.keys if s not in ("ingest", "admin")}
    if not keys:
        pytest.skip("no key without the ingest scope in this fixture")
    r = httpx.post(service.url + "/v1/events", content=b"{}", timeout=30,
                   headers={"content-type": "application/json", **service.headers(sorted(keys)[0])})
    assert r.status_code == 403 and r.json()["field"] == "scope"
