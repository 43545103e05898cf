"""Train, evaluate and score over an event store: the flow behind ``shopguard train / evaluate / score``.

``train`` cuts the store's time span (``evaluation.splits``), computes point-in-time features, fits the
detector on the early part of the training window, calibrates and chooses the policy thresholds on the
late (validation) part, evaluates once on the held-out test window after the label-delay gap, and
writes a ``ModelBundle``. Training only sees labels known at the start of the test window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shopguard.errors import DataError, ValidationFailed
from shopguard.evaluation import metrics as M
from shopguard.evaluation.splits import (
    MIN_POSITIVES,
    SplitConfig,
    TimeSplit,
    known_fraud_entities,
    make_split,
    remove_known_entities,
)
from shopguard.features.targets import label_counts
from shopguard.models import DETECTORS, Detector
from shopguard.models.base import needs_events
from shopguard.models.bundle import ModelBundle
from shopguard.models.calibration import Calibrator
from shopguard.store import EventStore

Step = Callable[[str], None]
UNSUPERVISED_HINT = "iforest, ecod, hbos or baseline"


#: Detectors that need the sequence extra (torch): loaded only when named. ``fusion`` is the CLI name.
SEQUENCE_DETECTORS = {"fusion": "sequence_fusion", "sequence_fusion": "sequence_fusion"}


def _detector_class(name: str) -> type | None:
    if name in SEQUENCE_DETECTORS:
        from shopguard.models.sequence.fusion import FusionClassifierDetector

        return FusionClassifierDetector
    return DETECTORS.get(name)


def make_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """A detector from the registry by CLI name, with hyperparameters."""
    cls = _detector_class(name)
    if cls is None:
        names = sorted({*DETECTORS, "fusion"})
        raise ValidationFailed(f"unknown detector {name!r} (choose from {', '.join(names)})",
                               field="detector", value=name)
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise ValidationFailed(f"bad parameters for {name}: {exc}", field="params", value=params) from exc


def _features(store: EventStore, since: datetime | None, until: datetime | None, definitions: Any,
              types: Sequence[str] | None, step: Step) -> pl.DataFrame:
    from shopguard.features import compute_features

    return compute_features(store, since=since, until=until, types=types, definitions=definitions, on_step=step)


def history_for(store: EventStore, rows: pl.DataFrame) -> pl.DataFrame:
    """The events the windows of feature ``rows`` read: their users' events up to the last row (and the
    rows' own events, for events without a user). Later events are left out; windows never read them."""
    from datetime import timedelta

    if rows.height == 0:
        return store.events(limit=0)
    end = rows["ts"].max() + timedelta(microseconds=1)
    events = store.events(until=end)
    users = rows["user_id"].drop_nulls().unique()
    return events.filter(pl.col("user_id").is_in(users.implode()) | pl.col("event_id").is_in(rows["event_id"].implode()))


def bind_events(store: EventStore, bundle: ModelBundle, rows: pl.DataFrame) -> ModelBundle:
    """``bundle`` itself, or, when its detector reads event histories, a copy whose detector is bound to
    the histories of ``rows`` (so ``bundle.score`` / ``decide`` take the feature frame as for any other)."""
    if not needs_events(bundle.detector):
        return bundle
    from dataclasses import replace

    return replace(bundle, detector=bundle.detector.with_events(history_for(store, rows)))  # type: ignore[attr-defined]


def _check_sequence_model(det: Detector, sp: TimeSplit) -> None:
    """A fusion detector needs a pretrained behaviour model: a clear error naming the option otherwise."""
    hint = (f"pretrain one on the events before the test window with `shopguard pretrain --until "
            f"{sp.test_start:%Y-%m-%dT%H:%M} --out models/seq` (add --db as for train) and pass "
            f"--sequence-model models/seq")
    path = det.get_params().get("pretrained")
    if not path:
        raise ValidationFailed("--detector fusion needs a pretrained behaviour model (--sequence-model DIR): "
                               f"{hint}", field="sequence_model")
    if not (Path(path) / "config.json").exists():
        raise ValidationFailed(f"--sequence-model {path} is not a pretrained behaviour model (no config.json): "
                               f"{hint}", field="sequence_model", value=str(path))


def _targets(store: EventStore, ids: pl.Series, known_before: datetime | None, unlabeled: Any = "auto") -> pl.DataFrame:
    from shopguard.features import event_targets

    return event_targets(store, ids.to_list(), known_before=known_before, unlabeled=unlabeled)


def _rule(store: EventStore, unlabeled: str) -> Any:
    from shopguard.features.targets import label_rule

    return label_rule(store, unlabeled)


def _bundle_rule(store: EventStore, bundle: ModelBundle, unlabeled: str | None) -> Any:
    """The label rule to evaluate with: the one asked for, else the one the model was trained under."""
    return _rule(store, unlabeled or (bundle.info.get("labels") or {}).get("unlabeled", "auto"))


def labelled_rows(store: EventStore, rows: pl.DataFrame, rule: Any,
                  known_before: datetime | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``rows`` and their targets, less the unlabelled events (under ``rule``): what metrics count."""
    targets = _targets(store, rows["event_id"], known_before, rule)
    keep = targets["labeled"]
    if bool(keep.all()):
        return rows, targets
    return rows.filter(keep), targets.filter(keep)


def split_for(store: EventStore, split: SplitConfig | None, rule: Any) -> tuple[TimeSplit, Any]:
    """The split to train on: placed from the labels (``choose_split``) unless ``train_start`` pins it.

    Returns the split and the ``SplitChoice`` (``None`` for a pinned split) with its counts and reasons.
    """
    from shopguard.evaluation.splits import choose_split
    from shopguard.features import event_targets

    cfg = split or SplitConfig()
    first, last = store.time_range()
    if first is None or last is None:
        raise DataError("the store has no events: run `shopguard simulate` or `shopguard ingest` first", field="db")
    if cfg.train_start is not None:
        return make_split(first, last, cfg), None
    targets = event_targets(store, unlabeled=rule, with_times=True)
    choice = choose_split(first, last, targets, cfg)
    return choice.split, choice


def train(
    store: EventStore,
    out_dir: str | Path,
    *,
    detector: str = "lightgbm",
    params: dict[str, Any] | None = None,
    split: SplitConfig | None = None,
    target_fpr: float = 0.01,
    alert_rate: float | None = None,
    types: Sequence[str] | None = None,
    definitions: Any | None = None,
    on_step: Step | None = None,
    evaluate_test: bool = True,
    feature_cache: dict[Any, pl.DataFrame] | None = None,
    unlabeled: str = "auto",
    tune: bool = False,
    tune_budget_s: float = 60.0,
) -> ModelBundle:
    """Fit ``detector`` on the store's training window and write a model directory to ``out_dir``.

    ``evaluate_test=False`` leaves the test-window metrics out of the manifest (a caller that runs
    ``evaluate`` next, like ``shopguard demo``, scores the test window once instead of twice).
    ``feature_cache``: a dict shared by several ``train`` calls on the same store and split; the
    feature frame is computed once per (feature set, window, types).
    ``unlabeled``: what events without a label row are (``features.targets``: auto, negative, ignore).
    Split lengths left ``None`` in ``split`` are chosen from the labels (``evaluation.splits.choose_split``).
    ``tune``: search LightGBM's settings and feature groups for ``tune_budget_s`` seconds on a time-ordered
    slice of the fit rows (``models.tuning``); the test window plays no part. The choice goes into the
    manifest (``info["tuning"]``).
    """
    from shopguard.features import feature_set

    step = on_step or (lambda _m: None)
    det = make_detector(detector, params)
    if tune and det.name != "lightgbm":
        raise ValidationFailed(f"--tune searches LightGBM's settings: use it with --detector lightgbm, not {detector!r}",
                               field="tune", value=detector)
    rule = _rule(store, unlabeled)
    step("choosing the split")
    sp, choice = split_for(store, split, rule)
    auto = split is None or split.delay_days is None or split.test_days is None
    if auto and choice is not None and det.supervised and choice.train_positives < MIN_POSITIVES:
        raise DataError(
            f"too few fraud labels for {det.name}: {choice.train_positives} positives known for the training "
            f"window and {choice.test_positives} in the test window (at least {MIN_POSITIVES} each are needed "
            f"for numbers that mean anything). Ingest more labels, pass --delay-days / --test-days to place "
            f"the windows yourself, or train an unsupervised detector (--detector {UNSUPERVISED_HINT})",
            field="labels", value=choice.train_positives)
    if needs_events(det):
        _check_sequence_model(det, sp)
    fs = feature_set(store, definitions, until=sp.train_end)
    step("features")
    key = (fs.version, sp.train_start, sp.test_end, tuple(types or ()))
    if feature_cache is not None and key in feature_cache:
        frame = feature_cache[key]
    else:
        frame = _features(store, sp.train_start, sp.test_end, fs, types, step)
        if feature_cache is not None:
            feature_cache[key] = frame
    train_rows = frame.filter(pl.col("ts") < sp.train_end)
    if train_rows.height == 0:
        raise DataError(f"no events in the training window {sp.train_start} .. {sp.train_end}", field="split")
    targets = _targets(store, train_rows["event_id"], sp.label_cutoff, rule)
    counts = label_counts(targets)
    if det.supervised:
        # Unlabelled events (under the ignore rule) are history for the features, never targets.
        keep = targets["labeled"]
        train_rows, targets = train_rows.filter(keep), targets.filter(keep)
        if train_rows.height == 0:
            raise DataError(f"no labelled events in the training window {sp.train_start} .. {sp.train_end} "
                            f"({rule.reason})", field="labels")
    labelled = targets["labeled"].to_numpy()
    y = targets["label"].to_numpy()
    fit_mask = (train_rows["ts"] < sp.validation_start).to_numpy()
    if fit_mask.sum() == 0 or (~fit_mask).sum() == 0:
        fit_mask = np.ones(train_rows.height, dtype=bool)  # too little data for a validation slice
    if det.supervised:
        if y[fit_mask].sum() == 0:
            raise DataError(
                f"no fraud labels known before {sp.label_cutoff:%Y-%m-%d %H:%M} for the training window: "
                f"{det.name} is supervised. Ingest labels, or train an unsupervised detector "
                f"(--detector {UNSUPERVISED_HINT})", field="labels",
            )
    columns = fs.columns
    # Pin the columns to the feature set, so scoring later cannot silently pick up other columns.
    pinned = {"features": list(columns), "categorical": list(fs.categorical)}
    given = det.get_params()
    det.set_params(**{k: v for k, v in pinned.items() if k in given and given[k] is None})
    X_fit = train_rows.filter(pl.Series(fit_mask))
    tuning = None
    if tune:
        from shopguard.models.tuning import tune_lightgbm

        step(f"tuning LightGBM for {tune_budget_s:.0f} s on the training window")
        result = tune_lightgbm(X_fit, y[fit_mask], features=list(columns), categorical=list(fs.categorical),
                               budget_s=tune_budget_s)
        det.set_params(**result.params)
        tuning = result.to_dict()
    step(f"fitting {det.name} on {int(fit_mask.sum()):,} events")
    scorer: Any = det
    if needs_events(det):
        # Sequence + features (fusion): the detector reads the users' histories next to the feature rows.
        from shopguard.models.sequence.fusion import FusionInput

        step("loading event histories")
        history = history_for(store, train_rows)
        det.fit(FusionInput(history, X_fit), y[fit_mask])
        scorer = det.with_events(history)  # type: ignore[attr-defined]
    else:
        det.fit(X_fit, y[fit_mask] if det.supervised else None)
    # Calibrate and choose thresholds on the later, unseen validation slice (its labelled events).
    val_mask = ~fit_mask if (~fit_mask).any() else np.ones(train_rows.height, dtype=bool)
    val_mask = val_mask & labelled if (val_mask & labelled).any() else val_mask
    val = train_rows.filter(pl.Series(val_mask))
    y_val = y[val_mask]
    step("calibrating")
    s_val = scorer.score(val)
    cal = Calibrator().fit(s_val, y_val if y_val.sum() > 0 else None)
    p_val = cal.transform(s_val)
    from shopguard.decision.policy import Policy

    policy = Policy.choose(p_val, y_val if y_val.sum() > 0 else None, target_fpr=target_fpr, alert_rate=alert_rate,
                           probability_kind="probability" if cal.is_probability else "percentile")
    bundle = ModelBundle(
        detector=det, calibrator=cal, policy=policy, feature_set=fs, columns=list(columns),
        categorical=list(fs.categorical), split=sp.to_dict(),
        info={"train_events": int(X_fit.height), "train_positives": int(y[fit_mask].sum()),
              "validation_events": int(val.height), "validation_positives": int(y_val.sum()),
              "types": list(types) if types else None, "label_cutoff": sp.label_cutoff.isoformat(),
              "labels": {**rule.to_dict(), "counts": counts},
              "split_choice": choice.to_dict() if choice is not None else None, "tuning": tuning},
    )
    metrics: dict[str, Any] = {}
    if y_val.sum() > 0 and (y_val == 0).any():
        metrics["validation"] = M.summary(y_val, s_val)
    test_rows = frame.filter(pl.col("ts") >= sp.test_start)
    if test_rows.height and evaluate_test:
        step("evaluating on the test window")
        metrics["test"] = evaluate_frame(store, bundle, test_rows, unlabeled=rule)
    from shopguard.evaluation.checks import run_checks

    features_used = list(det.get_params().get("features") or columns)
    bundle.info["warnings"] = [c.to_dict() for c in run_checks(
        X_train=X_fit, y_train=y[fit_mask] if det.supervised else None, features=features_used,
        categorical=[c for c in fs.categorical if c in features_used],
        validation=metrics.get("validation"), test=metrics.get("test"))]
    bundle.metrics = metrics
    bundle.save(out_dir)
    return bundle


def evaluate_frame(store: EventStore, bundle: ModelBundle, rows: pl.DataFrame, *, k: int = 100,
                   max_fpr: float = 0.01, remove_known: bool = True, unlabeled: Any = None) -> dict[str, Any]:
    """Metrics of ``bundle`` on feature rows: eventual labels, known-fraud users removed per day, unlabelled
    events (under the model's label rule, or ``unlabeled``) left out."""
    before = rows.height
    if remove_known:
        rows = drop_known_fraud(store, rows)
    rule = unlabeled if unlabeled is not None and not isinstance(unlabeled, str) else \
        _bundle_rule(store, bundle, unlabeled)
    all_rows = rows.height
    rows, targets = labelled_rows(store, rows, rule)
    if rows.height == 0:
        return {"events": 0, "removed_known_fraud_events": before - all_rows, "unlabeled_events": all_rows}
    bundle = bind_events(store, bundle, rows)
    y = targets["label"].to_numpy()
    scores = bundle.score(rows)
    probs = bundle.calibrator.transform(scores)
    days = rows["ts"].dt.date().cast(pl.Utf8).to_numpy()
    users = rows["user_id"].cast(pl.Utf8).fill_null("").to_numpy()
    out = M.summary(y, scores, days=days, entities=users, scenarios=targets["scenario"].to_list(), k=k,
                    max_fpr=max_fpr)
    # The operating threshold lives on the probability scale: confusion and scenario recall use it there.
    thr = bundle.policy.operating_threshold
    out["threshold"] = thr
    out["confusion"] = M.confusion_at(y, probs, thr)
    c = out["confusion"]
    out["precision_at_threshold"] = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
    out["recall_at_threshold"] = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    at_thr = M.scenario_recall(targets["scenario"].to_list(), y, probs, thr)
    for name, v in out.get("scenarios", {}).items():
        v["recall_at_threshold"] = at_thr.get(name, {}).get("recall", float("nan"))
    out["removed_known_fraud_events"] = before - all_rows
    out["unlabeled_events"] = all_rows - rows.height
    out["window"] = {"start": rows["ts"].min().isoformat(), "end": rows["ts"].max().isoformat()}
    return out


def drop_known_fraud(store: EventStore, rows: pl.DataFrame, entity_col: str = "user_id") -> pl.DataFrame:
    """Rows minus those whose user was known fraudulent (label known) before the row's day started."""
    labels = store.labels()
    if labels.height == 0:
        return rows
    ev = store.query("SELECT event_id, user_id FROM events WHERE event_id IN "
                     "(SELECT entity_id FROM labels WHERE entity_kind = 'event' AND label = 1)")
    return remove_known_entities(rows, known_fraud_entities(labels, ev, entity_col), (entity_col,))


def evaluation_data(store: EventStore, bundle: ModelBundle, rows: pl.DataFrame,
                    unlabeled: Any = None) -> dict[str, np.ndarray]:
    """Labels, scores and scenarios of evaluated rows (for the report's plots), unlabelled rows left out."""
    rows, targets = labelled_rows(store, rows, unlabeled if unlabeled is not None and not isinstance(unlabeled, str)
                                  else _bundle_rule(store, bundle, unlabeled))
    bundle = bind_events(store, bundle, rows)
    return {"y": targets["label"].to_numpy(), "scores": bundle.score(rows),
            "scenarios": np.asarray(targets["scenario"].fill_null("").to_list(), dtype=object)}


def evaluate(
    store: EventStore,
    model_dirs: str | Path | Sequence[str | Path],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    json_path: str | Path | None = None,
    html_path: str | Path | None = None,
    k: int = 100,
    on_step: Step | None = None,
    extra_results: Sequence[dict[str, Any]] = (),
    unlabeled: str | None = None,
) -> dict[str, Any]:
    """Evaluate one or more model directories on a window (default: the first model's test window).

    ``extra_results`` are results computed elsewhere on the same window (e.g. the foundation model's
    surprise score from ``surprise_result``): they join the report and its plots.

    Returns the report dict (``{"models": [...], "window": ...}``) and writes JSON / HTML when asked.
    """
    from shopguard.evaluation.report import build_report, write_html, write_json

    step = on_step or (lambda _m: None)
    dirs = [model_dirs] if isinstance(model_dirs, str | Path) else list(model_dirs)
    if not dirs:
        raise ValidationFailed("name at least one model directory", field="model")
    bundles = [ModelBundle.load(d) for d in dirs]
    split = bundles[0].split
    start = since or (datetime.fromisoformat(split["test_start"]) if split.get("test_start") else None)
    end = until or (datetime.fromisoformat(split["test_end"]) if split.get("test_end") else None)
    results = []
    cache: dict[tuple[Any, ...], pl.DataFrame] = {}  # models sharing a feature set share one computation
    for b in bundles:
        step(f"features for {b.model_version}")
        types = b.info.get("types")
        key = (b.feature_set.version if b.feature_set is not None else None, tuple(types or ()))
        if key not in cache:
            cache[key] = _features(store, start, end, b.feature_set, types, step)
        rows = cache[key]
        if rows.height == 0:
            raise DataError(f"no events to evaluate between {start} and {end}", field="since")
        before = rows.height
        kept = drop_known_fraud(store, rows)
        removed = before - kept.height
        rule = _bundle_rule(store, b, unlabeled)
        unknown = kept.height
        kept, _ = labelled_rows(store, kept, rule)
        step(f"scoring {kept.height:,} events")
        b = bind_events(store, b, kept) if kept.height else b  # histories loaded once for both passes
        m = evaluate_frame(store, b, kept, k=k, remove_known=False, unlabeled=rule)
        m["removed_known_fraud_events"] = removed
        m["unlabeled_events"] = unknown - kept.height
        m["label_rule"] = rule.to_dict()
        results.append({"model_version": b.model_version, "detector": b.detector.name,
                        "supervised": b.detector.supervised, "metrics": m,
                        "policy": b.policy.model_dump(mode="json"), "split": b.split,
                        "warnings": b.info.get("warnings") or [],
                        "info": {"train_events": b.info.get("train_events"),
                                 "train_positives": b.info.get("train_positives"),
                                 "validation_auc": (b.metrics.get("validation") or {}).get("roc_auc")},
                        "data": evaluation_data(store, b, kept, rule) if kept.height else None})
    results.extend(extra_results)
    report = build_report(results, window={"start": start.isoformat() if start else None,
                                           "end": end.isoformat() if end else None}, db=store.path)
    if json_path:
        write_json(report, json_path)
    if html_path:
        write_html(report, results, html_path)
    return report


def score_events(
    store: EventStore,
    model_dir: str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top_reasons: int = 3,
    on_step: Step | None = None,
    text_model_dir: str | Path | None = None,
    text_min_score: float = 0.5,
) -> int:
    """Decide every event with ``since <= ts < until`` and write the decisions; returns how many were new.

    With ``text_model_dir`` (a saved ``TextEventDetector``), review and chat events also get the text
    score: the decision's probability is the larger of the two, the level and action come from the
    bundle's policy, and the text reasons come first (``models.text.decisions.merge_decision``); a text
    score below ``text_min_score`` leaves the tabular decision as it is.
    """
    bundle = ModelBundle.load(model_dir)
    types = bundle.info.get("types")
    step = on_step or (lambda _m: None)
    text = _text_scores(store, text_model_dir, since, until, step) if text_model_dir is not None else {}
    rows = _features(store, since, until, bundle.feature_set, types, step)
    if needs_events(bundle.detector):
        step("loading event histories")
        bundle = bind_events(store, bundle, rows)
    written = 0
    chunk = 50_000
    decided: set[str] = set()
    for i in range(0, rows.height, chunk):
        part = rows[i:i + chunk]
        step(f"deciding {i + part.height:,}/{rows.height:,}")
        decisions = bundle.decide(part, top_reasons=top_reasons)
        if text:
            decisions = [_with_text(d, text.get(d.event_id), bundle, text_min_score) for d in decisions]
            decided.update(d.event_id for d in decisions)
        written += store.append_decisions([d.to_record() for d in decisions])
    # Text events the tabular model does not cover (its ``types`` leave them out): the text model decides.
    from shopguard.models.text.decisions import text_decision

    rest = [text_decision(eid, t, s, r, bundle.policy, bundle.model_version)
            for eid, (t, s, r) in text.items() if eid not in decided]
    if rest:
        written += store.append_decisions([d.to_record() for d in rest])
    return written


def train_text(
    store: EventStore,
    out_dir: str | Path,
    *,
    split: SplitConfig | None = None,
    params: dict[str, Any] | None = None,
    on_step: Step | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the review/chat ``TextEventDetector`` before the test window and save it into ``out_dir``.

    Same time protocol as ``train``: the model sees events before ``test_start`` with the labels known
    then, minus the label-delay gap (``label_delay_days`` defaults to the split's ``delay_days``); the
    test window is scored once for the returned metrics (ROC-AUC / AP per event type, all labels).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from shopguard.models.text.scoring import event_labels, fit_text_model, score_text_events

    step = on_step or (lambda _m: None)
    cfg = split or SplitConfig()
    sp, choice = split_for(store, cfg, _rule(store, "auto"))
    delay_days = choice.delay_days if choice is not None else (7.0 if cfg.delay_days is None else cfg.delay_days)
    step("fitting the text model (reviews, chats)")
    model = fit_text_model(store, until=sp.test_start, **{"label_delay_days": delay_days, **(params or {})})
    model.save(out_dir, metadata={"split": sp.model_dump(mode="json")})
    step("scoring the test window")
    scored = score_text_events(store, model, since=sp.test_start, until=sp.test_end)
    y = event_labels(scored, store.labels())
    metrics: dict[str, Any] = {"fit": dict(model.fit_info_), "test_start": sp.test_start.isoformat(),
                               "test_end": sp.test_end.isoformat()}
    for etype in ("review", "chat"):
        mask = (scored["type"] == etype).to_numpy()
        m: dict[str, Any] = {"events": int(mask.sum()), "positives": int(y[mask].sum())}
        if 0 < y[mask].sum() < mask.sum():
            m["roc_auc"] = float(roc_auc_score(y[mask], scored["score"].to_numpy()[mask]))
            m["average_precision"] = float(average_precision_score(y[mask], scored["score"].to_numpy()[mask]))
        metrics[etype] = m
    return model, metrics


def _text_scores(store: EventStore, text_model_dir: str | Path, since: datetime | None, until: datetime | None,
                 step: Step) -> dict[str, tuple[str, float, list[str]]]:
    """``event_id -> (type, text score, reasons)`` for the review and chat events in the window."""
    from shopguard.models.base import load_detector
    from shopguard.models.text.scoring import TextEventDetector, score_text_events

    model = load_detector(text_model_dir)
    if not isinstance(model, TextEventDetector):
        raise ValidationFailed(f"{text_model_dir} holds a {type(model).__name__}, not a text model "
                               f"(`shopguard train --detector text`)", field="text_model", value=str(text_model_dir))
    step("scoring review and chat text")
    frame = score_text_events(store, model, since=since, until=until)
    return {r["event_id"]: (r["type"], float(r["score"]), list(r["reasons"] or []))
            for r in frame.iter_rows(named=True)}


def _with_text(decision: Any, text: tuple[str, float, list[str]] | None, bundle: ModelBundle,
               min_text_score: float) -> Any:
    if text is None:
        return decision
    from shopguard.models.text.decisions import merge_decision

    return merge_decision(decision, text[0], text[1], text[2], bundle.policy, min_text_score=min_text_score)


__all__ = ["TimeSplit", "evaluate", "evaluate_frame", "make_detector", "score_events", "train", "train_text"]


def surprise_result(
    store: EventStore,
    split: dict[str, Any],
    *,
    out_dir: str | Path,
    epochs: int = 1,
    max_sequences: int | None = 20_000,
    k: int = 100,
    on_step: Step | None = None,
) -> dict[str, Any]:
    """Pretrain the behaviour foundation model on the training window (no labels) and evaluate its
    unsupervised surprise score on the test window, as one more entry for ``evaluate(extra_results=...)``.

    Same protocol as the tabular models: pretraining sees only events before ``train_end``, the test
    window is ``[test_start, test_end)`` with users known fraudulent before each day removed, and the
    score of an event uses only that user's earlier events.
    """
    from shopguard.models.sequence.config import PretrainConfig
    from shopguard.models.sequence.detectors import BEHAVIOUR_FIELDS, SequenceInput, SequenceSurpriseDetector
    from shopguard.models.sequence.pretrain import pretrain

    step = on_step or (lambda _m: None)
    train_start = datetime.fromisoformat(split["train_start"]) if split.get("train_start") else None
    train_end = datetime.fromisoformat(split["train_end"])
    test_start, test_end = datetime.fromisoformat(split["test_start"]), datetime.fromisoformat(split["test_end"])
    step("pretraining on unlabeled training events")
    history = store.events(since=train_start, until=train_end)
    if history.height == 0:
        raise DataError(f"no events to pretrain on before {train_end}", field="split")
    config = PretrainConfig(epochs=epochs, max_sequences=max_sequences)
    pretrain(history, config=config, out_dir=out_dir)
    # Surprise over behaviour fields (what a user does, how much, from where), normalised per event
    # type on the latest training events so that rare-but-normal types do not dominate.
    detector = SequenceSurpriseDetector(pretrained=str(out_dir), fields=list(BEHAVIOUR_FIELDS))
    detector.fit(SequenceInput(history, history["event_id"].tail(20_000)))
    step("surprise of test events")
    events = store.events(until=test_end)  # history before the test window is context, never a target
    rows = events.filter(pl.col("ts") >= test_start).select("event_id", "ts", "user_id")
    before = rows.height
    rows = drop_known_fraud(store, rows)
    scores = detector.score(SequenceInput(events, rows["event_id"]))
    targets = _targets(store, rows["event_id"], None)
    y = targets["label"].to_numpy()
    scenarios = targets["scenario"].to_list()
    metrics = M.summary(
        y, scores, days=rows["ts"].dt.date().cast(pl.Utf8).to_numpy(),
        entities=rows["user_id"].cast(pl.Utf8).fill_null("").to_numpy(), scenarios=scenarios, k=k,
    )
    metrics["removed_known_fraud_events"] = before - rows.height
    return {
        "model_version": "foundation-surprise", "detector": "foundation_surprise", "supervised": False,
        "metrics": metrics, "policy": {}, "split": split,
        "data": {"y": y, "scores": scores, "scenarios": np.asarray([s or "" for s in scenarios], dtype=object)},
    }
