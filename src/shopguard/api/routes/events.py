"""``POST /v1/events``: store, decide and answer one event or a batch."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from shopguard.api.deps import require
from shopguard.api.schemas import EVENTS_BODY, DecisionBatchOut, DecisionOut, ErrorOut
from shopguard.errors import ValidationFailed

router = APIRouter(tags=["events"])

_BODY_SCHEMA = EVENTS_BODY.json_schema(ref_template="#/components/schemas/{model}")
BODY_DEFS: dict[str, Any] = _BODY_SCHEMA.pop("$defs", {})


def split_body(data: Any, max_batch: int) -> tuple[list[Any], bool]:
    """(events, is_batch) from a JSON body: one event object, ``{"events": [...]}`` or a bare list."""
    if isinstance(data, list):
        items, batch = data, True
    elif isinstance(data, dict) and "events" in data:
        extra = sorted(set(data) - {"events"})
        if extra:
            raise ValidationFailed(f"a batch body holds only 'events' (unexpected {extra[0]!r})", field=extra[0])
        items, batch = data["events"], True
        if not isinstance(items, list):
            raise ValidationFailed(f"events must be a list, got {type(items).__name__}", field="events")
    elif isinstance(data, dict):
        items, batch = [data], False
    else:
        raise ValidationFailed(f"body must be an event object or {{'events': [...]}}, got {type(data).__name__}",
                               field="body")
    if batch and not items:
        raise ValidationFailed("events: the batch is empty", field="events")
    if len(items) > max_batch:
        raise ValidationFailed(f"events: at most {max_batch} per request (got {len(items)})", field="events",
                               value=len(items))
    return items, batch


def parse_json(body: bytes) -> Any:
    if not body:
        raise ValidationFailed("body is empty: send a JSON event or {'events': [...]}", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"body is not valid JSON: {exc}", field="body") from None


@router.post(
    "/v1/events",
    summary="Decide one event or a batch",
    response_model=DecisionOut | DecisionBatchOut,
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut},
               422: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}},
)
async def post_events(request: Request, _key: Any = Depends(require("ingest"))) -> Response:
    """Store each event (committed before the answer), update online features, score and apply rules.

    A repeated ``event_id`` is answered with its original decision and not counted again. A batch is
    validated whole: one bad event rejects it with 422 naming ``events[i].field``.
    """
    return Response(await decide_body(request.app.state, await request.body()), media_type="application/json")


async def decide_body(state: Any, body: bytes) -> bytes:
    """The JSON answer to a ``POST /v1/events`` body (raises ShopguardError subclasses for bad input).

    Shared by the FastAPI route (OpenAPI, docs) and the service's pure-ASGI fast path for this route
    (``api.app.EventsFastPath``), so both answer exactly alike."""
    items, batch = split_body(parse_json(body), state.settings.max_batch)
    prepared = state.engine.prepare(items, batch=batch)
    # Requests arriving together share one model pass and one journal fsync (api.coalesce).
    results, _commit = await state.coalescer.submit(prepared)
    # A new event's future resolves once its journal line is fsync-ed (or fails with 503): the answer
    # is never sent before the commit. A repeated id waits for the commit of its first sending.
    decisions = [await asyncio.wrap_future(r) if isinstance(r, cf.Future) else r for r in results]
    payload = {"decisions": decisions} if batch else decisions[0]
    return orjson.dumps(payload)
