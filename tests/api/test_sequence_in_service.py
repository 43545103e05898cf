"""The behaviour transformer in a coalesced pass: one ONNX run for the pass, the same scores as one by one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.api.conftest import event
from tests.models.sequence.conftest import TINY, make_log

from shopguard.api.scoring import DecisionEngine, sequence_scores
from shopguard.models.sequence.config import PretrainConfig, preset
from shopguard.models.sequence.export import IncrementalScorer, export_onnx
from shopguard.models.sequence.pretrain import pretrain
from shopguard.store import EventStore


@pytest.fixture(scope="module")
def log_and_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    log = make_log(n_users=12, n_events=20, seed=4).drop("label").sort(["ts", "event_id"])
    out = tmp_path_factory.mktemp("seq_export")
    res = pretrain(log, network=preset("tiny", **TINY), config=PretrainConfig(epochs=1, batch_size=32, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(res.model, out, kind="surprise", quantize=False)
    return log, out


@pytest.mark.parametrize("chunk", [2, 7, 64])
def test_one_run_per_pass_gives_the_one_by_one_scores(log_and_export: tuple[pl.DataFrame, Path], chunk: int) -> None:
    log, folder = log_and_export
    warm, live = log.head(80), list(log.slice(80).iter_rows(named=True))
    one, many = IncrementalScorer(folder, int8=False), IncrementalScorer(folder, int8=False)
    one.warm(warm)
    many.warm(warm)
    learn = [i % 5 != 3 for i in range(len(live))]  # some events are read but not learnt (already stored)
    ref = [one.score_one(r, learn=ln) for r, ln in zip(live, learn, strict=True)]
    got: list[float] = []
    for s in range(0, len(live), chunk):  # several events of one user often share a pass
        got.extend(sequence_scores(many, live[s:s + chunk], learn[s:s + chunk]))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_engine_puts_the_pass_scores_in_the_rule_context(log_and_export: tuple[pl.DataFrame, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = log_and_export
    live = [event(f"sq-{i}", user=f"sq{i % 4}", seconds=30 * i, amount=float(5 + 40 * (i % 7))) for i in range(40)]
    ref = IncrementalScorer(folder)
    with EventStore(tmp_path / "shop.duckdb") as store:
        engine = DecisionEngine(store, sequence=IncrementalScorer(folder))
        engine.start()
        seen: dict[str, float] = {}
        real = engine._finish

        def spy(rec: dict[str, Any], ctx: dict[str, Any], *a: Any) -> Any:
            seen[rec["event_id"]] = ctx["sequence_score"]
            return real(rec, ctx, *a)

        monkeypatch.setattr(engine, "_finish", spy)
        groups = [engine.prepare(live[i:i + 3], batch=True) for i in range(0, len(live), 3)]
        for out in engine.submit_groups(groups):
            assert not isinstance(out, BaseException)
        engine.stop()
        want = {p.record["event_id"]: ref.score_one(p.record) for g in groups for p in g}
    assert seen.keys() == want.keys()
    np.testing.assert_allclose([seen[k] for k in want], list(want.values()), rtol=1e-4, atol=1e-5)
