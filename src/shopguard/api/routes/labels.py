"""``POST /v1/labels``: analyst or chargeback feedback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request

from shopguard.api.deps import require
from shopguard.api.schemas import ErrorOut, LabelBatchIn, LabelsOut

router = APIRouter(tags=["labels"])


@router.post("/v1/labels", response_model=LabelsOut,
             responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def post_labels(body: LabelBatchIn, request: Request, _key: Any = Depends(require("analyst"))) -> Any:
    """Store labels (a later label for the same entity and scenario replaces the earlier one).

    ``labeled_at`` is when the label became known (default: now): features and evaluation only use
    labels known before the moment they look at.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for lab in body.labels:
        when = lab.labeled_at or now
        if when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
        rows.append({"entity_kind": lab.entity_kind, "entity_id": lab.entity_id, "label": lab.label,
                     "scenario": lab.scenario, "labeled_at": when, "source": lab.source})
    erased = getattr(request.app.state.engine, "erased", None)
    if erased is not None:  # a label naming an erased user would bring their id back: left out
        rows = [r for r in rows if not (r["entity_kind"] == "user" and r["entity_id"] in erased)]
    if not rows:
        return {"stored": 0}
    n = request.app.state.store.append_labels(rows, replace=True)
    request.app.state.engine.learn_labels(rows)
    return {"stored": n}
