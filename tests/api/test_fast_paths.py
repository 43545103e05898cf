"""The service's cheap paths give exactly what the general ones give.

- journal apply: a segment's JSON lines straight into Arrow tables and plain inserts, versus Python rows
  through ``EventStore.append_decided``;
- model: frame-free single-row scoring (``LoadedModel.fast``) versus the Polars frame path.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.api.conftest import event

from shopguard.api.scoring import (
    DecisionEngine,
    LoadedModel,
    ModelSlot,
    StoreWriter,
    _journal_rows,
    journal_tables,
)
from shopguard.store import EventStore

TABLES = (("events", "SELECT * EXCLUDE (ingested_at) FROM events ORDER BY event_id"),
          ("decisions", "SELECT * FROM decisions ORDER BY event_id"),
          ("cases", "SELECT * FROM cases ORDER BY case_id"))


def _events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rnd.randrange(6)}"
        kind = rnd.choice(["pay", "pay", "login", "view", "review"])
        fields: dict[str, Any] = {"type": kind}
        if kind == "pay":
            fields.update(amount=rnd.choice([1.0, 25.5, 900.0]), status=rnd.choice(["success", "failure"]),
                          currency="EUR")
            if i % 3:
                fields["attrs"] = {"channel": "web", "n": i}
        elif kind == "review":
            fields = {"type": "review", "rating": rnd.randrange(1, 6), "text": "great \u00e9 \"quoted\"\nline",
                      "item_id": "i1", "amount": None, "status": None}
        else:
            fields.update(amount=None, status="success" if kind == "login" else None)
        out.append(event(f"f{seed}-{i}", user=user, seconds=i * 7, **fields))
    return out


def _segment_bytes(tmp_path: Path, events: list[dict[str, Any]]) -> tuple[bytes, EventStore, DecisionEngine]:
    """Decide ``events`` (singles and a batch) in an engine whose journal is never applied meanwhile."""
    db = tmp_path / "seg.duckdb"
    store = EventStore(db)
    engine = DecisionEngine(store, journal=Path(f"{db}.journal"), journal_apply_every_s=3600, case_risk_level="low")
    engine.start()
    for e in events[:20]:
        engine.process([e], batch=False)
    engine.process(events[20:])
    seg = engine.writer._segment
    assert seg is not None
    return seg.read_bytes(), store, engine


def test_journal_segment_to_arrow_stores_what_the_row_path_stores(tmp_path: Path) -> None:
    data, store, engine = _segment_bytes(tmp_path, _events(60))
    tables = journal_tables(data)
    rows = _journal_rows(data)
    assert [t.num_rows for t in tables] == [len(r) for r in rows] == [60, 60, 60]  # case_risk_level low: a case each
    by_rows, by_tables = EventStore(tmp_path / "rows.duckdb"), EventStore(tmp_path / "tables.duckdb")
    by_rows.append_decided(*rows)
    by_tables.append_decided_tables(*tables)
    engine.flush()  # the engine's own applier (the tables path) into its store
    for name, sql in TABLES:
        want = by_rows.query(sql)
        assert want.height > 0
        assert by_tables.query(sql).equals(want), name
        assert store.query(sql).equals(want), name
    engine.stop()
    # Applying again (a crash between apply and delete) or a duplicate row inside a segment: stored once.
    by_tables.append_decided_tables(*tables)
    doubled = tuple(t.slice(0, 5) for t in tables)
    import pyarrow as pa

    by_tables.append_decided_tables(*(pa.concat_tables([t, t]) for t in doubled))
    for name, sql in TABLES:
        assert by_tables.query(sql).equals(by_rows.query(sql)), name
    for s in (by_rows, by_tables, store):
        s.close()


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    data, store, engine = _segment_bytes(tmp_path, _events(30, seed=1))
    engine.stop()
    store.close()
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1  # drop the last complete line, then tear it
    torn = data[:cut] + data[cut:cut + 40]
    events, decisions, _cases = journal_tables(torn)
    assert events.num_rows == decisions.num_rows == len(_journal_rows(torn)[0]) < 30
    assert journal_tables(b"")[0].num_rows == 0


def test_a_segment_arrow_cannot_type_is_applied_row_by_row(tmp_path: Path) -> None:
    line = orjson.loads(_segment_bytes(tmp_path, _events(21, seed=2))[0].splitlines()[0])
    line["events"][0]["currency"] = 5  # a number in a text column: pyarrow refuses, Polars casts it
    journal = tmp_path / "odd.duckdb.journal"
    Path(f"{journal}.1").write_bytes(orjson.dumps(line) + b"\n")
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises, the writer falls back
        journal_tables(Path(f"{journal}.1").read_bytes())
    with EventStore(tmp_path / "odd.duckdb") as store:
        assert StoreWriter(store, journal=journal).recover() == 1
        got = store.query("SELECT currency FROM events")
        assert got["currency"].to_list() == ["5"]


def test_fast_single_row_scoring_equals_the_frame_path(tmp_path: Path,
                                                        trained_models: tuple[Path, Path] | None) -> None:
    if trained_models is None:
        pytest.skip("model training unavailable")
    lgbm, hbos = trained_models
    model = LoadedModel.load(lgbm)
    assert model.fast is not None
    assert LoadedModel.load(hbos).fast is None  # other detectors keep the frame path
    seen: list[dict[str, Any]] = []
    real = LoadedModel.decide_many

    def spy(self: LoadedModel, rows: list[dict[str, Any]]) -> Any:
        seen.extend(rows)
        return real(self, rows)

    slot = ModelSlot(lgbm)
    slot.load_initial()
    store = EventStore(tmp_path / "fast.duckdb")
    engine = DecisionEngine(store, model=slot)
    engine.start()
    LoadedModel.decide_many = spy  # type: ignore[method-assign]
    try:
        for e in _events(80, seed=3):
            engine.process([e], batch=False)
    finally:
        LoadedModel.decide_many = real  # type: ignore[method-assign]
        engine.stop()
        store.close()
    assert len(seen) == 80
    flagged = 0
    for row in seen:
        [fast] = model.decide_many([row])
        [ref] = model._decide_frame([row])
        assert fast.score == pytest.approx(ref.score, rel=1e-12, abs=1e-15)
        assert fast.probability == pytest.approx(ref.probability, rel=1e-12, abs=1e-15)
        assert (fast.risk_level, fast.action, fast.reasons) == (ref.risk_level, ref.action, ref.reasons)
        flagged += fast.action != "allow"
    together = model.decide_many(seen[:9])
    assert [o.score for o in together] == [model.decide_many([r])[0].score for r in seen[:9]]


def test_a_group_whose_fsync_fails_is_not_left_in_the_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shopguard.api.scoring as scoring

    db = tmp_path / "fs.duckdb"
    store = EventStore(db)
    engine = DecisionEngine(store, journal=Path(f"{db}.journal"), journal_apply_every_s=3600)
    engine.start()
    engine.process([event("ok1")], batch=False)
    real = scoring.os.fsync

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(scoring.os, "fsync", broken)
    with pytest.raises(Exception, match="could not commit"):
        engine.process([event("lost", seconds=1)], batch=False)
    monkeypatch.setattr(scoring.os, "fsync", real)
    engine.process([event("ok2", seconds=2)], batch=False)
    seg = engine.writer._segment
    assert seg is not None and b"lost" not in seg.read_bytes()
    engine.flush()
    assert sorted(store.query("SELECT event_id FROM events")["event_id"].to_list()) == ["ok1", "ok2"]
    engine.stop()
    store.close()
