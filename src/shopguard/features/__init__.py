"""Point-in-time features: declarative definitions run by a batch engine (DuckDB) and an online engine.

``definitions`` holds the data (``FeatureDef``, ``DEFAULT_FEATURES``, ``FeatureSet``); ``batch`` computes
features over the store; ``online`` keeps per-entity state and computes the same values event by event;
``targets`` turns labels into event-level targets.
"""

from __future__ import annotations

from shopguard.features.batch import compute_features, discover_attrs, feature_columns, feature_set
from shopguard.features.definitions import DEFAULT_FEATURES, AttrFeature, FeatureDef, FeatureSet
from shopguard.features.online import OnlineFeatureEngine
from shopguard.features.targets import event_targets

__all__ = [
    "DEFAULT_FEATURES",
    "AttrFeature",
    "FeatureDef",
    "FeatureSet",
    "OnlineFeatureEngine",
    "compute_features",
    "discover_attrs",
    "event_targets",
    "feature_columns",
    "feature_set",
]
