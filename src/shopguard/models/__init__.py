"""Detectors: every one has ``fit(...)`` and ``score(...)`` where a higher score means riskier."""

from shopguard.models.base import Detector, load_detector

__all__ = ["Detector", "load_detector"]
