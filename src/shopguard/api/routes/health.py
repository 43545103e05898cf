"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can decide): no key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from shopguard.api.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(request: Request, response: Response) -> Any:
    """Ready when the store writer runs; problems (a refused model, a broken rule edit) are listed."""
    state = request.app.state
    engine = state.engine
    text_slot = getattr(engine, "text_slot", None)
    problems = [p for p in (engine.model.last_error, engine.rules.last_error, engine.features_error,
                            engine.writer.apply_error, text_slot.last_error if text_slot else None) if p]
    ready = bool(engine.ready and engine.writer.alive())
    if not ready:
        response.status_code = 503
    return {"ready": ready, "model_version": engine.model.version, "rules": len(engine.rules.rules),
            "problems": problems}
