"""D11: remembered decisions must stay within a memory bound under sustained load."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from tests.security.conftest import event

from shopguard.api import scoring
from shopguard.api.scoring import DecisionEngine
from shopguard.store import EventStore

BIG = {"score": 0.93, "probability": 0.97, "risk_level": "critical", "action": "block",
       "reasons": [{"code": f"R{i}", "text": "x" * 300 + str(i), "source": "model"} for i in range(12)],
       "rule_hits": ["card_testing_burst"], "model_version": "v0001", "latency_ms": 1.234}


def test_d11_remembered_answers_have_a_byte_budget(tmp_path: Path) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        engine = DecisionEngine(store)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(40_000):  # ~4 KB answers: 160 MB if each were kept
            engine._remember(f"e{i}", {"event_id": f"e{i}", **BIG})
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert engine._recent_bytes <= scoring.RECENT_BYTES
        assert grown < scoring.RECENT_BYTES * 1.5, grown / 1e6
        last = engine._recall("e39999")
        assert last == {"event_id": "e39999", **BIG}  # answered exactly as first given


def test_d11_compact_records_answer_as_before_and_evicted_ids_come_from_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "RECENT_DECISIONS", 5)
    with EventStore(tmp_path / "s.duckdb") as store:
        engine = DecisionEngine(store)
        engine.start(rebuild_features=False)
        try:
            first = engine.process([event(f"e{i}", seconds=i) for i in range(20)])
            assert len(engine._recent) <= 5
            small = engine._recent[first[-1]["event_id"]]
            assert b"event_id" not in small and len(small) < 200
            engine.flush()
            again = engine.process([event("e0", seconds=0), event("e19", seconds=19)])
            for a, b in zip(again, (first[0], first[19]), strict=True):
                assert {k: a[k] for k in ("event_id", "score", "action", "risk_level", "reasons", "rule_hits")} == \
                    {k: b[k] for k in ("event_id", "score", "action", "risk_level", "reasons", "rule_hits")}
            assert store.query("SELECT count(*) AS n FROM events")["n"][0] == 20
        finally:
            engine.stop()
