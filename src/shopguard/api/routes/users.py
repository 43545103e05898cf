"""``GET /v1/users/{user_id}/timeline``: what a user did, how each event was decided, what is known;
``DELETE /v1/users/{user_id}``: erase the user (admin, audited)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from shopguard.api.deps import require
from shopguard.api.schemas import ErasureOut, ErrorOut, TimelineOut
from shopguard.errors import NotFound

router = APIRouter(tags=["users"])
log = logging.getLogger("shopguard.service")


@router.get("/v1/users/{user_id}/timeline", response_model=TimelineOut,
            responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})
def timeline(request: Request, user_id: str = Path(min_length=1, max_length=128),
             limit: int = Query(100, ge=1, le=1_000), _key: Any = Depends(require("analyst"))) -> Any:
    """The user's latest events (newest first) with their decisions, labels, and linked accounts."""
    store = request.app.state.store
    request.app.state.engine.flush()  # read your writes: journalled events first go into the store
    ev = store.query(
        "SELECT e.*, d.action, d.risk_level, d.score, d.rule_hits, d.model_version FROM events e "
        "LEFT JOIN decisions d USING (event_id) WHERE e.user_id = ? ORDER BY e.ts DESC, e.event_id LIMIT ?",
        [user_id, limit],
    )
    events = []
    for row in ev.iter_rows(named=True):
        r = {k: v for k, v in row.items() if v is not None and k != "ingested_at"}
        for k in ("attrs", "rule_hits"):
            if isinstance(r.get(k), str):
                try:
                    r[k] = json.loads(r[k])
                except json.JSONDecodeError:
                    pass
        events.append(r)
    ids = [e["event_id"] for e in events]
    labels = store.query(
        "SELECT * FROM labels WHERE (entity_kind = 'user' AND entity_id = ?) "
        + (f"OR (entity_kind = 'event' AND entity_id IN ({', '.join('?' * len(ids))}))" if ids else "")
        + " ORDER BY labeled_at",
        [user_id, *ids],
    )
    return {"user_id": user_id, "events": events, "labels": list(labels.iter_rows(named=True)),
            "linked_accounts": _linked(request.app.state.engine, user_id)}


@router.delete("/v1/users/{user_id}", response_model=ErasureOut,
               responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}})
def erase(request: Request, user_id: str = Path(min_length=1, max_length=128),
          key: Any = Depends(require("admin"))) -> Any:
    """Erase a user: their events, labels, decisions, cases and journalled events are deleted, the service
    forgets them (online features rebuilt, cached histories dropped), and a tombstone (a keyed hash of the
    id) keeps their later events out of the store. Audited with the calling key's id; repeating it is
    harmless (``already_erased``). 404 when the store holds nothing of the user. Trained models keep what
    they learnt until retrained (docs/privacy.md)."""
    res = request.app.state.engine.erase_user(user_id, by=key.key_id)
    if not res.found:
        raise NotFound(f"no user {user_id!r} in the store: nothing erased", field="user_id", value=user_id)
    return {"user_id": user_id, "tombstone_id": res.tombstone_id, "already_erased": res.already_erased,
            "removed": res.removed, "erased_at": res.erased_at}


def _linked(engine: Any, user_id: str) -> list[Any]:
    """Accounts linked to this one by shared devices, cards, IPs or addresses (live graph, when present)."""
    try:
        return list(engine.linked_accounts(user_id))
    except Exception as exc:  # the timeline still answers without the graph
        log.warning("linked_accounts failed for %s: %s", user_id, exc)
        return []
