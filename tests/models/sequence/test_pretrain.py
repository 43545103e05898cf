from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from shopguard.errors import ModelError
from shopguard.models.sequence.config import NetworkConfig, PretrainConfig, preset
from shopguard.models.sequence.network import BehaviourTransformer, FoundationModel
from shopguard.models.sequence.pretrain import evaluate_loss, pretrain

from .conftest import TINY, make_log


def test_loss_decreases_on_seeded_log(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    hist = pretrained.metadata["history"]
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.9
    fresh = FoundationModel(pretrained.config, pretrained.tokenizer)
    held_out = make_log(n_users=10, seed=99).drop("label")
    assert evaluate_loss(pretrained, held_out)["loss"] < 0.8 * evaluate_loss(fresh, held_out)["loss"]


def test_surprise_is_point_in_time(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    """The score of event t must not move when later events change or appear."""
    targets = ["u1e10", "u2e5", "u3e20"]
    before = pretrained.surprise(pretrained.build(toy_log, targets))
    cut = toy_log.filter(pl.col("event_id").is_in(targets)).select(pl.col("ts").max()).item()
    later = toy_log.filter(pl.col("ts") > cut)
    scrambled = later.with_columns(pl.col("type").reverse(), pl.col("ts") + timedelta(seconds=1))
    extra = later.with_columns(pl.col("event_id") + "_dup")
    changed = pl.concat([toy_log.filter(pl.col("ts") <= cut), scrambled, extra])
    after = pretrained.surprise(pretrained.build(changed, targets))
    np.testing.assert_allclose(before, after, rtol=1e-5)
    # ... and does move when an earlier event changes (it really reads the history).
    earlier = toy_log.with_columns(pl.when(pl.col("event_id") == "u1e9").then(pl.lit("ZZ")).otherwise(pl.col("geo"))
                                   .alias("geo"))
    assert pretrained.surprise(pretrained.build(earlier, ["u1e10"]))[0] != pytest.approx(before[0])


def test_surprise_ranks_takeovers_above_routine(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    s = pretrained.surprise(pretrained.build(toy_log, toy_log["event_id"]))
    assert roc_auc_score(toy_log["label"].to_numpy(), s) > 0.8


def test_save_load_roundtrip(pretrained: FoundationModel, toy_log: pl.DataFrame, tmp_path: Path) -> None:
    pretrained.save(tmp_path / "m")
    again = FoundationModel.load(tmp_path / "m")
    b = pretrained.build(toy_log, ["u0e5", "u4e25"])
    np.testing.assert_allclose(pretrained.surprise(b), again.surprise(b), rtol=1e-6)
    np.testing.assert_allclose(pretrained.embeddings(b), again.embeddings(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="no pretrained"):
        FoundationModel.load(tmp_path / "missing")


def test_resume_continues_exactly(toy_log: pl.DataFrame, tmp_path: Path) -> None:
    ev = toy_log.drop("label").head(400)
    net = preset("tiny", **TINY)
    cfg = PretrainConfig(epochs=2, batch_size=16, seed=5)
    full = pretrain(ev, network=net, config=cfg, out_dir=tmp_path / "a").model
    part = pretrain(ev, network=net, config=cfg.model_copy(update={"max_steps": 5}), out_dir=tmp_path / "b")
    assert part.model.metadata["complete"] is False
    resumed = pretrain(ev, config=cfg, out_dir=tmp_path / "b", resume=True).model
    for (k, a), (_, b) in zip(full.network.state_dict().items(), resumed.network.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ModelError, match="nothing to resume"):
        pretrain(ev, config=cfg, out_dir=tmp_path / "c", resume=True)


def test_large_preset_has_tens_of_millions_of_parameters(pretrained: FoundationModel) -> None:
    cfg = preset("large")
    sizes = {f: 8 + (cfg.tokenizer.merchant_buckets if f in ("merchant", "item") else 50) for f in pretrained.tokenizer.vocab_sizes}
    with torch.device("meta"):
        n = sum(p.numel() for p in BehaviourTransformer(cfg, sizes).parameters())
    assert 20e6 < n < 100e6


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        NetworkConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        NetworkConfig(unknown_key=1)


def test_surprise_over_chosen_fields(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    from shopguard.models.sequence.detectors import BEHAVIOUR_FIELDS

    b = pretrained.build(toy_log, toy_log["event_id"][:40])
    total = pretrained.surprise(b)
    part = pretrained.surprise(b, fields=BEHAVIOUR_FIELDS)
    rest = pretrained.surprise(b, fields=[f for f in pretrained.tokenizer.vocab_sizes if f not in BEHAVIOUR_FIELDS])
    np.testing.assert_allclose(part + rest, total, rtol=1e-4)
    np.testing.assert_allclose(pretrained.field_surprise(b).sum(axis=1), total, rtol=1e-4)
    with pytest.raises(ModelError, match="unknown token field"):
        pretrained.surprise(b, fields=["nope"])
