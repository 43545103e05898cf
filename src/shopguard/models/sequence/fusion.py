"""Fusion fine-tuning: the behaviour transformer trained jointly with the event's tabular features.

Nubank's nuFormer gets its gain over LightGBM by fine-tuning the sequence model *together with* the
tabular features, not by stacking. Here the classifier head reads the target event's hidden state
concatenated with

- the event's engineered point-in-time features (``shopguard.features``: velocity, novelty, entity
  counts — the cross-entity signals a single user's sequence cannot see), and
- optionally the pretrained model's surprise (unsupervised: no label touches it): the event's NLL per
  token field (``surprise_features``) and the session's mean / peak NLL (``session_surprise``),

both standardised by ``FusionFeatures`` (signed log, training mean / spread, clipped, missing -> 0),
which is fitted on every training row given, labelled or not. With few labels the defaults keep the
model small: a frozen encoder, a linear head with weight decay, early stopping on the average precision
of a time-held-out slice of the training window, then a refit on every labelled row.

``FusionClassifierDetector`` puts it behind the ``Detector`` interface; its input is a ``FusionInput``
(events for the histories + the feature frame of the target events). Labels may be ``-1`` (unknown):
those rows still fit the standardisation and feed the auxiliary pretraining loss, but never the
classification loss. Code that hands detectors a bare feature frame (``ModelBundle``, the pipeline
behind ``shopguard train / evaluate / score``) binds the event log first:
``detector.with_events(events)`` is a ``BoundFusion`` that scores feature frames. ``explain`` gives
per-feature contributions (logit units) of the engineered columns for reason codes, and
``export.export_onnx(detector, dir)`` writes one ONNX graph (token window + feature vector ->
probability).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from shopguard.errors import DataError, ModelError
from shopguard.models.base import Detector
from shopguard.models.sequence.tokenizer import FIELDS

FEATURES_FILE = "fusion_features.json"
MODEL_DIR = "model"
SURPRISE_DIR = "pretrained"
# Feature-frame columns that identify the event rather than describe it; labels never enter.
_NOT_FEATURES = {"event_id", "ts", "type", "user_id", "label", "scenario"}
_CLIP = 5.0
#: Names of the unsupervised surprise columns ``fusion_frame`` adds (in this order) when ``surprise``.
SURPRISE_PREFIX = "fusion_"
SURPRISE_COLUMNS = ([f"{SURPRISE_PREFIX}surprise_total"] + [f"{SURPRISE_PREFIX}surprise_{f}" for f in FIELDS]
                    + [f"{SURPRISE_PREFIX}session_mean", f"{SURPRISE_PREFIX}session_peak"])


def _signed_log(x: np.ndarray) -> np.ndarray:
    # Counts, amounts and seconds are heavy-tailed: compress before standardising.
    return np.sign(x) * np.log1p(np.abs(x))


class FusionFeatures:
    """Standardised numeric columns of a feature frame (+ surprise columns): one finite row per event."""

    def __init__(self, columns: list[str] | None = None) -> None:
        self.columns = columns
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    @staticmethod
    def numeric_columns(frame: pl.DataFrame) -> list[str]:
        """Numeric columns that are features (keys and label columns left out)."""
        return [c for c, t in frame.schema.items() if c not in _NOT_FEATURES and t.is_numeric()]

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        assert self.columns is not None
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(f"feature frame lacks column {missing[0]!r} the fusion model was fitted with",
                            field=missing[0])
        x = frame.select([pl.col(c).cast(pl.Float64) for c in self.columns]).to_numpy()
        return _signed_log(x.astype(np.float64))

    def fit(self, frame: pl.DataFrame) -> Self:
        if self.columns is None:
            self.columns = self.numeric_columns(frame)
        if not self.columns:
            raise DataError("the feature frame has no numeric feature columns to fuse", field="features")
        x = self._matrix(frame)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: handled below
            mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
            std = np.nanstd(np.where(np.isfinite(x), x, np.nan), axis=0)
        # Columns that never vary (or are always missing) carry nothing: mean 0, scale 1 keeps them at 0.
        self.mean_ = np.nan_to_num(mean, nan=0.0)
        self.scale_ = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
        return self

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        if self.mean_ is None or self.scale_ is None:
            raise ModelError("FusionFeatures is not fitted: call fit() first", field="features")
        z = (self._matrix(frame) - self.mean_) / self.scale_
        z = np.where(np.isfinite(z), z, 0.0)  # missing = the training mean
        return np.clip(z, -_CLIP, _CLIP).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        if self.mean_ is None or self.scale_ is None:
            raise ModelError("FusionFeatures is not fitted", field="features")
        return {"columns": self.columns, "mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionFeatures:
        out = cls(list(d["columns"]))
        out.mean_ = np.asarray(d["mean"], dtype=np.float64)
        out.scale_ = np.asarray(d["scale"], dtype=np.float64)
        return out


@dataclass
class FusionInput:
    """Histories and the targets to classify.

    ``events``: store records holding the targets and their users' earlier events; ``features``: one row
    per target event (in the order scores come back), with ``event_id`` and the engineered features
    (``shopguard.features.batch.compute_features``); label columns, if present, are ignored.
    """

    events: pl.DataFrame
    features: pl.DataFrame


def fusion_frame(model: Any, inp: FusionInput, surprise: bool, batch: Any = None) -> pl.DataFrame:
    """The target features, with the pretrained model's per-field surprise joined on when asked.

    ``batch``: the targets' windows, already built (in ``inp.features`` order); default: ``model``'s.
    """
    from shopguard.models.sequence.detectors import surprise_features

    if not isinstance(inp, FusionInput):
        raise DataError(f"the fusion detector takes a FusionInput(events, features), got {type(inp).__name__}",
                        field="X")
    if "event_id" not in inp.features.columns:
        raise DataError("the feature frame needs column 'event_id'", field="event_id")
    frame = inp.features
    if surprise:
        from shopguard.models.sequence.detectors import session_surprise

        ids = frame["event_id"].cast(pl.Utf8).to_list()
        if batch is None:
            sf = surprise_features(model, inp.events, ids)
            batch = model.build(inp.events, ids)
        else:  # the same columns as surprise_features, from the given windows
            fs = model.field_surprise(batch)
            sf = pl.DataFrame({"surprise_total": fs.sum(axis=1).astype(np.float32),
                               **{f"surprise_{f}": fs[:, j].astype(np.float32) for j, f in enumerate(FIELDS)}})
        cols = [c for c in sf.columns if c != "event_id"]
        # The user's recent behaviour as a whole: mean surprise of the last events and the peak of the
        # last minutes (behaviour fields) — what a scripted or hijacked session looks like.
        sess = session_surprise(model, batch)
        frame = frame.with_columns([sf[c].alias(f"fusion_{c}") for c in cols]
                                   + [pl.Series("fusion_session_mean", sess[:, 0]),
                                      pl.Series("fusion_session_peak", sess[:, 1])])
    return frame


class FusionClassifierDetector(Detector):
    """Supervised: pretrained behaviour transformer + engineered features, fine-tuned jointly.

    ``method``: how the encoder trains (``frozen``: head only, on cached hidden states — the fast
    default; ``lora``; ``full``). ``surprise``: also fuse the pretrained per-field surprise. ``y`` may
    hold ``-1`` for unlabelled rows (used for standardisation and the auxiliary loss only).
    ``max_len``: events per window (default: the pretrained model's; shorter is cheaper — the encoder
    cost grows with it — and must not exceed it). ``fit_negatives``: at most this many non-positive rows (drawn at random, seeded; every positive
    kept) are fitted on — the surprise columns and hidden states cost encoder passes per row, and a
    linear probe gains little from the 100,000th negative. None: every row.

    Scoring runs one pass of ``export.fusion_graph`` (the module the ONNX export writes): one encoder
    pass per window for ``frozen`` (hidden state, surprise and session columns from the same pass), two
    otherwise; ``score_reference`` is the column-by-column path it reproduces.
    """

    name = "sequence_fusion"
    supervised = True

    def __init__(self, pretrained: str | None = None, method: str = "frozen", surprise: bool = True,
                 config: str = "tiny", max_len: int | None = None, pretrain_epochs: int = 3,
                 epochs: int | None = None, lr: float | None = None, encoder_lr: float | None = None,
                 head_hidden: int | None = 0, weight_decay: float | None = None, aux_weight: float = 0.0,
                 max_negatives: int | None = None, patience: int | None = None, refit: bool = True,
                 seed: int = 7, num_threads: int | None = None, fit_negatives: int | None = 20_000) -> None:
        self.pretrained = pretrained
        self.method = method
        self.surprise = surprise
        self.config = config
        self.max_len = max_len
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.lr = lr
        self.encoder_lr = encoder_lr
        self.head_hidden = head_hidden
        self.weight_decay = weight_decay
        self.aux_weight = aux_weight
        self.max_negatives = max_negatives
        self.patience = patience
        self.refit = refit
        self.seed = seed
        self.num_threads = num_threads
        self.fit_negatives = fit_negatives

    def finetune_config(self) -> Any:
        """The ``FinetuneConfig`` this detector trains with (fusion defaults, then the given overrides)."""
        from shopguard.models.sequence.config import fusion_config

        over = {k: getattr(self, k) for k in ("epochs", "lr", "encoder_lr", "weight_decay", "patience")
                if getattr(self, k) is not None}
        return fusion_config(self.method, head_hidden=self.head_hidden, aux_weight=self.aux_weight,
                             max_negatives=self.max_negatives, refit=self.refit, seed=self.seed,
                             num_threads=self.num_threads, **over)

    def _base(self, inp: FusionInput) -> Any:
        from shopguard.models.sequence.config import PretrainConfig, preset
        from shopguard.models.sequence.detectors import load_model
        from shopguard.models.sequence.pretrain import pretrain

        if self.pretrained:
            model = load_model(self.pretrained)
            if self.max_len is not None and not 1 <= self.max_len <= model.max_len:
                raise DataError(f"max_len must be between 1 and the pretrained model's {model.max_len}, got "
                                f"{self.max_len}", field="max_len", value=self.max_len)
            return model
        net = preset(self.config, **({"max_len": self.max_len} if self.max_len else {}))
        cfg = PretrainConfig(epochs=self.pretrain_epochs, seed=self.seed, num_threads=self.num_threads)
        return pretrain(inp.events, network=net, config=cfg).model

    def fit(self, X: Any, y: Any = None) -> Self:
        from shopguard.models.sequence.finetune import finetune

        if y is None:
            raise DataError("sequence_fusion is supervised: fit(X, y) needs labels (-1 for unknown)", field="y")
        if self.method not in ("full", "lora", "frozen"):
            raise DataError(f"method must be full, lora or frozen, got {self.method!r}", field="method",
                            value=self.method)
        X = self._input(X)
        labels = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(labels) != X.features.height:
            raise DataError(f"y has {len(labels)} labels for {X.features.height} target events", field="y",
                            value=len(labels))
        if not np.isin(labels, (-1.0, 0.0, 1.0)).all():
            raise DataError("labels must be 1, 0 or -1 (unknown)", field="y")
        rest = np.flatnonzero(labels != 1)
        if self.fit_negatives is not None and len(rest) > self.fit_negatives:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(np.concatenate([np.flatnonzero(labels == 1),
                                           rng.choice(rest, self.fit_negatives, replace=False)]))
            X, labels = FusionInput(X.events, X.features[keep]), labels[keep]
        base = self._base(X)
        # Surprise always comes from the *pretrained* next-event heads (fine-tuning moves the encoder).
        self.surprise_model_ = base if self.surprise and self.method != "frozen" else None
        self.window_ = int(self.max_len or base.max_len)
        batch = self._windows(base, X)
        frame = fusion_frame(base, X, self.surprise, batch)
        self.features_ = FusionFeatures().fit(frame)  # every row: no label is read
        extra = self.features_.transform(frame)
        known = np.flatnonzero(labels >= 0)
        result = finetune(base, batch.subset(known), labels[known].astype(np.float32),
                          config=self.finetune_config(), extra=extra[known], unlabeled=batch)
        self.model_ = result.model
        self.finetune_ = result.model.finetune
        return self

    #: Scoring reads the users' event histories, not only the feature frame (see ``with_events``).
    needs_events: ClassVar[bool] = True

    def _input(self, X: Any) -> FusionInput:
        if isinstance(X, FusionInput):
            return X
        raise DataError(f"sequence_fusion scores from events + features: pass FusionInput(events, features), or "
                        f"bind the event log first (detector.with_events(events).score(features)); got "
                        f"{type(X).__name__}", field="X")

    @property
    def window(self) -> int:
        """Events per window this model reads (``max_len`` or the pretrained model's)."""
        return int(getattr(self, "window_", None) or self.model_.max_len)

    def _windows(self, model: Any, X: FusionInput) -> Any:
        from shopguard.models.sequence.sequences import build_sequences

        ids = X.features["event_id"].cast(pl.Utf8).to_list()
        return build_sequences(X.events, ids, int(getattr(self, "window_", None) or model.max_len), model.tokenizer)

    def build(self, events: pl.DataFrame, target_event_ids: Any) -> Any:
        """The ``SequenceBatch`` windows this model reads for the targets (e.g. for its ONNX export)."""
        self.check_fitted()
        ids = [str(e) for e in target_event_ids]
        return self._windows(self.model_, FusionInput(events, pl.DataFrame({"event_id": ids})))

    def score(self, X: Any, batch_size: int = 512) -> np.ndarray:
        """Probability per target row of ``X.features`` (one ``fusion_graph`` pass per window)."""
        import torch

        from shopguard.models.sequence.export import fusion_graph

        self.check_fitted()
        X = self._input(X)
        if "event_id" not in X.features.columns:
            raise DataError("the feature frame needs column 'event_id'", field="event_id")
        batch = self._windows(self.model_, X)
        x = self.raw_features(X.features)
        graph = fusion_graph(self)
        outs = []
        with torch.no_grad():
            for s in range(0, len(batch), batch_size):
                outs.append(graph(torch.from_numpy(batch.tokens[s:s + batch_size]),
                                  torch.from_numpy(batch.dt[s:s + batch_size]),
                                  torch.from_numpy(x[s:s + batch_size])).numpy())
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros(0)

    def raw_features(self, features: pl.DataFrame) -> np.ndarray:
        """(rows, K) float32 of ``feature_columns`` as the fusion graph takes them (nulls -> NaN)."""
        missing = [c for c in self.feature_columns if c not in features.columns]
        if missing:
            raise DataError(f"feature frame lacks column {missing[0]!r} the fusion model was fitted with",
                            field=missing[0])
        x = features.select([pl.col(c).cast(pl.Float64) for c in self.feature_columns]).to_numpy()
        return np.ascontiguousarray(x.reshape(features.height, len(self.feature_columns)), dtype=np.float32)

    def score_reference(self, X: Any) -> np.ndarray:
        """The column-by-column path ``score`` reproduces in one pass (surprise columns from
        ``surprise_features`` / ``session_surprise``, ``FusionFeatures.transform``, ``predict_proba``)."""
        self.check_fitted()
        X = self._input(X)
        batch = self._windows(self.model_, X)
        frame = fusion_frame(self.surprise_model_ or self.model_, X, self.surprise, batch)
        return self.model_.predict_proba(batch, self.features_.transform(frame)).astype(np.float64)

    @property
    def feature_columns(self) -> list[str]:
        """The engineered feature columns this model reads from the feature frame (surprise excluded)."""
        self.check_fitted()
        return [c for c in self.features_.columns or [] if not self._is_surprise(c)]

    def _is_surprise(self, column: str) -> bool:
        return self.surprise and column.startswith(SURPRISE_PREFIX) and (
            column.startswith(SURPRISE_PREFIX + "surprise_") or column.startswith(SURPRISE_PREFIX + "session_"))

    def _linear(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(weights, mean, scale) of the fused columns when the head is linear, else None."""
        from torch import nn

        head = self.model_.head
        if len(head.net) != 2 or not isinstance(head.net[-1], nn.Linear):
            return None
        d = self.model_.config.d_model
        w = head.net[-1].weight.detach().cpu().numpy().reshape(-1)[d:]
        return (w.astype(np.float64), head.mu.detach().cpu().numpy()[d:].astype(np.float64),
                head.sigma.detach().cpu().numpy()[d:].astype(np.float64))

    def _contributions(self, frame: pl.DataFrame) -> pl.DataFrame | None:
        lin = self._linear()
        if lin is None:
            return None
        w, mu, sigma = lin
        # Only the engineered columns are explained: absent surprise columns may stay missing.
        absent = [c for c in self.features_.columns or [] if c not in frame.columns and self._is_surprise(c)]
        frame = frame.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in absent]) if absent else frame
        z = self.features_.transform(frame).astype(np.float64)
        contrib = w[None, :] * (z - mu[None, :]) / sigma[None, :]  # log-odds pushed by each fused column
        cols = self.features_.columns or []
        keep = [j for j, c in enumerate(cols) if not self._is_surprise(c)]
        return pl.DataFrame({cols[j]: contrib[:, j] for j in keep}, schema={cols[j]: pl.Float64 for j in keep})

    def explain(self, X: Any) -> pl.DataFrame | None:
        """Per-feature contributions (log-odds, vs the training mean) of the engineered feature columns.

        Exact for the linear head (the fusion default): the head's weight times the standardised value.
        The hidden state and the surprise columns are left out (they have no feature value to quote).
        None for an MLP head.
        """
        self.check_fitted()
        X = self._input(X)
        return self._contributions(X.features)

    def score_and_explain(self, X: Any) -> tuple[np.ndarray, pl.DataFrame | None]:
        """Scores and ``explain`` together (the decision path asks for both)."""
        return self.score(X), self.explain(X)

    def with_events(self, events: pl.DataFrame) -> BoundFusion:
        """This detector bound to an event log: ``score`` / ``explain`` then take bare feature frames."""
        self.check_fitted()
        return BoundFusion(self, events)

    def _save_state(self, folder: Path) -> None:
        self.model_.save(folder / MODEL_DIR)
        if self.surprise_model_ is not None:
            self.surprise_model_.save(folder / SURPRISE_DIR)
        (folder / FEATURES_FILE).write_text(json.dumps({**self.features_.to_dict(), "window": self.window}))

    def _load_state(self, folder: Path) -> None:
        from shopguard.models.sequence.finetune import FineTunedModel
        from shopguard.models.sequence.network import FoundationModel

        self.model_ = FineTunedModel.load(folder / MODEL_DIR)
        self.surprise_model_ = FoundationModel.load(folder / SURPRISE_DIR) if (folder / SURPRISE_DIR).exists() else None
        saved = json.loads((folder / FEATURES_FILE).read_text())
        self.features_ = FusionFeatures.from_dict(saved)
        self.window_ = int(saved.get("window") or self.model_.max_len)  # saved before windows: the model's
        self.finetune_ = self.model_.finetune


class BoundFusion:
    """A fitted ``FusionClassifierDetector`` with the event log its windows read.

    ``ModelBundle`` and the pipeline hand detectors a bare feature frame (one row per target event);
    this adapter pairs it with the histories so the fusion model fits behind the same calls
    (``score``, ``explain``, ``score_and_explain``). Only earlier events of each target are read, so
    ``events`` may run past the targets. It is not itself saved: save the detector.
    """

    def __init__(self, detector: FusionClassifierDetector, events: pl.DataFrame) -> None:
        self.detector = detector
        self.events = events
        # The last scores, by target ids: evaluation scores the same rows twice (metrics, then plots).
        self._last: tuple[list[str], np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def supervised(self) -> bool:
        return self.detector.supervised

    def _inp(self, X: Any) -> FusionInput:
        from shopguard.models.tabular import as_polars

        return X if isinstance(X, FusionInput) else FusionInput(self.events, as_polars(X))

    def score(self, X: Any) -> np.ndarray:
        inp = self._inp(X)
        ids = inp.features["event_id"].cast(pl.Utf8).to_list() if "event_id" in inp.features.columns else None
        if ids is not None and self._last is not None and self._last[0] == ids:
            return self._last[1].copy()
        scores = self.detector.score(inp)
        if ids is not None:
            self._last = (ids, scores.copy())
        return scores

    def explain(self, X: Any) -> pl.DataFrame | None:
        return self.detector.explain(self._inp(X))

    def score_and_explain(self, X: Any) -> tuple[np.ndarray, pl.DataFrame | None]:
        return self.score(X), self.explain(X)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return self.detector.save(path, metadata)
