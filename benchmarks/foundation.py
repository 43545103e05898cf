"""Behaviour foundation model benchmark: simulator + Fraud Detection Handbook, one table.

Rows per dataset (time split: train window, label-delay gap, test window; metrics on the test window):

- ``lightgbm``: LightGBM on the engineered point-in-time features (the baseline of the ratios);
- ``seq_full``: tiny transformer pretrained on the unlabeled events before the test window, fully
  fine-tuned; ``seq_lora`` / ``seq_frozen_head``: LoRA and frozen encoder + head (trainable
  parameters and training time in the table);
- ``hybrid``: LightGBM on the features + the per-field surprise (unsupervised), on the features + the
  pretrained embeddings, and LightGBM on the features + the
  fine-tuned transformer's score cross-fitted over users (no label leaks into LightGBM's training rows);
- ``frozen_emb_lgbm``: LightGBM on the *pretrained* (not fine-tuned) embeddings alone;
- ``surprise`` vs ``iforest``: unsupervised; NLL of the event given its history (per event, and the
  shipped default: session surprise, ``SequenceSurpriseDetector()``) vs Isolation Forest on the
  features, overall and per scenario (that scenario's positives vs all negatives);
- ``fusion_{frozen,lora,full}``: fusion fine-tuning (``shopguard.models.sequence.fusion``): the head
  reads the target's hidden state + the standardised engineered features + the per-field surprise; an
  exact L2 linear probe, then (lora / full) a short joint fine-tuning from it (LP-FT);
- label efficiency: ``*_labels{1,5,20,100}pct`` for plain fine-tuning of the pretrained model and of a
  randomly initialised one (``scratch``), fusion fine-tuning of both (``fusion_full`` /
  ``fusion_frozen`` pretrained, ``fusion_scratch``) and LightGBM on that share of the training rows;
  ``recall_vs_lightgbm_all`` = recall at 1% FPR / LightGBM-with-all-labels' (the acceptance line is logged);
- ``latency``: ONNX int8 incremental scoring of one event with a 64-event cached history, one core;
  the same for the fusion graph (``export_onnx`` of a ``FusionClassifierDetector``: token window + the
  event's engineered feature vector -> probability; ``frozen`` runs one encoder, ``full`` / ``lora``
  two: the fine-tuned one and the pretrained one for the surprise columns). ``--latency-only`` runs
  just these rows on the simulator.

CPU budget (a shared 2-core machine): a tiny model (d=64, 2 layers, 32-event windows), 3 pretraining
epochs over at most 4,000 windows each, 6 fine-tuning epochs, negatives of the fine-tuning set
subsampled to 1,500 (all positives kept; LightGBM gets every row), 40% of the Handbook customers, a
600-user / 21-day simulated shop with the three sequence scenarios at 3x their default rates. Published figures (Handbook ch. 3) are printed beside ours.

    nice -n 10 .venv/bin/python benchmarks/foundation.py --json reports/foundation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from rich.console import Console
from rich.table import Table

from shopguard.evaluation.metrics import summary
from shopguard.evaluation.splits import known_fraud_entities, remove_known_entities
from shopguard.features.batch import compute_features
from shopguard.features.targets import event_targets
from shopguard.models.gbm import LightGBMDetector
from shopguard.models.sequence.config import FinetuneConfig, PretrainConfig, fusion_config, preset
from shopguard.models.sequence.detectors import (
    BEHAVIOUR_FIELDS,
    SequenceInput,
    SequenceSurpriseDetector,
    apply_type_stats,
    fit_type_stats,
    sequence_embeddings,
)
from shopguard.models.sequence.export import IncrementalScorer, export_onnx
from shopguard.models.sequence.finetune import FineTunedModel, finetune
from shopguard.models.sequence.fusion import FusionFeatures, FusionInput, fusion_frame
from shopguard.models.sequence.network import FoundationModel
from shopguard.models.sequence.pretrain import pretrain
from shopguard.models.sequence.tokenizer import FIELDS, EventTokenizer
from shopguard.models.unsupervised import IsolationForestDetector
from shopguard.store import EventStore

REPO = Path(__file__).resolve().parents[1]
HANDBOOK = REPO.parent / "shared" / "data" / "card_transactions_handbook" / "transactions.parquet"
SEQ_SCENARIOS = ("account_takeover", "card_testing", "bot_ordering")
SIM_TYPES = ("signup", "login", "add_to_cart", "order", "pay", "password_change", "address_change")
PUBLISHED = [  # Handbook ch. 3, same protocol (train 7 d from 2018-07-25, 7-d delay, test 7 d)
    ("handbook", "published: logistic regression", 0.871, 0.606),
    ("handbook", "published: random forest", 0.867, 0.658),
    ("handbook", "published: XGBoost", 0.862, 0.639),
]
console = Console(width=200)


@dataclass
class Data:
    name: str
    store: EventStore
    events: pl.DataFrame  # all events up to test end (histories)
    train: pl.DataFrame  # features + label, train window
    test: pl.DataFrame  # features + label, test window
    test_start: datetime


def log(msg: str) -> None:
    console.log(msg)


# -- data --------------------------------------------------------------------------------------------
def _features_and_labels(store: EventStore, name: str, since: datetime, train_end: datetime, test_start: datetime,
                         test_end: datetime, types: tuple[str, ...] | None, scenarios: tuple[str, ...] | None,
                         remove_known: bool) -> Data:
    log(f"[{name}] features")
    feats = compute_features(store, since=since, until=test_end, types=types)
    train = feats.filter(pl.col("ts") < train_end)
    test = feats.filter(pl.col("ts") >= test_start)
    tl = event_targets(store, train["event_id"].to_list(), known_before=test_start)
    te = event_targets(store, test["event_id"].to_list())
    train = train.with_columns(label=tl["label"], scenario=tl["scenario"])
    test = test.with_columns(label=te["label"], scenario=te["scenario"])
    if scenarios is not None:
        # Positives of other scenarios are neither positives nor negatives for this benchmark.
        keep = (pl.col("label") == 0) | pl.col("scenario").is_in(list(scenarios))
        train, test = train.filter(keep), test.filter(keep)
    if remove_known:
        ev = store.events(until=test_end, columns=["event_id", "user_id"])
        known = known_fraud_entities(store.labels(), ev)
        test = remove_known_entities(test, known)
    events = store.events(until=test_end)
    log(f"[{name}] {events.height:,} events; train {train.height:,} targets ({int(train['label'].sum())} pos), "
        f"test {test.height:,} ({int(test['label'].sum())} pos)")
    return Data(name, store, events, train, test, test_start)


def simulator_data(tmp: Path, users: int, days: int, seed: int, rate_mult: float) -> Data:
    from shopguard.events.simulate import ScenarioRates, SimulationConfig, simulate_shop

    log(f"[simulator] simulating {users} users x {days} days (sequence scenarios x{rate_mult:g})")
    base = ScenarioRates()
    # More incidents of the three sequence-driven scenarios so a CPU-sized shop has enough positives.
    rates = base.model_copy(update={s: getattr(base, s) * rate_mult for s in SEQ_SCENARIOS})
    shop = simulate_shop(SimulationConfig(users=users, days=days, seed=seed, rates=rates))
    store = EventStore(tmp / "sim.duckdb")
    shop.to_store(store)
    first, last = store.time_range()
    assert first is not None and last is not None
    test_end = last + timedelta(seconds=1)
    test_start = test_end - timedelta(days=7)
    train_end = test_start - timedelta(days=3)
    return _features_and_labels(store, "simulator", first, train_end, test_start, test_end, SIM_TYPES,
                                SEQ_SCENARIOS, remove_known=False)


def handbook_data(tmp: Path, path: Path, users_frac: float, seed: int) -> Data:
    log(f"[handbook] loading {path} ({users_frac:.0%} of customers)")
    history_start, train_start = datetime(2018, 7, 1), datetime(2018, 7, 25)
    train_end, test_start, test_end = datetime(2018, 8, 1), datetime(2018, 8, 8), datetime(2018, 8, 15)
    raw = pl.read_parquet(path).filter((pl.col("TX_DATETIME") >= history_start) & (pl.col("TX_DATETIME") < test_end))
    customers = raw["CUSTOMER_ID"].unique().sort()
    rng = np.random.default_rng(seed)
    keep = customers.to_numpy()[rng.random(len(customers)) < users_frac]
    raw = raw.filter(pl.col("CUSTOMER_ID").is_in(keep.tolist()))
    events = raw.select(
        pl.col("TRANSACTION_ID").cast(pl.Utf8).alias("event_id"), pl.col("TX_DATETIME").alias("ts"),
        pl.lit("pay").alias("type"), pl.col("CUSTOMER_ID").cast(pl.Utf8).alias("user_id"),
        pl.col("TERMINAL_ID").cast(pl.Utf8).alias("merchant_id"), pl.col("TX_AMOUNT").cast(pl.Float64).alias("amount"),
        pl.lit("success").alias("status"),
    )
    # TX_FRAUD is a label: it goes to the labels table (known when it happened), never into events.
    labels = raw.filter(pl.col("TX_FRAUD") == 1).select(
        pl.lit("event").alias("entity_kind"), pl.col("TRANSACTION_ID").cast(pl.Utf8).alias("entity_id"),
        pl.lit(1).alias("label"), pl.col("TX_FRAUD_SCENARIO").cast(pl.Utf8).alias("scenario"),
        pl.col("TX_DATETIME").alias("labeled_at"))
    store = EventStore(tmp / "handbook.duckdb")
    store.append_events(events)
    store.append_labels(labels)
    return _features_and_labels(store, "handbook", train_start, train_end, test_start, test_end, None, None,
                                remove_known=True)


# -- models ------------------------------------------------------------------------------------------
def metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    m = summary(y, s)
    return {k: float(m[k]) for k in ("roc_auc", "average_precision", "recall_at_1pct_fpr")}


def subsample(frame: pl.DataFrame, max_neg: int, seed: int) -> pl.DataFrame:
    pos = frame.filter(pl.col("label") == 1)
    neg = frame.filter(pl.col("label") == 0)
    if neg.height > max_neg:
        neg = neg.sample(max_neg, seed=seed)
    return pl.concat([pos, neg]).sort("ts")


def label_fraction(frame: pl.DataFrame, frac: float, seed: int) -> pl.DataFrame:
    return frame if frac >= 1 else frame.sample(fraction=frac, seed=seed).sort("ts")


def feature_frame(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("label", "scenario")


def run_dataset(d: Data, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    y_train, y_test = d.train["label"].to_numpy(), d.test["label"].to_numpy()
    test_ids = d.test["event_id"].to_list()

    def add(model: str, scores: np.ndarray, **extra: Any) -> None:
        row = {"dataset": d.name, "model": model, **metrics(y_test, scores), **extra}
        rows.append(row)
        log(f"[{d.name}] {model}: AP {row['average_precision']:.3f} ROC-AUC {row['roc_auc']:.3f} "
            f"R@1%FPR {row['recall_at_1pct_fpr']:.3f}")

    # Engineered features.
    t0 = time.perf_counter()
    lgbm = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds).fit(feature_frame(d.train), y_train)
    add("lightgbm", lgbm.score(feature_frame(d.test)), train_s=time.perf_counter() - t0, labels_frac=1.0)
    ifo = IsolationForestDetector(n_jobs=args.threads).fit(feature_frame(d.train))
    ifo_test = ifo.score(feature_frame(d.test))
    add("iforest", ifo_test)

    # Pretraining on unlabeled events before the test window.
    net = preset("tiny", max_len=args.max_len, tokenizer={"merchant_buckets": args.buckets, "item_buckets": args.buckets})
    pre_events = d.events.filter(pl.col("ts") < d.test_start)
    t0 = time.perf_counter()
    pre = pretrain(pre_events, network=net, config=PretrainConfig(
        epochs=args.pretrain_epochs, batch_size=64, max_sequences=args.max_windows, seed=args.seed)).model
    pre_s = time.perf_counter() - t0
    hist = pre.metadata["history"]
    log(f"[{d.name}] pretrained {pre.n_parameters():,} params in {pre_s:.0f}s, loss {hist[0]['loss']:.3f} -> "
        f"{hist[-1]['loss']:.3f}, {hist[-1]['events_per_s']:,.0f} events/s")
    rows.append({"dataset": d.name, "model": "pretraining (tiny, CPU)", "train_s": pre_s,
                 "events_per_s": hist[-1]["events_per_s"], "trainable_params": pre.n_parameters()})
    test_batch = pre.build(d.events, test_ids)
    add("surprise (all fields)", pre.surprise(test_batch), train_s=pre_s)
    add("surprise (behaviour fields)", pre.surprise(test_batch, fields=BEHAVIOUR_FIELDS))
    # Standardised per event type with statistics of the (unlabeled) training-window events.
    train_batch = pre.build(d.events, d.train["event_id"].to_list())
    for label, fields in (("all fields", None), ("behaviour fields", BEHAVIOUR_FIELDS)):
        stats = fit_type_stats(pre.surprise(train_batch, fields=fields), train_batch)
        add(f"surprise per type ({label})", apply_type_stats(pre.surprise(test_batch, fields=fields), test_batch,
                                                             stats))
    # The shipped detector's default: session surprise (mean over the user's last 16 events + peak over the
    # last 30 minutes, standardised on the unlabeled training-window events). Settled on simulator seeds
    # 11 and 13, never on this seed or on labels. Per scenario: that scenario's positives vs all negatives.
    with tempfile.TemporaryDirectory() as model_dir:
        pre.save(model_dir)
        t0 = time.perf_counter()
        sur = SequenceSurpriseDetector(pretrained=model_dir).fit(SequenceInput(d.events, d.train["event_id"]))
        sur_test = sur.score(SequenceInput(d.events, test_ids))
        sur_s = time.perf_counter() - t0
    ifo_auc = next(r["roc_auc"] for r in rows if r["model"] == "iforest")
    add("surprise (session, behaviour fields; default)", sur_test, train_s=sur_s,
        roc_auc_vs_iforest=metrics(y_test, sur_test)["roc_auc"] / ifo_auc)
    scen = np.asarray(d.test["scenario"].fill_null("").to_list(), dtype=object)
    for sc in sorted(set(scen[y_test == 1].tolist())):
        keep = (y_test == 0) | (scen == sc)
        for name, sc_scores in (("iforest", ifo_test), ("surprise (session)", sur_test)):
            rows.append({"dataset": d.name, "model": f"{name}: {sc or 'unnamed scenario'} only", "scenario": sc,
                         **metrics(y_test[keep], sc_scores[keep])})
            log(f"[{d.name}] {rows[-1]['model']}: ROC-AUC {rows[-1]['roc_auc']:.3f} AP "
                f"{rows[-1]['average_precision']:.3f} R@1%FPR {rows[-1]['recall_at_1pct_fpr']:.3f}")

    # Frozen pretrained embeddings alone, LightGBM on top.
    emb_all = sequence_embeddings(pre, d.events, d.train["event_id"].to_list() + test_ids)
    e_tr = d.train.select("event_id", "ts").join(emb_all.unique("event_id"), on="event_id", how="left")
    e_te = d.test.select("event_id", "ts").join(emb_all.unique("event_id"), on="event_id", how="left")
    cols = [c for c in e_tr.columns if c.startswith("seq_emb_")]
    t0 = time.perf_counter()
    fz = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds, features=cols).fit(e_tr, y_train)
    add("frozen_emb_lgbm", fz.score(e_te), train_s=time.perf_counter() - t0)

    # Fine-tuning (negatives subsampled) with and without pretraining, at several label fractions.
    pool = subsample(d.train, args.max_neg, args.seed)
    scratch = FoundationModel(pre.config, pre.tokenizer)  # same tokenizer, random weights

    def ft(base: FoundationModel, frame: pl.DataFrame, method: str, epochs: int) -> tuple[FineTunedModel, dict]:
        batch = base.build(d.events, frame["event_id"].to_list())
        lr = 1e-2 if method != "full" else 3e-3
        res = finetune(base, batch, frame["label"].to_numpy(), config=FinetuneConfig(
            method=method, epochs=epochs, lr=lr, encoder_lr=1e-3, patience=3, seed=args.seed))  # type: ignore[arg-type]
        return res.model, {"trainable_params": res.trainable_params, "train_s": res.seconds}

    for method in ("full", "lora", "frozen"):
        epochs = args.finetune_epochs * (3 if method == "frozen" else 1)
        model, info = ft(pre, pool, method, epochs)
        add(f"seq_{method}" + ("_head" if method == "frozen" else ""), model.predict_proba(test_batch),
            labels_frac=1.0, **info)
    # Fusion (nuFormer-style): the head reads the target's hidden state + the standardised engineered
    # features + the per-field surprise of the model in use; standardisation is fitted on every
    # training row (no label read). "scratch" = the same recipe on a randomly initialised encoder, whose
    # surprise columns are then noise: no pretraining anywhere.
    fused = {name: fusion_matrices(d, base) for name, base in (("pretrained", pre), ("scratch", scratch))}
    r1_all = rows[0]["recall_at_1pct_fpr"]

    def fusion_row(model: str, name: str, method: str, frame: pl.DataFrame, frac: float) -> None:
        x_tr, x_te, b_tr, b_te = fused[name]
        idx = frame["row"].to_numpy()
        try:
            res = finetune(pre if name == "pretrained" else scratch, b_tr.subset(idx), y_train[idx],
                           config=fusion_config(method, seed=args.seed), extra=x_tr[idx], unlabeled=b_tr)
        except Exception as exc:  # e.g. a fraction without positives
            log(f"[{d.name}] {model}: {exc}")
            return
        add(model, res.model.predict_proba(b_te, x_te), labels_frac=frac, trainable_params=res.trainable_params,
            train_s=res.seconds)
        rows[-1]["recall_vs_lightgbm_all"] = rows[-1]["recall_at_1pct_fpr"] / r1_all if r1_all else float("nan")

    indexed_pool = subsample(d.train.with_row_index("row"), args.max_neg, args.seed)
    for method in ("frozen", "lora", "full"):
        fusion_row(f"fusion_{method}", "pretrained", method, indexed_pool, 1.0)

    for frac in args.fractions:
        part = label_fraction(pool, frac, args.seed)
        lg_part = label_fraction(d.train, frac, args.seed)
        tag = f"labels{frac * 100:g}pct"
        for name, base in (("seq_full", pre), ("scratch", scratch)):
            if frac >= 1 and name == "seq_full":
                continue
            if part["label"].sum() < 2:
                log(f"[{d.name}] {name} {tag}: fewer than 2 positives, skipped")
                continue
            try:
                model, info = ft(base, part, "full", args.finetune_epochs)
            except Exception as exc:  # e.g. no positive left in the training part of the time split
                log(f"[{d.name}] {name} {tag}: {exc}")
                continue
            add(f"{name}_{tag}", model.predict_proba(test_batch), labels_frac=frac, **info)
        # Same rows as the plain fine-tuning above (label_fraction is seeded on the same pool).
        fpart = label_fraction(indexed_pool, frac, args.seed)
        if frac < 1:
            fusion_row(f"fusion_full_{tag}", "pretrained", "full", fpart, frac)
            fusion_row(f"fusion_frozen_{tag}", "pretrained", "frozen", fpart, frac)
        fusion_row(f"fusion_scratch_{tag}", "scratch", "full", fpart, frac)
        if frac < 1 and lg_part["label"].sum() >= 2:
            det = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds).fit(feature_frame(lg_part), lg_part["label"].to_numpy())
            add(f"lightgbm_{tag}", det.score(feature_frame(d.test)), labels_frac=frac)
            rows[-1]["recall_vs_lightgbm_all"] = rows[-1]["recall_at_1pct_fpr"] / r1_all if r1_all else float("nan")
    for r in rows:
        if r.get("model") in ("fusion_full_labels5pct", "fusion_frozen_labels5pct", "lightgbm_labels5pct"):
            log(f"[{d.name}] acceptance: {r['model']} recall@1%FPR {r['recall_at_1pct_fpr']:.3f} vs LightGBM with "
                f"all labels {r1_all:.3f} ({r['recall_at_1pct_fpr'] - r1_all:+.3f})")

    # Hybrid 0: features + the per-field surprise of the event (unsupervised: no label leaks).
    def with_surprise(frame: pl.DataFrame, batch: Any) -> pl.DataFrame:
        fs = pre.field_surprise(batch)
        cols = {f"surprise_{f}": pl.Series(fs[:, i]) for i, f in enumerate(FIELDS)}
        return feature_frame(frame).with_columns(surprise_total=pl.Series(fs.sum(axis=1)), **cols)

    t0 = time.perf_counter()
    hs = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds).fit(with_surprise(d.train, train_batch), y_train)
    add("hybrid (features + per-field surprise)", hs.score(with_surprise(d.test, test_batch)),
        train_s=time.perf_counter() - t0, labels_frac=1.0)

    # Hybrid 1: features + the pretrained (frozen) embeddings: no label has touched them, no leakage.
    t0 = time.perf_counter()
    hf = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds).fit(feature_frame(d.train).join(emb_all.unique("event_id"),
                                                                                 on="event_id", how="left"), y_train)
    add("hybrid (features + pretrained emb.)", hf.score(feature_frame(d.test).join(
        emb_all.unique("event_id"), on="event_id", how="left")), train_s=time.perf_counter() - t0, labels_frac=1.0)

    # Hybrid 2: features + the fine-tuned transformer, cross-fitted over users: each training row's
    # sequence score and embedding come from a model fine-tuned without that user's labels, test rows get
    # the mean of the fold models. (In-sample fine-tuned outputs would leak the labels into LightGBM:
    # it then trusts them far too much; our first run lost 87% of LightGBM's AP that way.)
    try:
        rows.append(cross_fitted_hybrid(d, args, pre, pool, test_batch, ft, y_train, y_test))
        log(f"[{d.name}] {rows[-1]['model']}: AP {rows[-1]['average_precision']:.3f}")
    except Exception as exc:  # keep every other row of a long run
        log(f"[{d.name}] cross-fitted hybrid failed: {exc!r}")

    base_ap = rows[0]["average_precision"]
    for r in rows:
        if "average_precision" in r:
            r["ap_vs_lightgbm"] = r["average_precision"] / base_ap if base_ap else float("nan")
    return rows


def fusion_matrices(d: Data, base: FoundationModel) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Standardised fused columns (features + ``base``'s per-field surprise) and windows, train and test."""
    tr = fusion_frame(base, FusionInput(d.events, feature_frame(d.train)), surprise=True)
    te = fusion_frame(base, FusionInput(d.events, feature_frame(d.test)), surprise=True)
    ff = FusionFeatures().fit(tr)  # every training row, labelled or not: no label is read
    return (ff.transform(tr), ff.transform(te), base.build(d.events, d.train["event_id"].to_list()),
            base.build(d.events, d.test["event_id"].to_list()))


def cross_fitted_hybrid(d: Data, args: argparse.Namespace, pre: FoundationModel, pool: pl.DataFrame,
                        test_batch: Any, ft: Any, y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """LightGBM on the features + an out-of-fold fine-tuned sequence score (two folds of users)."""
    t0 = time.perf_counter()
    users = d.train["user_id"].fill_null("").unique().sort()
    fold_of = dict(zip(users.to_list(), np.random.default_rng(args.seed).integers(0, 2, len(users)).tolist(),
                       strict=True))
    fold = np.array([fold_of[u] for u in d.train["user_id"].fill_null("").to_list()])
    pool_fold = np.array([fold_of.get(u, 0) for u in pool["user_id"].fill_null("").to_list()])
    oof = np.zeros(d.train.height)
    test_score = np.zeros(d.test.height)
    for k in (0, 1):
        part = pool.filter(pl.Series(pool_fold != k))
        model_k, _ = ft(pre, part, "full", args.finetune_epochs)
        rows_k = np.flatnonzero(fold == k)
        oof[rows_k] = model_k.predict_proba(pre.build(d.events, d.train["event_id"].gather(rows_k).to_list()))
        test_score += model_k.predict_proba(test_batch) / 2
    h_tr = feature_frame(d.train).with_columns(seq_score=pl.Series(oof))
    h_te = feature_frame(d.test).with_columns(seq_score=pl.Series(test_score))
    hy = LightGBMDetector(n_jobs=args.threads, n_seeds=args.lgbm_seeds).fit(h_tr, y_train)
    return {"dataset": d.name, "model": "hybrid (features + fine-tuned score, cross-fitted)",
            **metrics(y_test, hy.score(h_te)), "train_s": time.perf_counter() - t0, "labels_frac": 1.0}


def latency(events: pl.DataFrame, n: int, tmp: Path) -> dict[str, Any]:
    """Median / p99 latency of int8 ONNX incremental scoring, one thread, 64-event cached history.

    Latency depends on the architecture, not the weights: a tiny (max_len 64) classifier is exported.
    """
    from shopguard.models.sequence.finetune import ClassifierHead

    cfg = preset("tiny", max_len=64)
    tok = EventTokenizer(cfg.tokenizer).fit(events)
    base = FoundationModel(cfg, tok)
    model = FineTunedModel(base, ClassifierHead(cfg.d_model, 0.1).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp / "onnx")
    inc = IncrementalScorer(tmp / "onnx", int8=True, threads=1)
    by_user = events.sort(["ts", "event_id"]).group_by("user_id", maintain_order=True).agg(pl.len().alias("n"))
    users = by_user.filter(pl.col("n") >= 65)["user_id"].to_list()[:50]
    recs = events.filter(pl.col("user_id").is_in(users)).sort(["ts", "event_id"])
    counts: dict[str, int] = {}
    times = []
    for rec in recs.iter_rows(named=True):
        c = counts.get(rec["user_id"], 0)
        counts[rec["user_id"]] = c + 1
        if c < 64:
            inc.learn_one(rec)  # fill the cache: 64 events of history first
            continue
        t0 = time.perf_counter()
        inc.score_one(rec)
        times.append(time.perf_counter() - t0)
        if len(times) >= n:
            break
    ms = np.asarray(times) * 1000
    return {"dataset": "simulator", "model": "onnx_int8_incremental (64-event history, 1 thread)",
            "p50_ms": float(np.median(ms)) if ms.size else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
            "events_per_s": float(1000 / np.mean(ms)) if ms.size else float("nan"), "events": int(ms.size)}


def fusion_latency(d: Data, n: int, tmp: Path, method: str, baseline_ms: float | None) -> dict[str, Any]:
    """Latency of the fusion graph (int8, one thread, 64-event history + the event's feature vector).

    As ``latency``: the architecture, not the weights, sets it, so an untrained tiny model is exported
    (``frozen``: one encoder gives the hidden state and the surprise; otherwise a second, pretrained
    encoder gives the surprise). The feature vector comes from the batch engine's rows (what the online
    aggregator would hand over); computing it is not timed here (``benchmarks/service.py`` covers it).
    """
    from shopguard.models.sequence.finetune import ClassifierHead
    from shopguard.models.sequence.fusion import SURPRISE_PREFIX, FusionClassifierDetector

    rows = pl.concat([feature_frame(d.train), feature_frame(d.test)])
    columns = FusionFeatures.numeric_columns(rows)
    surprise = ([f"{SURPRISE_PREFIX}surprise_total"] + [f"{SURPRISE_PREFIX}surprise_{f}" for f in FIELDS]
                + [f"{SURPRISE_PREFIX}session_mean", f"{SURPRISE_PREFIX}session_peak"])
    cfg = preset("tiny", max_len=64)
    tok = EventTokenizer(cfg.tokenizer).fit(d.events)
    base = FoundationModel(cfg, tok)
    det = FusionClassifierDetector(method=method)
    det.model_ = FineTunedModel(FoundationModel(cfg, tok), ClassifierHead(cfg.d_model, 0.1, len(columns) + 16, 0).eval())
    det.surprise_model_ = None if method == "frozen" else base
    det.features_ = FusionFeatures.from_dict({"columns": columns + surprise, "mean": [0.0] * (len(columns) + 16),
                                              "scale": [1.0] * (len(columns) + 16)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(det, tmp / f"fusion-{method}")
    inc = IncrementalScorer(tmp / f"fusion-{method}", int8=True, threads=1)
    feats = {r["event_id"]: r for r in rows.iter_rows(named=True)}
    by_user = d.events.group_by("user_id", maintain_order=True).agg(pl.len().alias("n"))
    users = by_user.filter(pl.col("n") >= 65)["user_id"].to_list()[:80]
    recs = d.events.filter(pl.col("user_id").is_in(users)).sort(["ts", "event_id"])
    counts: dict[str, int] = {}
    times = []
    for rec in recs.iter_rows(named=True):
        c = counts.get(rec["user_id"], 0)
        counts[rec["user_id"]] = c + 1
        f = feats.get(rec["event_id"])
        if c < 64 or f is None:
            inc.learn_one(rec)  # 64 events of history first; events without features are history only
            continue
        t0 = time.perf_counter()
        inc.score_one(rec, features=f)
        times.append(time.perf_counter() - t0)
        if len(times) >= n:
            break
    ms = np.asarray(times) * 1000
    p50 = float(np.median(ms)) if ms.size else float("nan")
    return {"dataset": "simulator",
            "model": f"onnx_int8 fusion_{method} incremental (64-event history + {len(columns)} features, 1 thread)",
            "p50_ms": p50, "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
            "events_per_s": float(1000 / np.mean(ms)) if ms.size else float("nan"), "events": int(ms.size),
            "p50_vs_classifier": p50 / baseline_ms if baseline_ms else None}


def print_table(rows: list[dict[str, Any]]) -> None:
    t = Table(title="Behaviour foundation model (tiny, CPU) vs engineered features; test windows by time")
    for c in ("dataset", "model", "ROC-AUC", "AP", "AP / LightGBM", "R@1%FPR", "labels", "trainable", "train s",
              "p50 ms", "events/s"):
        t.add_column(c, justify="left" if c in ("dataset", "model") else "right")

    def f(v: Any, fmt: str = "{:.3f}") -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    for r in rows:
        t.add_row(r["dataset"], r["model"], f(r.get("roc_auc")), f(r.get("average_precision")),
                  f(r.get("ap_vs_lightgbm"), "{:.2f}x"), f(r.get("recall_at_1pct_fpr")),
                  f(r.get("labels_frac"), "{:.0%}"), f(r.get("trainable_params"), "{:,}"), f(r.get("train_s"), "{:.0f}"),
                  f(r.get("p50_ms"), "{:.2f}"), f(r.get("events_per_s"), "{:,.0f}"))
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--handbook", type=Path, default=HANDBOOK, help="Handbook transactions.parquet")
    p.add_argument("--skip-handbook", action="store_true")
    p.add_argument("--skip-simulator", action="store_true")
    p.add_argument("--sim-users", type=int, default=600)
    p.add_argument("--sim-days", type=int, default=21)
    p.add_argument("--sim-rate-mult", type=float, default=3.0, help="Multiplier of the sequence scenarios' rates.")
    p.add_argument("--hb-users-frac", type=float, default=0.4, help="Share of Handbook customers kept (CPU budget).")
    p.add_argument("--max-len", type=int, default=32)
    p.add_argument("--buckets", type=int, default=256, help="Hash buckets for merchant / item ids.")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--max-windows", type=int, default=4000, help="Pretraining windows per epoch (cap).")
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--max-neg", type=int, default=1500, help="Negatives kept for fine-tuning (all positives kept).")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 1.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lgbm-seeds", type=int, default=5,
                   help="LightGBM models bagged over seeds (one seed swings ROC-AUC by +-0.1 on this small shop).")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency-events", type=int, default=1000)
    p.add_argument("--latency-only", action="store_true", help="Only the ONNX latency rows (simulator).")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if not args.skip_simulator:
            d = simulator_data(tmp, args.sim_users, args.sim_days, args.seed, args.sim_rate_mult)
            if not args.latency_only:
                rows += run_dataset(d, args)
            rows.append(latency(d.events, args.latency_events, tmp))
            for method in ("frozen", "full"):
                rows.append(fusion_latency(d, args.latency_events, tmp, method, rows[-1 if method == "frozen" else -2]
                                           .get("p50_ms")))
            d.store.close()
        if not args.skip_handbook and not args.latency_only:
            if not args.handbook.exists():
                log(f"Handbook data not found at {args.handbook}: skipped")
            else:
                d = handbook_data(tmp, args.handbook, args.hb_users_frac, args.seed)
                rows += run_dataset(d, args)
                rows += [{"dataset": ds, "model": m, "roc_auc": a, "average_precision": ap} for ds, m, a, ap in PUBLISHED]
                d.store.close()
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "config": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
