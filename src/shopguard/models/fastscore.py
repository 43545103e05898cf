"""Deciding single events of a LightGBM model bundle without building a frame.

The service decides one event (or the few that arrive together) at a time. Through the general path
(``ModelBundle.decide``) a one-row decision costs 1-4 ms of CPU, nearly all of it fixed per call:
building a Polars frame from the feature dict, encoding it, and LightGBM's Python ``predict`` (input
checks, a predictor set up per call). The trees themselves take microseconds. ``RowScorer`` does the
same steps on plain rows:

- the feature dict goes straight into a float64 row in the model's column order, with the encoder's
  own encoding (``TabularEncoder.encode_rows``: numbers as floats, missing/inf as NaN, categories as
  their integer codes, unseen as NaN);
- each booster is evaluated by LightGBM's own C "fast single row" predictor
  (``LGBM_BoosterPredictForMatSingleRowFast``), set up once per model: the same tree code as
  ``Booster.predict``, so the scores are identical, not approximated; a bag of boosters (``n_seeds``)
  is averaged in log-odds as ``LightGBMDetector.score`` does (more than ``LOOP_ROWS`` rows, e.g. a
  batch request: one vectorised ``Booster.predict`` on the encoded matrix);
- calibration, risk levels, actions and reasons (TreeSHAP contributions, also from the fast
  predictor, only for rows whose action is not ``allow``) follow ``ModelBundle.decide(explain=
  "flagged")`` step by step.

Anything else (other detectors, a detector class that overrides scoring, a LightGBM build without the
fast C entry points, a row lacking a model column) is not handled here: ``RowScorer.for_bundle``
returns None or ``decide`` returns None, and the caller uses ``ModelBundle.decide``.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shopguard.decision.policy import Action, Policy, RiskLevel
from shopguard.decision.reasons import Reason, reasons_from_weights

# LightGBM C API constants (c_api.h).
_PREDICT_NORMAL = 0
_PREDICT_RAW = 1
_PREDICT_CONTRIB = 3
_DTYPE_FLOAT64 = 1
_LEVELS = (RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL)
# Above this many rows one vectorised ``Booster.predict`` call beats a loop of single-row calls.
LOOP_ROWS = 32


def _lib() -> Any | None:
    """LightGBM's shared library with the fast single-row entry points typed, or None without them."""
    try:
        from lightgbm.basic import _LIB
    except ImportError:  # pragma: no cover - lightgbm is a dependency
        return None
    try:
        # The same loaded library, called WITHOUT releasing the GIL (PyDLL): a call takes microseconds,
        # and giving the GIL away would let any other thread keep it for the whole switch interval
        # (1 ms in the service) before the deciding thread gets it back.
        lib = ctypes.PyDLL(_LIB._name)
    except (AttributeError, OSError):  # pragma: no cover
        return None
    try:
        init = lib.LGBM_BoosterPredictForMatSingleRowFastInit
        fast = lib.LGBM_BoosterPredictForMatSingleRowFast
        free = lib.LGBM_FastConfigFree
    except AttributeError:  # pragma: no cover - every LightGBM >= 3.0 has them
        return None
    init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int32,
                     ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    init.restype = ctypes.c_int
    fast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]
    fast.restype = ctypes.c_int
    free.argtypes = [ctypes.c_void_p]
    free.restype = ctypes.c_int
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    return lib


_LIB_FAST = _lib()


def _free(handle: int, _booster: Any) -> None:
    # ``_booster`` keeps the booster alive as long as its fast config exists (the config points into it).
    if _LIB_FAST is not None and handle:
        _LIB_FAST.LGBM_FastConfigFree(ctypes.c_void_p(handle))


class SingleRowPredictor:
    """One booster's C fast single-row predictor: a float64 row of ``n_features`` in, its output out.

    ``kind`` is ``"normal"`` (probability for the binary objective), ``"raw"`` (log-odds) or
    ``"contrib"`` (TreeSHAP contributions, ``n_features + 1`` values with the bias last). The C config
    holds one output buffer, so calls are serialised by a lock (uncontended on the service's one
    deciding thread).
    """

    _KINDS = {"normal": _PREDICT_NORMAL, "raw": _PREDICT_RAW, "contrib": _PREDICT_CONTRIB}

    def __init__(self, booster: Any, n_features: int, *, kind: str = "normal", num_iteration: int = -1) -> None:
        if _LIB_FAST is None:
            raise RuntimeError("this LightGBM build has no fast single-row prediction")
        if kind not in self._KINDS:
            raise ValueError(f"kind must be one of {sorted(self._KINDS)}, got {kind!r}")
        handle = ctypes.c_void_p()
        rc = _LIB_FAST.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, self._KINDS[kind], 0, int(num_iteration), _DTYPE_FLOAT64, int(n_features),
            b"num_threads=1", ctypes.byref(handle))
        if rc != 0 or not handle.value:
            raise RuntimeError(f"LightGBM fast predictor setup failed: {_LIB_FAST.LGBM_GetLastError().decode()}")
        self.n_features = int(n_features)
        self.kind = kind
        self._handle = handle.value
        self._finalizer = weakref.finalize(self, _free, handle.value, booster)
        width = self.n_features + 1 if kind == "contrib" else 1
        self._out = np.zeros(width, dtype=np.float64)
        self._out_ptr = ctypes.c_void_p(self._out.ctypes.data)
        self._len = ctypes.c_int64(0)
        self._len_ref = ctypes.byref(self._len)
        self._fn = _LIB_FAST.LGBM_BoosterPredictForMatSingleRowFast
        self._lock = threading.Lock()

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The prediction for one C-contiguous float64 row (a fresh array)."""
        if row.dtype != np.float64 or row.shape[-1] != self.n_features or not row.flags.c_contiguous:
            raise ValueError(f"expected a contiguous float64 row of {self.n_features} values, got {row.dtype} "
                             f"{row.shape}")
        with self._lock:
            rc = self._fn(self._handle, row.ctypes.data, self._len_ref, self._out_ptr)
            if rc != 0:
                raise RuntimeError(f"LightGBM fast prediction failed: {_LIB_FAST.LGBM_GetLastError().decode()}")
            return self._out[: self._len.value].copy()

    def close(self) -> None:
        self._finalizer()


@dataclass
class RowDecision:
    """What ``ModelBundle.decide`` gives for one row, without the event id and latency."""

    score: float
    probability: float
    risk_level: RiskLevel
    action: Action
    reasons: list[Reason]


def _plain_lightgbm(detector: Any) -> bool:
    """A fitted ``LightGBMDetector`` whose scoring is the class's own (subclasses may change it)."""
    try:
        from shopguard.models.gbm import LightGBMDetector
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(detector, LightGBMDetector):
        return False
    cls = type(detector)
    same = all(getattr(cls, m) is getattr(LightGBMDetector, m)
               for m in ("score", "score_and_explain", "explain", "_matrix", "_boosters"))
    return same and all(hasattr(detector, a) for a in ("booster_", "encoder_", "best_iteration_", "feature_names_"))


class RowScorer:
    """Decides feature rows (dicts) of a LightGBM bundle exactly as ``ModelBundle.decide(explain="flagged")``.

    Build with ``RowScorer.for_bundle(bundle)`` (None when the bundle is not supported).
    """

    def __init__(self, bundle: Any) -> None:
        det = bundle.detector
        self.bundle = bundle
        self.detector = det
        self.encoder = det.encoder_
        self.calibrator = bundle.calibrator
        self.policy: Policy = bundle.policy
        self.feature_set = bundle.feature_set
        self.names: list[str] = list(det.feature_names_)
        if self.names != self.encoder.columns:
            raise ValueError("the detector's feature names differ from its encoder's columns")
        # The bundle checks its manifest columns are present; a row must carry those and the encoder's.
        self.required = frozenset(bundle.columns) | frozenset(self.names)
        self.boosters = det._boosters()
        self.bagged = len(self.boosters) > 1
        self.num_iteration = int(det.best_iteration_)
        n = len(self.names)
        self.n_features = n
        # One booster: its own probability output (as ``Booster.predict``); a bag: log-odds to average.
        kind = "raw" if self.bagged else "normal"
        self._score = [SingleRowPredictor(b, n, kind=kind, num_iteration=self.num_iteration) for b in self.boosters]
        self._contrib = [SingleRowPredictor(b, n, kind="contrib", num_iteration=self.num_iteration)
                         for b in self.boosters]
        self._allow = {lv: self.policy.action_for(lv) == Action.ALLOW for lv in RiskLevel}

    @classmethod
    def for_bundle(cls, bundle: Any) -> RowScorer | None:
        """A scorer for ``bundle`` when its detector is a plain fitted LightGBM one, else None."""
        if _LIB_FAST is None or not _plain_lightgbm(getattr(bundle, "detector", None)):
            return None
        if getattr(bundle, "calibrator", None) is None or getattr(bundle, "policy", None) is None:
            return None
        try:
            return cls(bundle)
        except (RuntimeError, ValueError, AttributeError, TypeError):
            return None

    # -- the pieces ---------------------------------------------------------------------------------------
    def encode(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """The LightGBM matrix of ``rows`` (None when a row lacks a model column: the frame path decides)."""
        req = self.required
        for r in rows:
            if not req <= r.keys():
                return None
        return self.encoder.encode_rows(rows)

    def scores(self, m: np.ndarray) -> np.ndarray:
        """``LightGBMDetector.score`` of an encoded matrix."""
        n = m.shape[0]
        if n > LOOP_ROWS:
            return np.asarray(self.detector.score_matrix(m), dtype=np.float64)
        if not self.bagged:
            pred = self._score[0]
            return np.array([pred(m[i])[0] for i in range(n)], dtype=np.float64)
        raw = np.mean([np.array([p(m[i])[0] for i in range(n)], dtype=np.float64) for p in self._score], axis=0)
        return np.asarray(1.0 / (1.0 + np.exp(-raw)), dtype=np.float64)

    def contributions(self, m: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions (rows x features, bias dropped), averaged over a bag as the detector does.

        Always row by row: ``Booster.predict(pred_contrib=True)`` starts an OpenMP team whose second
        thread spins on the other core (500 rows: 28 ms on the calling thread plus 29 ms spinning, against
        38 ms in all for the loop), and the service has no core to spare.
        """
        n = m.shape[0]
        full = np.mean([np.stack([p(m[i]) for i in range(n)]) for p in self._contrib], axis=0)
        return full[:, : self.n_features]

    def reasons(self, contrib: np.ndarray, rows: Sequence[Mapping[str, Any]], *, top: int = 3,
                min_weight: float = 1e-6) -> list[list[Reason]]:
        """``decision.reasons.reasons_from_contributions`` on plain rows (the values quoted from the dicts)."""
        return reasons_from_weights(contrib, self.names, lambda r, name: rows[r].get(name), self.feature_set,
                                    top=top, min_weight=min_weight)

    def _levels(self, probs: np.ndarray) -> list[RiskLevel]:
        """``Policy.levels`` on Python floats (the same comparisons, without numpy's per-call overhead)."""
        pol = self.policy
        med, high, crit = pol.medium, pol.high, pol.critical
        return [_LEVELS[(p >= med) + (p >= high) + (p >= crit)] for p in probs.tolist()]

    # -- deciding -----------------------------------------------------------------------------------------
    def decide(self, rows: Sequence[Mapping[str, Any]], *, top_reasons: int = 3) -> list[RowDecision] | None:
        """One decision per row, or None when a row lacks a model column (use ``ModelBundle.decide``)."""
        if not rows:
            return []
        m = self.encode(rows)
        if m is None:
            return None
        scores = self.scores(m)
        probs = self.calibrator.transform(scores)
        levels = self._levels(probs)
        reasons: list[list[Reason]] = [[] for _ in rows]
        if top_reasons > 0:
            flagged = [i for i, lv in enumerate(levels) if not self._allow[lv]]
            if flagged:
                sub = m[flagged] if len(flagged) < len(rows) else m
                found = self.reasons(self.contributions(np.ascontiguousarray(sub)), [rows[i] for i in flagged],
                                     top=top_reasons)
                for i, r in zip(flagged, found, strict=True):
                    reasons[i] = r
        return [RowDecision(float(scores[i]), float(probs[i]), levels[i], self.policy.action_for(levels[i]),
                            reasons[i]) for i in range(len(rows))]


__all__ = ["LOOP_ROWS", "RowDecision", "RowScorer", "SingleRowPredictor"]
