"""Scores to probabilities, fitted on the (time-later) validation slice.

A detector's score only ranks events; the decision layer needs "how likely is this fraud". With labels,
``Calibrator`` fits isotonic regression (enough positives) or Platt scaling (a logistic curve on the
score, for few positives). Without labels (unsupervised detectors on an unlabelled shop) there is no
probability to be had: the calibrator then returns the score's percentile among validation events and
says so (``kind == "percentile"``), and thresholds are read as alert shares rather than risks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from shopguard.errors import ModelError, ValidationFailed

_TIE_BREAK = 1e-3
Method = Literal["auto", "isotonic", "platt", "percentile"]


class Calibrator:
    """Monotone map from detector score to probability (or percentile when there are no labels)."""

    def __init__(self, method: Method = "auto", min_isotonic_positives: int = 50) -> None:
        self.method = method
        self.min_isotonic_positives = min_isotonic_positives

    def fit(self, scores: Any, y: Any | None = None) -> Calibrator:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size == 0:
            raise ValidationFailed("calibration needs at least one validation score", field="scores")
        if self.method not in ("auto", "isotonic", "platt", "percentile"):
            raise ValidationFailed(f"unknown calibration method {self.method!r}", field="method", value=self.method)
        labels = None if y is None else np.asarray(y).reshape(-1).astype(np.int64)
        if labels is not None and labels.shape != s.shape:
            raise ValidationFailed("calibration labels and scores differ in length", field="y")
        both = labels is not None and 0 < labels.sum() < labels.size
        kind = self.method
        if kind == "auto":
            if not both:
                kind = "percentile"
            else:
                kind = "isotonic" if labels.sum() >= self.min_isotonic_positives else "platt"  # type: ignore[union-attr]
        elif kind in ("isotonic", "platt") and not both:
            raise ValidationFailed(f"{kind} calibration needs fraud and normal validation labels", field="y")
        self.kind_ = kind
        self.reference_ = np.sort(s)
        self._platt_stats = None
        if kind == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso.fit(s, labels)
            self.model_: Any = iso
        elif kind == "platt":
            lr = LogisticRegression(C=1e4)
            lr.fit(self._platt_x(s), labels)
            self.model_ = lr
        else:
            self.model_ = None
        return self

    def _platt_x(self, s: np.ndarray) -> np.ndarray:
        # Standardise so the logistic fit is well conditioned whatever the score's scale. The reference's
        # mean and spread are fixed once fitted: computed on first use (also for calibrators pickled
        # before this cache existed), not on every single-event call.
        stats = getattr(self, "_platt_stats", None)
        if stats is None:
            stats = self._platt_stats = (float(np.mean(self.reference_)), float(np.std(self.reference_)) or 1.0)
        mu, sd = stats
        return ((s - mu) / sd).reshape(-1, 1)

    def transform(self, scores: Any) -> np.ndarray:
        if not hasattr(self, "kind_"):
            raise ModelError("Calibrator is not fitted: call fit() first")
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if self.kind_ == "isotonic":
            # Isotonic regression is flat on blocks; a 0.1% blend with the score's percentile breaks the
            # ties so thresholds can still separate events inside a block (calibration moves <= 0.001).
            # np.interp over the fitted breakpoints is what IsotonicRegression(out_of_bounds="clip")
            # computes, without sklearn's per-call validation (~0.3 ms for one event in the service).
            xs, ys = self._iso_points()
            iso = np.interp(s, xs, ys)
            return (1 - _TIE_BREAK) * iso + _TIE_BREAK * self._percentile(s)
        if self.kind_ == "platt":
            # The logistic by hand: predict_proba's input checks cost ~0.6 ms for a single event.
            coef, intercept = self._platt_params()
            z = self._platt_x(s).reshape(-1) * coef + intercept
            return 1.0 / (1.0 + np.exp(-z))
        return self._percentile(s)

    def _iso_points(self) -> tuple[np.ndarray, np.ndarray]:
        pts = getattr(self, "iso_points_", None)
        if pts is None:
            pts = self.iso_points_ = (np.asarray(self.model_.X_thresholds_, dtype=np.float64),
                                      np.asarray(self.model_.y_thresholds_, dtype=np.float64))
        return pts

    def _platt_params(self) -> tuple[float, float]:
        pp = getattr(self, "platt_params_", None)
        if pp is None:
            pp = self.platt_params_ = (float(self.model_.coef_[0, 0]), float(self.model_.intercept_[0]))
        return pp

    # -- persistence: plain JSON (a pickle in a model folder could run code when loaded) ----------------
    def to_dict(self) -> dict[str, Any]:
        """Everything ``transform`` needs, as JSON-able numbers (no sklearn objects)."""
        if not hasattr(self, "kind_"):
            raise ModelError("Calibrator is not fitted: call fit() first")
        out: dict[str, Any] = {"format": "shopguard-calibrator", "version": 1, "kind": self.kind_,
                               "method": self.method, "min_isotonic_positives": self.min_isotonic_positives,
                               "reference": [float(x) for x in self.reference_]}
        if self.kind_ == "isotonic":
            xs, ys = self._iso_points()
            out["isotonic"] = {"x": [float(x) for x in xs], "y": [float(y) for y in ys]}
        elif self.kind_ == "platt":
            coef, intercept = self._platt_params()
            self._platt_x(np.zeros(1))  # fixes the standardisation stats
            mu, sd = self._platt_stats  # type: ignore[misc]
            out["platt"] = {"coef": coef, "intercept": intercept, "mean": mu, "std": sd}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Calibrator:
        """A fitted calibrator from ``to_dict``'s output; ModelError when anything is missing or not finite."""
        try:
            if not isinstance(data, dict) or data.get("format") != "shopguard-calibrator":
                raise ValueError("not a shopguard calibrator")
            kind = data["kind"]
            if kind not in ("isotonic", "platt", "percentile"):
                raise ValueError(f"unknown calibration kind {kind!r}")
            cal = cls(method=data.get("method", "auto"), min_isotonic_positives=int(data.get("min_isotonic_positives", 50)))
            ref = _finite_array(data["reference"], "reference")
            if ref.size == 0:
                raise ValueError("empty reference")
            cal.kind_ = kind
            cal.reference_ = np.sort(ref)
            cal._platt_stats = None
            cal.model_ = None
            if kind == "isotonic":
                xs = _finite_array(data["isotonic"]["x"], "isotonic.x")
                ys = _finite_array(data["isotonic"]["y"], "isotonic.y")
                if xs.size == 0 or xs.size != ys.size or np.any(np.diff(xs) < 0):
                    raise ValueError("isotonic breakpoints malformed")
                cal.iso_points_ = (xs, ys)
            elif kind == "platt":
                p = data["platt"]
                vals = [float(p[k]) for k in ("coef", "intercept", "mean", "std")]
                if not all(np.isfinite(vals)) or vals[3] <= 0:
                    raise ValueError("platt parameters not finite")
                cal.platt_params_ = (vals[0], vals[1])
                cal._platt_stats = (vals[2], vals[3])
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"calibrator is malformed: {exc}", field="calibrator") from None
        return cal

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load_json(cls, path: str | Path) -> Calibrator:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"calibrator {path} is unreadable: {exc}", field="calibrator", value=str(path)) from None
        return cls.from_dict(data)

    def _percentile(self, s: np.ndarray) -> np.ndarray:
        ref = self.reference_
        return np.searchsorted(ref, s, side="right") / ref.size

    @property
    def is_probability(self) -> bool:
        return getattr(self, "kind_", None) in ("isotonic", "platt")


def _finite_array(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite numbers")
    return arr
