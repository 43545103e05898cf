"""``GET /v1/cases`` and ``POST /v1/cases/{case_id}/resolve``: the review queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from shopguard.api.deps import ApiKey, require
from shopguard.api.schemas import CaseOut, CasesOut, ErrorOut, ResolveIn, RiskLevel
from shopguard.decision.cases import CaseQueue

router = APIRouter(tags=["cases"])
_ERR = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}


@router.get("/v1/cases", response_model=CasesOut, responses=_ERR)
def list_cases(
    request: Request,
    status: str | None = Query(None, pattern="^(open|resolved)$"),
    scenario: str | None = Query(None, max_length=64),
    risk_level: RiskLevel | None = Query(None),
    limit: int = Query(100, ge=1, le=1_000),
    offset: int = Query(0, ge=0, le=1_000_000),
    _key: Any = Depends(require("analyst")),
) -> Any:
    """Cases, newest first, filtered by status, scenario and risk level."""
    request.app.state.engine.flush()  # read your writes: journalled cases first go into the store
    q = CaseQueue(request.app.state.store)
    return {"cases": q.list(status=status, scenario=scenario, risk_level=risk_level, limit=limit, offset=offset)}


@router.post("/v1/cases/{case_id}/resolve", response_model=CaseOut, responses=_ERR)
def resolve_case(body: ResolveIn, request: Request, case_id: str = Path(min_length=1, max_length=200),
                 key: ApiKey = Depends(require("analyst"))) -> Any:
    """Close a case with a label; the label is stored for the case's event (``source='analyst'``)."""
    request.app.state.engine.flush()
    q = CaseQueue(request.app.state.store)
    case = q.resolve(case_id, label=body.label, scenario=body.scenario, note=body.note,
                     resolved_by=f"key:{key.key_id}")
    request.app.state.engine.learn_labels([{"entity_kind": "event", "entity_id": case["event_id"],
                                            "label": body.label, "labeled_at": case["resolved_at"]}])
    return case
