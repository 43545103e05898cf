"""The FastAPI application: ``create_app(settings)`` wires the store, engine, auth, limits and routes.

The service owns its DuckDB store (DuckDB allows one writing process): run one process per store.
All writes go through the engine's single writer thread or the store's lock.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shopguard import __version__
from shopguard.api.coalesce import RequestCoalescer
from shopguard.api.deps import KeyRing, RateLimiter, check_key
from shopguard.api.metrics import ServiceMetrics
from shopguard.api.routes import admin, cases, decisions, events, health, labels, metrics, users
from shopguard.api.scoring import DecisionEngine, ModelSlot, TextModelSlot
from shopguard.api.settings import ServiceSettings
from shopguard.decision.cases import WebhookDispatcher
from shopguard.decision.rules import ReloadingRules
from shopguard.errors import ShopguardError
from shopguard.store import EventStore

log = logging.getLogger("shopguard.service")

GC_THRESHOLDS = (20_000, 20, 100)  # young generation, then collections before the older ones (serving)


def gc_sweep() -> None:
    """Collect the young generations, then freeze what survives (``ServiceSettings.gc_sweep_every_s``).

    Serving keeps adding long-lived state: per-user feature windows, graph links, idempotency entries. Many of
    these objects become tracked by the collector after they are created (a dict gets its first container
    value), so they join the young generation without moving the collector's counter. By the next automatic
    collection there can be 150,000 of them, and walking them held the GIL for 45 ms. Sweeping once a second
    walks one second's worth (1-2 ms), off the event loop's thread. Freezing the survivors keeps later
    collections from walking them again. As with the start-up ``gc.freeze``, frozen objects are still freed
    by reference counting; only a reference cycle among them is never collected. Garbage cycles are
    collected first, so only cycles still alive at a sweep are exposed to that.
    """
    gc.collect(1)
    gc.freeze()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, by header and while streaming (pure ASGI, cheap); a body
    that stops arriving for ``timeout`` seconds is answered 408 and its connection closed (a client holding
    hundreds of half-sent requests open must not hold the service's connections for ever)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if n > self.limit:
                    await self._too_large(send)
                    return
        seen = 0
        limit = self.limit
        timeout = self.timeout
        complete = False
        started = False

        async def limited() -> Message:
            nonlocal seen, complete
            if complete or timeout is None:
                return await receive()  # e.g. waiting for a disconnect while streaming: no deadline
            try:
                msg = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise _BodyTimeout() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
                if not msg.get("more_body", False):
                    complete = True
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, tracked_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)
        except _BodyTimeout:
            if not started:
                body = orjson.dumps({"error": "RequestTimeout", "message": f"the request body did not arrive within "
                                     f"{timeout:g} s", "field": "body"})
                await send({"type": "http.response.start", "status": 408,
                            "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

    async def _too_large(self, send: Send) -> None:
        body = orjson.dumps({"error": "PayloadTooLarge", "message": f"request body over {self.limit} bytes",
                             "field": "body"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


def _error_headers(exc: ShopguardError) -> dict[str, str] | None:
    if exc.status_code == 429:
        return {"Retry-After": str(max(1, int(float(exc.value or 1))))}
    if exc.status_code == 401:
        return {"WWW-Authenticate": "Bearer"}
    return None


class EventsFastPath:
    """``POST /v1/events`` answered in pure ASGI: the same auth, body handling and answer as the FastAPI
    route (both call ``routes.events.decide_body``), without FastAPI's per-request dependency solving
    and routing, which cost about a third of a single-event request's CPU. Every other request, and
    the route's OpenAPI description, stay with FastAPI."""

    PATH = "/v1/events"

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        # The route object the router would put in the scope (the request histogram labels by its path).
        self.route = next((r for r in events.router.routes if getattr(r, "path", None) == self.PATH),
                          SimpleNamespace(path=self.PATH))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = self.api.state
        scope["route"] = self.route  # the request histogram's route label, as the router would set it
        headers = None
        try:
            auth = None
            for k, v in scope["headers"]:
                if k == b"authorization":
                    auth = v.decode("latin-1")
                    break
            check_key(state, auth, "ingest")
            chunks = []
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    break
            status, body = 200, await events.decide_body(state, b"".join(chunks))
        except (_TooLarge, _BodyTimeout):
            raise  # BodyLimit answers 413 / 408
        except ShopguardError as exc:
            state.metrics.error(type(exc).__name__)
            status, body, headers = exc.status_code, orjson.dumps(exc.to_dict()), _error_headers(exc)
        except Exception:  # never expected: counted and logged, a plain 500 without internals
            state.metrics.error("unexpected")
            log.exception("unexpected error on POST %s", self.PATH)
            status, body = 500, orjson.dumps({"error": "InternalError",
                                              "message": "unexpected error; see the service log"})
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        for k, v in (headers or {}).items():
            raw.append((k.lower().encode(), v.encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class RequestTiming:
    """The request latency histogram by route, method and status.

    Pure ASGI on purpose: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs every request
    through an extra task and a response stream, which cost more than the rest of a single-event request.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def timed_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            # The router stores the matched route in the scope; unmatched paths share one label.
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(path, scope["method"], status, time.perf_counter() - t0)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _one_thread_per_decision() -> None:
    """Single-row scoring is fastest on one thread: OpenMP teams (LightGBM) cost more than they save."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # threadpoolctl ships with scikit-learn; without it we only lose speed
        pass


async def watch_loop_lag(metrics: ServiceMetrics, every: float = 0.01) -> None:
    """Record how late a timer fires on the serving loop (``shopguard_event_loop_lag_seconds``): the
    stall meter. One wake-up per ``every`` seconds costs microseconds."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(every)
        metrics.observe_loop_lag(max(0.0, time.perf_counter() - t - every))


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The decision service for ``settings`` (store, model, rules, limits)."""
    settings = settings or ServiceSettings()
    metrics_ = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _one_thread_per_decision()
        store = EventStore(settings.db)
        try:
            if settings.duckdb_threads:
                # DuckDB runs a query on every core by default: the once-a-second journal apply would then
                # take both cores from the event loop's thread for tens of ms (the main cause of p99 stalls).
                store.execute(f"SET threads TO {int(settings.duckdb_threads)}")
            from shopguard.store.identifiers import store_pseudonymiser

            # Safe by default: without a configured key, the key file beside the store (created once); a store
            # whose history keeps raw identifiers stays raw, so new events link to it.
            pseudo, note = store_pseudonymiser(store, key=settings.pseudonym_key,
                                               allow_raw=settings.allow_raw_identifiers)
            if note:
                log.warning(note)
            rules = ReloadingRules(settings.rules, check_every=settings.watch_every_s, pseudonymiser=pseudo)
            slot = ModelSlot(settings.model, on_change=lambda m: metrics_.set_model(None if m is None else m.version),
                             fast_scoring=settings.fast_scoring)
            slot.load_initial()
            if slot.model is None:
                metrics_.set_model(None)
            hooks = WebhookDispatcher(settings.webhooks, on_result=metrics_.webhook_result)
            sequence = None
            if settings.sequence_model is not None:
                from shopguard.models.sequence.export import IncrementalScorer

                sequence = IncrementalScorer(settings.sequence_model)
            text = None
            text_slot = None
            if settings.text_model is not None:
                # A folder, or a registry root whose current version is followed (hot swap).
                text_slot = TextModelSlot(settings.text_model)
                text = text_slot.load_initial()
            engine = DecisionEngine(store, rules=rules, model=slot, pseudonymiser=pseudo,
                                    case_risk_level=settings.case_risk_level, webhooks=hooks,
                                    writer_max_batch=settings.writer_max_batch, metrics=metrics_,
                                    journal=Path(f"{settings.db}.journal") if settings.journal else None,
                                    journal_fsync=settings.journal_fsync,
                                    journal_apply_every_s=settings.journal_apply_every_s,
                                    sequence=sequence, text=text,
                                    text_min_score=settings.text_min_score,
                                    max_future_s=settings.max_clock_skew_s)
            if text_slot is not None:
                text_slot.bind(engine.text)
            engine.text_slot = text_slot
            engine.start(rebuild_features=settings.rebuild_features)
        except Exception:
            store.close()
            raise
        app.state.store = store
        app.state.engine = engine
        app.state.keys = KeyRing(store)
        app.state.keys.refresh()
        def decide_in_thread() -> bool:
            if settings.decide_in_thread is not None:
                return settings.decide_in_thread
            return engine.sequence is not None or getattr(engine.model.model, "fusion", None) is not None

        app.state.coalescer = RequestCoalescer(engine, max_events=settings.coalesce_max_events,
                                               in_thread=decide_in_thread)
        app.state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        stop = threading.Event()

        def watch() -> None:
            # Rule file and model registry are checked off the request path; swaps are one assignment.
            last_sweep = time.monotonic()
            while not stop.wait(min(settings.watch_every_s, settings.gc_sweep_every_s or settings.watch_every_s)):
                if settings.gc_freeze and settings.gc_sweep_every_s and \
                        time.monotonic() - last_sweep >= settings.gc_sweep_every_s:
                    last_sweep = time.monotonic()
                    gc_sweep()
                try:
                    rules.current()
                    slot.check()
                    if text_slot is not None:
                        text_slot.check()
                    app.state.keys.refresh()  # revocations land within a second; requests never query
                except Exception:  # the watcher must never die
                    log.exception("watcher failed")

        watcher = threading.Thread(target=watch, name="shopguard-watcher", daemon=True)
        watcher.start()
        thresholds = gc.get_threshold()
        if settings.gc_freeze:
            # The online state is long-lived: collect once, then freeze it so later collections only walk
            # objects created while serving (gc.freeze is the documented tool for exactly this).
            gc.collect()
            gc.freeze()
            # Serving allocates many short-lived containers per request: with the default 700-object
            # young generation, collections ran ~70 times a second at 500 events/s and promoted
            # request garbage into older generations whose collections paused the loop for 10-20 ms.
            gc.set_threshold(*GC_THRESHOLDS)
        switch = sys.getswitchinterval()
        if settings.gil_switch_interval_s is not None:
            # The commit thread needs the GIL for a few microseconds to answer; by default it may wait 5 ms
            # behind the event loop's thread, which alone would break a 10 ms p99.
            sys.setswitchinterval(settings.gil_switch_interval_s)
        lag = asyncio.get_running_loop().create_task(watch_loop_lag(metrics_))
        gc.callbacks.append(metrics_.gc_callback)
        try:
            yield
        finally:
            lag.cancel()
            if metrics_.gc_callback in gc.callbacks:
                gc.callbacks.remove(metrics_.gc_callback)
            sys.setswitchinterval(switch)
            if settings.gc_freeze:
                gc.set_threshold(*thresholds)
                gc.unfreeze()
            stop.set()
            watcher.join(5)
            app.state.coalescer.close()
            engine.stop()
            store.close()

    otel = settings.opentelemetry
    app = FastAPI(title="shopguard decision service", version=__version__, lifespan=lifespan,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  description="Send every shop event; get an explained decision back, stored before the answer.")
    app.state.settings = settings
    app.state.metrics = metrics_
    for r in (events, decisions, labels, users, cases, health, metrics, admin):
        app.include_router(r.router)

    @app.exception_handler(ShopguardError)
    async def _shopguard_error(request: Request, exc: ShopguardError) -> Response:
        metrics_.error(type(exc).__name__)
        return _json(exc.status_code, exc.to_dict(), _error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        metrics_.error("RequestValidationError")
        err = exc.errors()[0] if exc.errors() else {}
        if err.get("type") == "json_invalid":  # the body is not JSON: name the body, as POST /v1/events does
            loc = err.get("loc", ())
            at = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
            return _json(422, {"error": "ValidationFailed", "message": f"body is not valid JSON{at}: "
                               f"{err.get('ctx', {}).get('error', err.get('msg', 'invalid'))}"[:300], "field": "body"})
        fld = _field_of(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        value = err.get("input")
        body = {"error": "ValidationFailed", "message": f"{fld}: {msg} (got {value!r})"[:500], "field": fld}
        if value is not None:
            body["value"] = repr(value)[:200]
        return _json(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body": answered like every other bad body (422 naming the field).
            metrics_.error("RequestValidationError")
            return _json(422, {"error": "ValidationFailed", "message": f"body is not valid JSON: {exc.detail}",
                               "field": "body"})
        return _json(exc.status_code, {"error": "HTTPError", "message": str(exc.detail)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Never expected: counted and logged; the client gets a plain 500 without internals.
        metrics_.error("unexpected")
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json(500, {"error": "InternalError", "message": "unexpected error; see the service log"})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, sch in events.BODY_DEFS.items():
            comps.setdefault(name, sch)
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, ops in schema.get("paths", {}).items():
            if path in ("/healthz", "/readyz"):
                continue
            for op in ops.values():
                op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    if settings.events_fast_path:
        app.add_middleware(EventsFastPath, api=app)  # type: ignore[arg-type]
    app.add_middleware(RequestTiming, metrics=metrics_)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,  # type: ignore[arg-type]
                       timeout=settings.body_timeout_s)
    return app
