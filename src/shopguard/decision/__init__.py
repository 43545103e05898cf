"""The decision layer: calibrated probability -> risk level -> action, with reasons."""

from shopguard.decision.policy import Action, Decision, Policy, RiskLevel
from shopguard.decision.reasons import Reason, reasons_from_contributions

__all__ = ["Action", "Decision", "Policy", "Reason", "RiskLevel", "reasons_from_contributions"]
