"""Detectors: every one has ``fit(...)`` and ``score(...)`` where a higher score means riskier."""

from shopguard.models.base import Detector, load_detector
from shopguard.models.baseline import UserBaselineDetector
from shopguard.models.gbm import LightGBMDetector
from shopguard.models.unsupervised import ECODDetector, HBOSDetector, IsolationForestDetector

# Tabular detectors by the name the CLI takes (``shopguard train --detector NAME``).
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (LightGBMDetector, IsolationForestDetector, ECODDetector, HBOSDetector, UserBaselineDetector)
}

__all__ = [
    "DETECTORS",
    "Detector",
    "ECODDetector",
    "HBOSDetector",
    "IsolationForestDetector",
    "LightGBMDetector",
    "UserBaselineDetector",
    "load_detector",
]
