"""The fusion model (behaviour transformer + engineered features) served by the decision service.

Online, its two inputs come from the service's own state (online features, a per-user history cache); the
decisions must equal the batch path's (``pipeline.bind_events`` + ``ModelBundle``) on a replayed log, also
across a hot swap to the fusion model while events keep arriving, and over HTTP.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.api.conftest import make_keys, serve_in_thread
from tests.cli.test_train_fusion import DAYS, START, TINY, takeover_shop

from shopguard.api import ServiceSettings
from shopguard.api.scoring import DecisionEngine, LoadedModel, ModelSlot
from shopguard.errors import ModelError
from shopguard.store import EventStore

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

LIVE = START + timedelta(days=DAYS - 3)  # events from here on are replayed live


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in frame.sort(["ts", "event_id"]).iter_rows(named=True):
        rec = {k: v for k, v in r.items() if v is not None and k != "attrs"}
        rec["ts"] = r["ts"].isoformat() + "Z"
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def fusion_shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.models.bundle import seal_files
    from shopguard.models.sequence.config import PretrainConfig, preset
    from shopguard.models.sequence.export import export_onnx
    from shopguard.models.sequence.pretrain import pretrain
    from shopguard.pipeline import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fusion_service")
    events, labels = takeover_shop(seed=2, users=40)
    early = labels.filter(pl.col("labeled_at") < LIVE)
    split = SplitConfig(delay_days=2, test_days=6)
    pretrain(events.filter(pl.col("ts") < START + timedelta(days=DAYS - 6)), network=preset("tiny", **TINY),
             config=PretrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=3), out_dir=root / "seq")
    with EventStore(root / "train.duckdb") as s:
        s.append_events(events)
        s.append_labels(labels)
        train(s, root / "fusion", detector="fusion", split=split,
              params={"pretrained": str(root / "seq"), "method": "frozen"})
        train(s, root / "lgbm", detector="lightgbm", split=split)
    export_onnx(root / "fusion", root / "fusion" / "onnx", quantize=False)
    seal_files(root / "fusion", "onnx")  # as `shopguard train --detector fusion` does
    # The batch reference: the whole log, labels as known when the live stream starts.
    with EventStore(root / "reference.duckdb") as s:
        s.append_events(events)
        s.append_labels(early)
    history, live = events.filter(pl.col("ts") < LIVE), events.filter(pl.col("ts") >= LIVE)
    with EventStore(root / "history.duckdb") as s:
        s.append_events(history)
        s.append_labels(early)
    return {"root": root, "live": _records(live), "fusion": root / "fusion", "lgbm": root / "lgbm"}


@pytest.fixture(scope="module")
def reference(fusion_shop: dict[str, Any]) -> dict[str, tuple[float, float, str, list[str]]]:
    """Batch decisions of the live events: (detector score, probability, action, reason texts) by event id."""
    from shopguard.features import compute_features
    from shopguard.models.bundle import ModelBundle
    from shopguard.pipeline import bind_events

    bundle = ModelBundle.load(fusion_shop["fusion"])
    with EventStore(fusion_shop["root"] / "reference.duckdb", read_only=True) as s:
        rows = compute_features(s, since=LIVE, definitions=bundle.feature_set)
        bound = bind_events(s, bundle, rows)
    return {d.event_id: (d.score, d.probability, d.action.value, [r.text for r in d.reasons])
            for d in bound.decide(rows)}


def _store_copy(fusion_shop: dict[str, Any], tmp_path: Path) -> Path:
    import shutil

    db = tmp_path / "live.duckdb"
    shutil.copy(fusion_shop["root"] / "history.duckdb", db)
    return db


def _replay(engine: DecisionEngine, records: list[dict[str, Any]], chunk: int) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    for s in range(0, len(records), chunk):
        groups = [engine.prepare([r], batch=False) for r in records[s:s + chunk]]  # one request per event
        for res in engine.submit_groups(groups):
            assert not isinstance(res, BaseException), res
            results, commit = res
            if commit is not None:
                commit.result(30)
            for r in results:
                d = r.result(30) if hasattr(r, "result") else r
                got[d["event_id"]] = d
    return got


def _check(got: dict[str, dict[str, Any]], reference: dict[str, tuple[float, float, str, list[str]]]) -> None:
    assert set(got) == set(reference)
    ids = sorted(reference)
    np.testing.assert_allclose([got[i]["score"] for i in ids], [reference[i][0] for i in ids], atol=1e-4)
    np.testing.assert_allclose([got[i]["probability"] for i in ids], [reference[i][1] for i in ids], atol=1e-3)
    flips = sum(got[i]["action"] != reference[i][2] for i in ids)
    assert flips <= 1  # only a probability within float noise of a policy threshold may land on the other side
    # Reasons (computed on the feature rows, no frame) quote what the batch path's explain quotes.
    flagged = [i for i in ids if got[i]["action"] != "allow" and got[i]["action"] == reference[i][2]]
    assert [[r["text"] for r in got[i]["reasons"]] for i in flagged] == [reference[i][3] for i in flagged]


@pytest.mark.parametrize("chunk", [1, 5])
def test_served_fusion_decisions_equal_the_batch_path(fusion_shop: dict[str, Any], reference: dict[str, Any],
                                                       tmp_path: Path, chunk: int) -> None:
    with EventStore(_store_copy(fusion_shop, tmp_path)) as store:
        slot = ModelSlot(fusion_shop["fusion"])
        slot.load_initial()
        assert slot.model is not None and slot.model.fusion is not None and slot.model.fast is None
        engine = DecisionEngine(store, model=slot)
        engine.start()
        try:
            got = _replay(engine, fusion_shop["live"], chunk)
        finally:
            engine.stop()
    _check(got, reference)
    assert all(d["model_version"].startswith("sequence_fusion-") for d in got.values())
    flagged = [d for d in got.values() if d["action"] != "allow"]
    assert flagged and all(d["reasons"] for d in flagged)  # the linear head's feature contributions
    assert {r["source"] for d in flagged for r in d["reasons"]} == {"model"}


def test_hot_swap_to_fusion_warms_its_history_while_events_keep_coming(
        fusion_shop: dict[str, Any], reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LightGBM serves; the fusion model is promoted mid-stream. Events keep being decided (by LightGBM)
    while the new model's history is read from the store and while it is warmed; they reach its history
    through the tap, once each, so every decision after the swap equals the batch path's."""
    from shopguard.api.fusion import FusionServing
    from shopguard.models.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "models")
    reg.promote(reg.register(fusion_shop["lgbm"]).version)
    v2 = reg.register(fusion_shop["fusion"]).version
    live = fusion_shop["live"]
    a, b, c = len(live) // 4, len(live) // 2, 3 * len(live) // 4
    reading, read_gate, warming, warm_gate = (threading.Event() for _ in range(4))
    with EventStore(_store_copy(fusion_shop, tmp_path)) as store:
        slot = ModelSlot(reg.root)
        slot.load_initial()
        engine = DecisionEngine(store, model=slot)
        engine.start()
        real_events, real_warm = store.events, FusionServing.warm

        def gated_events(*args: Any, **kw: Any) -> Any:
            reading.set()
            assert read_gate.wait(30)
            return real_events(*args, **kw)

        def gated_warm(self: FusionServing, events: Any) -> int:
            warming.set()
            assert warm_gate.wait(30)
            return real_warm(self, events)

        monkeypatch.setattr(store, "events", gated_events)
        monkeypatch.setattr(FusionServing, "warm", gated_warm)
        try:
            before = _replay(engine, live[:a], 4)
            reg.promote(v2)
            swapper = threading.Thread(target=slot.check)  # as the watcher thread does
            swapper.start()
            assert reading.wait(30)
            while_reading = _replay(engine, live[a:b], 1)  # in the tap before the read, and in the store
            engine.flush()
            read_gate.set()
            assert warming.wait(30)
            while_warming = _replay(engine, live[b:c], 3)  # in the tap after the read: learnt under the lock
            warm_gate.set()
            swapper.join(60)
            assert slot.model.fusion is not None and slot.last_error is None
            after = _replay(engine, live[c:], 3)
        finally:
            read_gate.set()
            warm_gate.set()
            engine.stop()
    lgbm = {d["model_version"] for d in (before | while_reading | while_warming).values()}
    assert len(lgbm) == 1 and not lgbm.pop().startswith("sequence_fusion-")
    assert {d["model_version"] for d in after.values()} == {slot.model.version}
    _check(after, {k: reference[k] for k in after})


def test_fusion_over_http(fusion_shop: dict[str, Any], reference: dict[str, Any], tmp_path: Path) -> None:
    db = _store_copy(fusion_shop, tmp_path)
    keys = make_keys(db)
    settings = ServiceSettings(db=db, model=fusion_shop["fusion"])
    live = fusion_shop["live"][:30]
    with serve_in_thread(settings, keys) as svc, svc.client("ingest") as c:
        answers = [c.post("/v1/events", json=r).json() for r in live[:10]]
        r = c.post("/v1/events", json={"events": live[10:]})
        assert r.status_code == 200, r.text
        answers += r.json()["decisions"]
        with svc.client("analyst") as a:
            current = a.get("/v1/models/current").json()
    for d in answers:
        assert d["model_version"].startswith("sequence_fusion-")
        np.testing.assert_allclose(d["score"], reference[d["event_id"]][0], atol=1e-4)
    assert current["version"].startswith("sequence_fusion-") and current["last_error"] is None


@pytest.mark.parametrize("sealed", [True, False])
def test_a_damaged_fusion_export_is_refused(fusion_shop: dict[str, Any], tmp_path: Path, sealed: bool) -> None:
    import json
    import shutil

    broken = tmp_path / "fusion"
    shutil.copytree(fusion_shop["fusion"], broken)
    (broken / "onnx" / "model.onnx").write_bytes(b"not a graph")
    if not sealed:  # a folder whose manifest predates its export: the load itself refuses it
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("onnx/")}
        (broken / "manifest.json").write_text(json.dumps(manifest))
    match = "corrupted: checksum of onnx/model.onnx" if sealed else "cannot be served"
    with pytest.raises(ModelError, match=match):
        LoadedModel.load(broken)


def test_a_fusion_model_without_an_export_is_exported_on_load(fusion_shop: dict[str, Any], tmp_path: Path) -> None:
    import json
    import shutil

    bare = tmp_path / "fusion"
    shutil.copytree(fusion_shop["fusion"], bare, ignore=shutil.ignore_patterns("onnx"))
    manifest = json.loads((bare / "manifest.json").read_text())  # as pipeline.train leaves it: no export
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("onnx/")}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    m = LoadedModel.load(bare)
    assert m.fusion is not None and m.fusion.history.scorer.kind == "fusion"
    assert not (bare / "onnx").exists()  # exported to a temporary folder: the model folder stays as verified
