"""Admin routes: API keys, model and rule status and reloads (the store is owned by the service, so
keys are created here while it runs; ``shopguard keys create`` works when it does not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from shopguard.api.deps import audit, create_key, require, revoke_key
from shopguard.api.schemas import (
    ErrorOut,
    KeyCreatedOut,
    KeyCreateIn,
    KeyRevokedOut,
    ModelStatusOut,
    RulesStatusOut,
)

router = APIRouter(tags=["admin"])
_ERR = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut}}


@router.post("/v1/keys", response_model=KeyCreatedOut, status_code=201, responses=_ERR)
def new_key(body: KeyCreateIn, request: Request, _key: Any = Depends(require("admin"))) -> Any:
    """Create an API key; the answer is the only time the full key is shown."""
    key, rec = create_key(request.app.state.store, list(body.scopes), body.name)
    request.app.state.keys.add(key, rec)  # usable at once, not only after the next refresh
    audit(request.app.state.store, "key_created", rec.key_id, by=_key.key_id, detail=",".join(sorted(rec.scopes)))
    return {"key": key, "key_id": rec.key_id, "scopes": sorted(rec.scopes)}


@router.post("/v1/keys/{key_id}/revoke", response_model=KeyRevokedOut, responses={**_ERR, 404: {"model": ErrorOut}})
def revoke(key_id: str, request: Request, key: Any = Depends(require("admin"))) -> Any:
    """Revoke an API key: refused by this service at once (and by any other reading the store within a
    second); recorded in the store's key audit trail with the revoking key's id."""
    state = request.app.state
    when = revoke_key(state.store, key_id, by=key.key_id)
    state.keys.drop(key_id)
    return {"key_id": key_id, "revoked": True, "revoked_at": when}


def _model_status(request: Request) -> dict[str, Any]:
    slot = request.app.state.engine.model
    return {"version": slot.version, "source": None if slot.source is None else str(slot.source),
            "last_error": slot.last_error, "swaps": slot.swaps}


@router.get("/v1/models/current", response_model=ModelStatusOut, responses=_ERR)
def model_status(request: Request, _key: Any = Depends(require("analyst"))) -> Any:
    return _model_status(request)


@router.post("/v1/models/reload", response_model=ModelStatusOut, responses=_ERR)
def model_reload(request: Request, _key: Any = Depends(require("admin"))) -> Any:
    """Follow the registry's current version now (the service also does it by itself within a second)."""
    request.app.state.engine.model.reload()
    return _model_status(request)


def _text_model_status(request: Request) -> dict[str, Any]:
    slot = request.app.state.engine.text_slot
    if slot is None:
        return {"version": None, "source": None, "last_error": None, "swaps": 0}
    return {"version": slot.version, "source": str(slot.source), "last_error": slot.last_error, "swaps": slot.swaps}


@router.get("/v1/models/text", response_model=ModelStatusOut, responses=_ERR)
def text_model_status(request: Request, _key: Any = Depends(require("analyst"))) -> Any:
    """The review/chat text model in service (``--text-model``) and its last refused swap."""
    return _text_model_status(request)


@router.post("/v1/models/text/reload", response_model=ModelStatusOut, responses=_ERR)
def text_model_reload(request: Request, _key: Any = Depends(require("admin"))) -> Any:
    """Follow the text model registry's current version now (the service also does it within a second)."""
    slot = request.app.state.engine.text_slot
    if slot is not None:
        slot.reload()
    return _text_model_status(request)


def _rules_status(request: Request) -> dict[str, Any]:
    r = request.app.state.engine.rules
    rs = r.rules
    return {"path": None if r.path is None else str(r.path), "rules": len(rs), "mode": rs.mode,
            "last_error": r.last_error, "reloads": r.reloads}


@router.get("/v1/rules", response_model=RulesStatusOut, responses=_ERR)
def rules_status(request: Request, _key: Any = Depends(require("analyst"))) -> Any:
    return _rules_status(request)


@router.post("/v1/rules/reload", response_model=RulesStatusOut, responses=_ERR)
def rules_reload(request: Request, _key: Any = Depends(require("admin"))) -> Any:
    r = request.app.state.engine.rules
    if r.path is not None:
        r.reload()
    return _rules_status(request)
