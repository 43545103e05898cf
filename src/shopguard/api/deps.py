"""Shared dependencies of the routes: API keys with scopes (stored hashed), rate limits, the engine.

A key looks like ``sg_<key id>_<secret>``. Only ``sha256(secret)`` is stored (keys are 256-bit random
values, so a slow password hash adds nothing); the id finds the row and the hash is compared in
constant time. Scopes: ``ingest`` (send events), ``analyst`` (read decisions, timelines, cases; send
labels; resolve cases), ``admin`` (everything, plus keys and model reloads).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from shopguard.errors import Forbidden, NotFound, RateLimited, Unauthorized, ValidationFailed
from shopguard.store import EventStore

log = logging.getLogger("shopguard.service")

SCOPES: tuple[str, ...] = ("ingest", "analyst", "admin")
KEY_PREFIX = "sg_"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    scopes: frozenset[str]
    name: str = ""

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> list[str]:
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    out = sorted({s.strip() for s in items if s.strip()})
    bad = [s for s in out if s not in SCOPES]
    if not out or bad:
        raise ValidationFailed(f"scope must be one or more of {', '.join(SCOPES)} (got {scopes!r})", field="scope",
                               value=scopes)
    return out


def create_key(store: EventStore, scopes: str | list[str], name: str = "") -> tuple[str, ApiKey]:
    """Create a key; returns the full key (shown once, never stored) and its record."""
    sc = parse_scopes(scopes)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store.execute("INSERT INTO api_keys (key_id, key_hash, scopes, name, created_at) VALUES (?, ?, ?, ?, ?)",
                  [key_id, _hash(secret), ",".join(sc), name, datetime.now(UTC).replace(tzinfo=None)])
    return f"{KEY_PREFIX}{key_id}_{secret}", ApiKey(key_id, frozenset(sc), name)


def list_keys(store: EventStore) -> list[dict[str, Any]]:
    df = store.query("SELECT key_id, scopes, name, created_at, revoked_at FROM api_keys ORDER BY created_at")
    return list(df.iter_rows(named=True))


def revoke_key(store: EventStore, key_id: str, *, by: str = "cli") -> datetime:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time) and audit it; returns when."""
    rows = store.query("SELECT revoked_at FROM api_keys WHERE key_id = ?", [key_id])
    if rows.height == 0:
        raise NotFound(f"no API key {key_id!r}", field="key_id", value=key_id)
    prior = rows["revoked_at"][0]
    if prior is not None:
        return prior  # type: ignore[no-any-return]
    now = datetime.now(UTC).replace(tzinfo=None)
    store.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", [now, key_id])
    audit(store, "key_revoked", key_id, by=by)
    return now


AUDIT_DDL = ("CREATE TABLE IF NOT EXISTS key_audit (audited_at TIMESTAMP NOT NULL, action VARCHAR NOT NULL, "
             "key_id VARCHAR NOT NULL, by_key VARCHAR, detail VARCHAR)")


def audit(store: EventStore, action: str, key_id: str, *, by: str, detail: str = "") -> None:
    """Append one line to the store's key audit trail (``key_audit``: who did what to which key, when)."""
    store.execute(AUDIT_DDL)
    store.execute("INSERT INTO key_audit VALUES (?, ?, ?, ?, ?)",
                  [datetime.now(UTC).replace(tzinfo=None), action, key_id, by, detail])
    log.warning("audit: %s %s by %s%s", action, key_id, by, f" ({detail})" if detail else "")


class KeyRing:
    """Verifies bearer keys from an in-memory copy of the key table (hashes only), kept fresh off the
    request path.

    ``refresh()`` (the service's watcher calls it every second) reloads every live key in one query, so
    verifying a request is a dict lookup and one sha256: never a DuckDB query on the event loop, even for
    a flood of made-up keys (an id missing from a fresh copy is refused from memory). Keys created through
    the service are added at once (``add``). Without a fresh copy (no watcher, or it stalled for ``ttl``
    seconds) a key id is looked up in the store and the answer cached for ``ttl`` seconds.
    """

    def __init__(self, store: EventStore, *, ttl: float = 5.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, ApiKey | None, str]] = {}
        self._refreshed = float("-inf")
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Reload every live key (one query); returns how many there are."""
        now = time.monotonic()
        rows = self.store.query("SELECT key_id, key_hash, scopes, name FROM api_keys WHERE revoked_at IS NULL")
        fresh: dict[str, tuple[float, ApiKey | None, str]] = {
            r["key_id"]: (now, ApiKey(r["key_id"], frozenset(r["scopes"].split(",")), r["name"]), r["key_hash"])
            for r in rows.iter_rows(named=True)
        }
        with self._lock:
            self._cache = fresh
            self._refreshed = now
        return len(fresh)

    def drop(self, key_id: str) -> None:
        """Refuse a key from now on (``POST /v1/keys/{id}/revoke``), before the next refresh."""
        with self._lock:
            self._cache[key_id] = (time.monotonic(), None, "")

    def add(self, full_key: str, record: ApiKey) -> None:
        """Make a key this process just created usable at once (``POST /v1/keys``)."""
        digest = _hash(full_key[len(KEY_PREFIX):].partition("_")[2])
        with self._lock:
            self._cache[record.key_id] = (time.monotonic(), record, digest)

    def _lookup(self, key_id: str, now: float) -> tuple[float, ApiKey | None, str]:
        rows = self.store.query(
            "SELECT key_hash, scopes, name FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", [key_id]
        )
        if rows.height == 0:
            entry: tuple[float, ApiKey | None, str] = (now, None, "")
        else:
            r = rows.row(0, named=True)
            entry = (now, ApiKey(key_id, frozenset(r["scopes"].split(",")), r["name"]), r["key_hash"])
        with self._lock:
            self._cache[key_id] = entry
        return entry

    def verify(self, header: str | None) -> ApiKey:
        if not header:
            raise Unauthorized("missing Authorization header: send 'Authorization: Bearer <key>'",
                               field="Authorization")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <key>'", field="Authorization")
        token = token.strip()
        if not token.startswith(KEY_PREFIX) or token.count("_") < 2:
            raise Unauthorized("malformed API key", field="Authorization")
        key_id, _, secret = token[len(KEY_PREFIX):].partition("_")
        now = time.monotonic()
        cached = self._cache.get(key_id)
        fresh_table = now - self._refreshed <= self.ttl
        if (cached is None and not fresh_table) or (cached is not None and now - cached[0] > self.ttl):
            cached = self._lookup(key_id, now)
        if cached is None:
            raise Unauthorized("unknown or revoked API key", field="Authorization")
        _, record, digest = cached
        if record is None or not hmac.compare_digest(digest, _hash(secret)):
            raise Unauthorized("unknown or revoked API key", field="Authorization")
        return record


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, cost: float = 1.0) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[key_id] = (tokens, now)
                wait = (cost - tokens) / self.rate
                raise RateLimited(f"rate limit of {self.rate:g} requests/s exceeded: retry in {wait:.2f} s",
                                  field="Authorization", value=round(wait, 3))
            self._buckets[key_id] = (tokens - cost, now)


ANONYMOUS = ApiKey("anonymous", frozenset({"admin"}), "auth disabled")


def check_key(state: Any, header: str | None, scope: str) -> ApiKey:
    """The request's key, which must carry ``scope`` and be within its rate limit (raises otherwise)."""
    if not state.settings.auth:
        return ANONYMOUS
    key: ApiKey = state.keys.verify(header)
    if not key.allows(scope):
        raise Forbidden(f"this key lacks the '{scope}' scope (has: {', '.join(sorted(key.scopes))})",
                        field="scope", value=scope)
    state.limiter.check(key.key_id)
    return key


def require(scope: str) -> Any:
    """A FastAPI dependency: the request's key must carry ``scope`` (admin carries every scope)."""

    async def dep(request: Request) -> ApiKey:
        # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread (a thread hop per
        # request); this one only reads memory.
        return check_key(request.app.state, request.headers.get("authorization"), scope)

    dep.__name__ = f"require_{scope}"
    return dep


def engine(request: Request) -> Any:
    return request.app.state.engine


def store(request: Request) -> EventStore:
    return request.app.state.store  # type: ignore[no-any-return]
