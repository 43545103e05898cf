"""Train and evaluate on a log as a new user brings it: partial labels, an hours-long span, default flags."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopguard.events.ingest import ingest_source
from shopguard.events.mapping import mapping_from_dict
from shopguard.features import event_targets
from shopguard.pipeline import evaluate, train
from shopguard.store import EventStore

T0 = datetime(2024, 5, 1, 9, 0)


def payment_log(path: Path, n: int = 9000, seed: int = 3) -> pl.DataFrame:
    """Six hours of payments. Label 1 = fraud, 0 = reviewed and fine, 2 = not reviewed (no label row).

    Fraud pays large amounts. Reviewers looked at 40% of the payments; the rest were never reviewed,
    and half of those are large too (the risky queue nobody got to): treated as legitimate, they would
    teach the model that large payments are fine.
    """
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < 0.06
    reviewed = rng.random(n) < 0.4
    risky = ~reviewed & (rng.random(n) < 0.5)
    amount = np.where(fraud | risky, rng.uniform(300, 600, n), rng.uniform(5, 120, n)).round(2)
    label = np.where(reviewed, fraud.astype(int), 2)
    secs = np.sort(rng.uniform(0, 6 * 3600, n))
    frame = pl.DataFrame({
        "tx": [f"t{i}" for i in range(n)],
        "when": [(T0 + timedelta(seconds=float(s))).isoformat() for s in secs],
        "customer": [f"c{int(c)}" for c in rng.integers(0, 800, n)],
        "amount": amount,
        "is_fraud": label,
    })
    frame.write_csv(path)
    return frame


def ingest(tmp_path: Path) -> EventStore:
    csv = tmp_path / "payments.csv"
    payment_log(csv)
    mapping = mapping_from_dict({
        "name": "payments", "path": str(csv), "event_type": "pay",
        "event_id": {"column": "tx"},
        "columns": {"user_id": "customer", "amount": "amount", "ts": "when"},
        "constants": {"status": "success"},
        "label": {"column": "is_fraud", "positive": [1], "negative": [0], "unknown": [2], "entity": "event"},
    })
    store = EventStore(tmp_path / "shop.duckdb")
    ingest_source(mapping, store)
    return store


@pytest.fixture(scope="module")
def log_store(tmp_path_factory: pytest.TempPathFactory) -> EventStore:
    store = ingest(tmp_path_factory.mktemp("partial"))
    yield store
    store.close()


def test_unreviewed_events_are_neither_trained_nor_evaluated(log_store: EventStore, tmp_path: Path) -> None:
    bundle = train(log_store, tmp_path / "m", detector="lightgbm")
    labels = bundle.info["labels"]
    assert labels["unlabeled"] == "ignore"
    t = event_targets(log_store)
    c = labels["counts"]
    assert c["negative"] + c["positive"] == bundle.info["train_events"] + bundle.info["validation_events"]
    assert c["unlabeled"] > c["negative"]
    assert (~t["labeled"]).sum() > 4000  # the unreviewed 60% stay in the store, as history
    test = bundle.metrics["test"]
    assert test["unlabeled_events"] > 0
    assert test["events"] < 0.5 * (test["events"] + test["unlabeled_events"])
    assert test["roc_auc"] > 0.9, test
    # evaluate keeps the model's rule: the same rows, the same figure.
    again = evaluate(log_store, tmp_path / "m")["models"][0]["metrics"]
    assert again["events"] == test["events"] and again["roc_auc"] == pytest.approx(test["roc_auc"])
    # Unreviewed events forced to "legitimate" (the old behaviour): the large unreviewed payments are
    # trained and scored as legitimate, and the figure collapses.
    forced = train(log_store, tmp_path / "neg", detector="lightgbm", unlabeled="negative")
    assert forced.info["labels"]["unlabeled"] == "negative" and forced.metrics["test"]["unlabeled_events"] == 0
    assert forced.metrics["test"]["roc_auc"] < test["roc_auc"] - 0.15, forced.metrics["test"]["roc_auc"]


def test_default_split_fits_an_hours_long_log(log_store: EventStore, tmp_path: Path) -> None:
    bundle = train(log_store, tmp_path / "m", detector="lightgbm")
    choice = bundle.info["split_choice"]
    sp = bundle.split
    span = datetime.fromisoformat(sp["test_end"]) - datetime.fromisoformat(sp["train_start"])
    assert span < timedelta(hours=6, minutes=1)
    assert 0.15 < choice["test_labelled"] / (choice["test_labelled"] + choice["train_labelled"]) < 0.4
    assert choice["train_positives"] >= 30 and choice["test_positives"] >= 30
    assert any("label delay" in r for r in choice["reasons"])
    assert datetime.fromisoformat(sp["train_end"]) <= datetime.fromisoformat(sp["test_start"])


def test_too_few_labels_are_refused_with_advice(tmp_path: Path) -> None:
    from shopguard.errors import DataError

    store = EventStore(tmp_path / "few.duckdb")
    store.append_events([{"event_id": f"e{i}", "type": "pay", "user_id": f"u{i % 7}", "amount": 10.0 + i,
                          "status": "success", "ts": T0 + timedelta(minutes=i)} for i in range(300)])
    store.append_labels([{"entity_kind": "event", "entity_id": f"e{i}", "label": 1, "scenario": "x",
                          "labeled_at": T0 + timedelta(minutes=i + 1)} for i in range(0, 300, 30)])
    with pytest.raises(DataError, match="too few fraud labels") as exc:
        train(store, tmp_path / "m", detector="lightgbm")
    assert "--detector" in str(exc.value) and "--test-days" in str(exc.value)
    # An unsupervised detector needs no labels to train: the same log trains.
    assert train(store, tmp_path / "u", detector="ecod").detector.name == "ecod"
    store.close()


def test_the_mapping_can_declare_unlabelled_events_legitimate(tmp_path: Path) -> None:
    from shopguard.features.targets import label_rule

    csv = tmp_path / "p.csv"
    payment_log(csv, n=300)
    mapping = mapping_from_dict({
        "name": "payments", "path": str(csv), "event_type": "pay", "event_id": {"column": "tx"},
        "columns": {"user_id": "customer", "amount": "amount", "ts": "when"},
        "label": {"column": "is_fraud", "positive": [1], "negative": [0], "unknown": [2], "unlabeled": "negative"},
    })
    store = EventStore(tmp_path / "s.duckdb")
    ingest_source(mapping, store)
    rule = label_rule(store)
    assert rule.unlabeled == "negative" and "mapping" in rule.reason
    assert label_rule(store, "ignore").unlabeled == "ignore"  # the command line still wins
    assert event_targets(store)["labeled"].all()
    store.close()
