"""The real-time decision service: FastAPI app, auth, routes and the in-process decision engine."""

from __future__ import annotations

from shopguard.api.app import create_app
from shopguard.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
