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
classification loss.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from shopguard.errors import DataError, ModelError
from shopguard.models.base import Detector

FEATURES_FILE = "fusion_features.json"
MODEL_DIR = "model"
SURPRISE_DIR = "pretrained"
# Feature-frame columns that identify the event rather than describe it; labels never enter.
_NOT_FEATURES = {"event_id", "ts", "type", "user_id", "label", "scenario"}
_CLIP = 5.0


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


def fusion_frame(model: Any, inp: FusionInput, surprise: bool) -> pl.DataFrame:
    """The target features, with the pretrained model's per-field surprise joined on when asked."""
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
        sf = surprise_features(model, inp.events, ids)
        cols = [c for c in sf.columns if c != "event_id"]
        # The user's recent behaviour as a whole: mean surprise of the last events and the peak of the
        # last minutes (behaviour fields) — what a scripted or hijacked session looks like.
        sess = session_surprise(model, model.build(inp.events, ids))
        frame = frame.with_columns([sf[c].alias(f"fusion_{c}") for c in cols]
                                   + [pl.Series("fusion_session_mean", sess[:, 0]),
                                      pl.Series("fusion_session_peak", sess[:, 1])])
    return frame


class FusionClassifierDetector(Detector):
    """Supervised: pretrained behaviour transformer + engineered features, fine-tuned jointly.

    ``method``: how the encoder trains (``frozen``: head only, on cached hidden states — the fast
    default; ``lora``; ``full``). ``surprise``: also fuse the pretrained per-field surprise. ``y`` may
    hold ``-1`` for unlabelled rows (used for standardisation and the auxiliary loss only).
    """

    name = "sequence_fusion"
    supervised = True

    def __init__(self, pretrained: str | None = None, method: str = "frozen", surprise: bool = True,
                 config: str = "tiny", max_len: int | None = None, pretrain_epochs: int = 3,
                 epochs: int | None = None, lr: float | None = None, encoder_lr: float | None = None,
                 head_hidden: int | None = 0, weight_decay: float | None = None, aux_weight: float = 0.0,
                 max_negatives: int | None = None, patience: int | None = None, refit: bool = True,
                 seed: int = 7, num_threads: int | None = None) -> None:
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
            return load_model(self.pretrained)
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
        base = self._base(X)
        # Surprise always comes from the *pretrained* next-event heads (fine-tuning moves the encoder).
        self.surprise_model_ = base if self.surprise and self.method != "frozen" else None
        frame = fusion_frame(base, X, self.surprise)
        labels = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(labels) != frame.height:
            raise DataError(f"y has {len(labels)} labels for {frame.height} target events", field="y",
                            value=len(labels))
        if not np.isin(labels, (-1.0, 0.0, 1.0)).all():
            raise DataError("labels must be 1, 0 or -1 (unknown)", field="y")
        self.features_ = FusionFeatures().fit(frame)  # every row: no label is read
        extra = self.features_.transform(frame)
        batch = base.build(X.events, frame["event_id"].cast(pl.Utf8).to_list())
        known = np.flatnonzero(labels >= 0)
        result = finetune(base, batch.subset(known), labels[known].astype(np.float32),
                          config=self.finetune_config(), extra=extra[known], unlabeled=batch)
        self.model_ = result.model
        self.finetune_ = result.model.finetune
        return self

    def score(self, X: Any) -> np.ndarray:
        self.check_fitted()
        frame = fusion_frame(self.surprise_model_ or self.model_, X, self.surprise)
        batch = self.model_.build(X.events, frame["event_id"].cast(pl.Utf8).to_list())
        return self.model_.predict_proba(batch, self.features_.transform(frame)).astype(np.float64)

    def _save_state(self, folder: Path) -> None:
        self.model_.save(folder / MODEL_DIR)
        if self.surprise_model_ is not None:
            self.surprise_model_.save(folder / SURPRISE_DIR)
        (folder / FEATURES_FILE).write_text(json.dumps(self.features_.to_dict()))

    def _load_state(self, folder: Path) -> None:
        from shopguard.models.sequence.finetune import FineTunedModel
        from shopguard.models.sequence.network import FoundationModel

        self.model_ = FineTunedModel.load(folder / MODEL_DIR)
        self.surprise_model_ = FoundationModel.load(folder / SURPRISE_DIR) if (folder / SURPRISE_DIR).exists() else None
        self.features_ = FusionFeatures.from_dict(json.loads((folder / FEATURES_FILE).read_text()))
        self.finetune_ = self.model_.finetune
