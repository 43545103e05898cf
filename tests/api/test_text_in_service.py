"""Review and chat text in the decision service: the engine and the HTTP path quote the text signal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.api.conftest import T0, Service, make_keys, serve_in_thread

from shopguard.api import ServiceSettings
from shopguard.api.scoring import DecisionEngine
from shopguard.events.simulate import SimulationConfig, simulate_shop
from shopguard.models.base import load_detector
from shopguard.models.registry import ModelRegistry
from shopguard.models.text import fit_text_model
from shopguard.models.text.decisions import OnlineTextScorer
from shopguard.store import EventStore

TEMPLATE = "Best headphones ever!!! Highly recommend!!! Five stars!!!"
REFUND_CHAT = "I never received my order, tracking says delivered but the box was empty, refund me now or I file a chargeback"


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_service")
    with EventStore(root / "train.duckdb") as store:
        simulate_shop(SimulationConfig(users=300, days=10, seed=3)).to_store(store)
        fit_text_model(store).save(root / "text")
    return root / "text"


def brushing(prefix: str, n: int = 6, seconds: float = 0) -> list[dict[str, Any]]:
    """Fresh accounts that sign up and post the same templated 5-star review of one item minutes apart."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        t = T0 + timedelta(seconds=seconds + 120 * i)
        user = f"{prefix}_u{i}"
        out.append({"event_id": f"{prefix}_s{i}", "type": "signup", "ts": t.isoformat() + "Z", "user_id": user})
        out.append({"event_id": f"{prefix}_r{i}", "type": "review", "ts": (t + timedelta(seconds=30)).isoformat() + "Z",
                    "user_id": user, "item_id": f"{prefix}_item", "rating": 5, "text": TEMPLATE})
    return out


@pytest.fixture()
def engine(tmp_path: Path, text_model_dir: Path) -> Iterator[DecisionEngine]:
    store = EventStore(tmp_path / "shop.duckdb")
    eng = DecisionEngine(store, text=load_detector(text_model_dir))
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()
        store.close()


def _text_reasons(decision: dict[str, Any]) -> list[str]:
    return [r["text"] for r in decision["reasons"] if r.get("source") == "text"]


def test_engine_quotes_the_template_across_accounts(engine: DecisionEngine) -> None:
    decisions = engine.process(brushing("e"))
    last = decisions[-1]
    assert last["reasons"][0]["source"] == "text" and last["reasons"][0]["code"] == "TEXT_REVIEW"
    texts = _text_reasons(last)
    assert any("similar to 5 reviews from 5 accounts" in t for t in texts), texts
    assert last["probability"] >= 0.5 and last["action"] != "allow"
    # Non-text events carry no text reasons.
    assert all(not _text_reasons(d) for d in decisions[0::2])
    # Sent one request at a time, the history kept in memory gives the same evidence.
    later = brushing("f", seconds=3600)
    for ev in later:
        d = engine.process([ev])[0]
    assert any("similar to" in t for t in _text_reasons(d))


def test_engine_flags_a_refund_script_chat(engine: DecisionEngine) -> None:
    chat = {"event_id": "c1", "type": "chat", "ts": T0.isoformat() + "Z", "user_id": "cu1", "text": REFUND_CHAT}
    d = engine.process([chat])[0]
    assert d["reasons"][0]["code"] == "TEXT_CHAT" and "refund-abuse" in d["reasons"][0]["text"]


def test_a_failing_text_model_falls_back_to_the_decision_without_text(engine: DecisionEngine,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("text model broken")

    monkeypatch.setattr(engine.text, "score", boom)
    d = engine.process(brushing("g", n=2))[-1]
    assert d["action"] == "allow" and not _text_reasons(d)
    assert engine.text_errors >= 1


def test_history_stays_bounded(text_model_dir: Path) -> None:
    scorer = OnlineTextScorer(load_detector(text_model_dir), max_reviews=3, max_users=4)  # type: ignore[arg-type]
    for i in range(10):
        scorer.observe({"event_id": f"r{i}", "type": "review", "ts": T0 + timedelta(minutes=i), "user_id": f"u{i}",
                        "item_id": "i", "rating": 5, "text": TEMPLATE})
    assert len(scorer._reviews) == 3 and len(scorer._first) == 4
    assert scorer.history_for({"ts": T0 + timedelta(hours=1), "user_id": "u9"}).height == 4  # 3 reviews + first


@pytest.fixture(scope="module")
def text_service(tmp_path_factory: pytest.TempPathFactory, text_model_dir: Path) -> Iterator[Service]:
    db = tmp_path_factory.mktemp("text_http") / "shop.duckdb"
    settings = ServiceSettings(db=db, text_model=text_model_dir)
    with serve_in_thread(settings, make_keys(db)) as svc:
        yield svc


def test_http_answers_a_templated_review_with_its_text_reason(text_service: Service) -> None:
    with text_service.client("ingest") as c:
        r = c.post("/v1/events", json={"events": brushing("h")})
        assert r.status_code == 200, r.text
        body = r.json()
    decisions = body["decisions"] if isinstance(body, dict) and "decisions" in body else body
    last = decisions[-1]
    assert last["reasons"][0]["source"] == "text"
    assert any("similar to 5 reviews from 5 accounts" in t for t in _text_reasons(last))


def _wait_text_version(svc: Service, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while svc.engine.text_slot.version != version:
        assert time.monotonic() < deadline, f"text model {version} never served (now {svc.engine.text_slot.version})"
        time.sleep(0.05)


def test_text_model_hot_swaps_from_a_registry_and_refuses_a_corrupt_one(tmp_path: Path, text_model_dir: Path) -> None:
    reg = ModelRegistry(tmp_path / "text_models")
    v1 = reg.register(text_model_dir)
    reg.register(text_model_dir)
    reg.promote(v1.version)
    db = tmp_path / "shop.duckdb"
    settings = ServiceSettings(db=db, text_model=reg.root, watch_every_s=0.2)
    chat = {"type": "chat", "ts": T0.isoformat() + "Z", "user_id": "cu9", "text": REFUND_CHAT}
    with serve_in_thread(settings, make_keys(db)) as svc, svc.client() as c:
        assert c.get("/v1/models/text").json()["version"] == "v0001"
        reg.promote("v0002")  # the watcher follows the pointer by itself, off the request path
        _wait_text_version(svc, "v0002")
        d = c.post("/v1/events", json={**chat, "event_id": "swap-chat-1"}).json()
        assert d["reasons"][0]["code"] == "TEXT_CHAT"
        # A corrupted version forced in behind the CLI's back: refused, v0002 keeps serving, readyz says why.
        bad = reg.register(text_model_dir)
        target = next(p for p in sorted(bad.path.rglob("*")) if p.is_file() and p.name != "manifest.json")
        target.write_bytes(b"garbage")
        state = json.loads(reg.state_path.read_text())
        state.update(current=bad.version, history=[*state["history"], bad.version])
        reg._write_state(state)
        status = c.post("/v1/models/text/reload").json()
        assert status["version"] == "v0002" and "checksum" in (status["last_error"] or "")
        assert any("checksum" in p for p in c.get("/readyz").json()["problems"])
        d = c.post("/v1/events", json={**chat, "event_id": "swap-chat-2"}).json()
        assert d["reasons"][0]["code"] == "TEXT_CHAT"
