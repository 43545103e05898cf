"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can decide): no key needed.

``/readyz`` lists problems (a refused model or rule edit, failing features, a store that does not
accept writes) by component only; callers with an analyst or admin key also get the details (file paths,
the refused condition, feature names), which are internals an anonymous caller must not see.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from shopguard.api.schemas import HealthOut, ReadyOut
from shopguard.errors import ShopguardError

router = APIRouter(tags=["health"])

# What an anonymous caller learns about each kind of problem.
PUBLIC_PROBLEMS = {
    "model": "model: the last model version was refused; the previous one keeps serving",
    "rules": "rules: the last rule file edit was refused; the previous rules keep serving",
    "features": "features: online features are unavailable",
    "store": "store: journalled events are not being written into the store",
    "text_model": "text model: the last text model version was refused; the previous one keeps serving",
}


@router.get("/healthz", response_model=HealthOut)
def healthz() -> Any:
    return {"status": "ok"}


def _detailed(request: Request) -> bool:
    """Whether the caller may see problem details (a valid analyst/admin key; auth off counts as local)."""
    state = request.app.state
    header = request.headers.get("authorization")
    if not state.settings.auth:
        return True
    if not header:
        return False
    try:
        key = state.keys.verify(header)
    except ShopguardError:
        return False
    return bool(key.allows("analyst"))


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(request: Request, response: Response) -> Any:
    """Ready when the store writer runs; problems (a refused model, a broken rule edit) are listed."""
    state = request.app.state
    engine = state.engine
    text_slot = getattr(engine, "text_slot", None)
    found = [(kind, p) for kind, p in (("model", engine.model.last_error), ("rules", engine.rules.last_error),
                                       ("features", engine.features_error), ("store", engine.writer.apply_error),
                                       ("text_model", text_slot.last_error if text_slot else None)) if p]
    detailed = _detailed(request)
    problems = [p if detailed else PUBLIC_PROBLEMS[kind] for kind, p in found]
    ready = bool(engine.ready and engine.writer.alive())
    if not ready:
        response.status_code = 503
    return {"ready": ready, "model_version": engine.model.version, "rules": len(engine.rules.rules),
            "problems": problems}
