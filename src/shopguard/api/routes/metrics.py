"""``GET /metrics``: Prometheus text format."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from shopguard.api.deps import require

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, _key: Any = Depends(require("analyst"))) -> Response:
    """Request latency histogram, decisions by action, model version, errors, cases, webhooks."""
    m = request.app.state.metrics
    m.rules_loaded.set(len(request.app.state.engine.rules.rules))
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
