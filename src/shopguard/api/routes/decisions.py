"""``GET /v1/decisions/{event_id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request

from shopguard.api.deps import require
from shopguard.api.schemas import DecisionOut, ErrorOut
from shopguard.errors import NotFound

router = APIRouter(tags=["decisions"])


@router.get("/v1/decisions/{event_id}", response_model=DecisionOut,
            responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}})
def get_decision(request: Request, event_id: str = Path(min_length=1, max_length=128),
                 _key: Any = Depends(require("analyst"))) -> Any:
    """The decision an event was answered with."""
    d = request.app.state.engine.decision(event_id)
    if d is None:
        raise NotFound(f"no decision for event {event_id!r}", field="event_id", value=event_id)
    return d
