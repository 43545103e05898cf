"""Erasure of one user (a data-subject request) and the tombstones that keep them erased.

``erase_user(store, user_id)`` deletes, in one transaction, the user's events, the labels of those events,
of their orders and of the user, the decisions of those events and the user's review cases, and records a
**tombstone**: a keyed hash of the user id (never the id itself) in ``tombstones``. Ingestion
(``events.ingest``) and the service (``POST /v1/events``) drop every later event of a tombstoned user and
count it as ``erased``, so re-ingesting the original file does not bring the user back.

The tombstone key is fixed by the first erasure and recorded in the store's settings (``erasure_key``):

- a pseudonymised store (``identifiers = pseudonymised:<key id>``) uses its pseudonym key (the key file
  beside the store, or ``SHOPGUARD_PSEUDONYM_KEY``): the key never lives in the store, so whoever reads
  the store alone cannot test a guessed user id against the tombstones;
- any other store uses a random salt kept in its ``settings`` table (``erasure_salt``): it hides the id
  from a casual reader, but whoever holds the store can confirm a guessed id (see docs/privacy.md).

Every erasure (and every repeat of one) is audited in ``erasure_audit``: when, who, which tombstone, and
how many rows of each table went.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from shopguard.errors import ConfigError, ValidationFailed
from shopguard.events.privacy import Pseudonymiser, key_file_for, pseudonymiser_for_store
from shopguard.store.duckdb import EventStore

log = logging.getLogger("shopguard.erasure")

KEY_SETTING = "erasure_key"  # "salt" or "pseudonym:<key id>"
SALT_SETTING = "erasure_salt"
IDENTIFIERS_SETTING = "identifiers"  # store.identifiers.SETTING (not imported: that module imports ours' peers)
MAX_USER_ID = 512


@dataclass
class ErasureResult:
    """What ``erase_user`` did; ``to_dict()`` is what ``shopguard erase --json`` prints and the API answers."""

    tombstone_id: str
    found: bool  # the store held something of the user (or an earlier erasure did)
    already_erased: bool  # a tombstone existed before this call
    removed: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    erased_at: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["erased_at"] = self.erased_at.isoformat() if self.erased_at else None
        return d


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _candidates(store: EventStore, given: Pseudonymiser | None) -> Iterable[Pseudonymiser]:
    if given is not None:
        yield given
    configured = Pseudonymiser.from_settings()
    if configured is not None:
        yield configured
    if store.path != ":memory:" and key_file_for(store.path).exists():
        p, _ = pseudonymiser_for_store(store.path)
        if p is not None:
            yield p


def _pseudonym_key(store: EventStore, key_id: str, given: Pseudonymiser | None) -> Pseudonymiser:
    for p in _candidates(store, given):
        if p.key_id == key_id:
            return p
    raise ConfigError(f"the store's tombstones are keyed with pseudonym key {key_id}, which is not available: "
                      f"restore {key_file_for(store.path)} or set SHOPGUARD_PSEUDONYM_KEY", field="pseudonym_key",
                      value=key_id)


def tombstone_hasher(store: EventStore, *, pseudonymiser: Pseudonymiser | None = None,
                     create: bool = False) -> Pseudonymiser | None:
    """The keyed hash of user ids for ``store``'s tombstones (None: the store has none and ``create`` is off).

    ``create`` fixes the key on a store that has none yet: its pseudonym key when its identifiers are
    pseudonymised, else a new random salt kept in its settings.
    """
    ref = store.setting(KEY_SETTING)
    if ref is None:
        if not create:
            return None
        mode = store.setting(IDENTIFIERS_SETTING) or ""
        if mode.startswith("pseudonymised:"):
            hasher = _pseudonym_key(store, mode.removeprefix("pseudonymised:"), pseudonymiser)
            store.set_setting(KEY_SETTING, f"pseudonym:{hasher.key_id}")
            return hasher
        if store.setting(SALT_SETTING) is None:
            store.set_setting(SALT_SETTING, secrets.token_urlsafe(32))
        store.set_setting(KEY_SETTING, "salt")
        ref = "salt"
    if ref == "salt":
        salt = store.setting(SALT_SETTING)
        if not salt:
            raise ConfigError("the store's erasure salt is missing from its settings: its tombstones can no longer "
                              "be matched", field=SALT_SETTING)
        return Pseudonymiser(salt)
    return _pseudonym_key(store, ref.removeprefix("pseudonym:"), pseudonymiser)


def tombstone_id(hasher: Pseudonymiser, user_id: str) -> str:
    """The tombstone of a user id: ``t_`` + 24 hex digits of HMAC-SHA256(key, "user_id:" + id)."""
    return "t_" + hasher.pseudonym("user_id:" + str(user_id).strip()).removeprefix("p_")


def _check_user_id(user_id: Any) -> str:
    uid = "" if user_id is None else str(user_id)
    if not uid.strip() or len(uid) > MAX_USER_ID:
        raise ValidationFailed(f"user: a user id of 1 to {MAX_USER_ID} characters is needed", field="user_id",
                               value=uid[:100])
    return uid


def _audit(store: EventStore, action: str, tomb: str, by: str, detail: dict[str, Any]) -> None:
    store.execute("INSERT INTO erasure_audit VALUES (?, ?, ?, ?, ?)",
                  [_now(), action, tomb, by, json.dumps(detail, sort_keys=True)])
    log.warning("audit: %s %s by %s", action, tomb, by)


# Deletions in dependency order; each reads the temporary tables of the user's events and orders.
_DELETES: tuple[tuple[str, str], ...] = (
    ("labels", "DELETE FROM labels WHERE (entity_kind IN ('event', 'review') AND entity_id IN "
               "(SELECT event_id FROM _erase_events)) OR (entity_kind = 'order' AND entity_id IN "
               "(SELECT order_id FROM _erase_orders)) OR (entity_kind = 'user' AND entity_id = ?)"),
    ("decisions", "DELETE FROM decisions WHERE event_id IN (SELECT event_id FROM _erase_events)"),
    ("cases", "DELETE FROM cases WHERE user_id = ? OR event_id IN (SELECT event_id FROM _erase_events)"),
    ("events", "DELETE FROM events WHERE user_id = ?"),
)


def erase_user(store: EventStore, user_id: str, *, by: str = "cli",
               pseudonymiser: Pseudonymiser | None = None) -> ErasureResult:
    """Delete everything of ``user_id`` from the store and tombstone them (idempotent).

    A user the store never held (no events, labels, cases, and no tombstone) is left alone: ``found`` is
    False and nothing is recorded. Erasing an erased user deletes anything of theirs that arrived since
    (normally nothing) and is audited as a repeat.
    """
    uid = _check_user_id(user_id)
    existing = store.setting(KEY_SETTING)
    hasher = tombstone_hasher(store, pseudonymiser=pseudonymiser, create=existing is None and _holds(store, uid))
    if hasher is None:  # no tombstone key yet and nothing to erase: an unknown user
        return ErasureResult(tombstone_id="", found=False, already_erased=False)
    tomb = tombstone_id(hasher, uid)
    removed: dict[str, int] = {}
    now = _now()
    with store._lock:
        before = _first_row(store, "SELECT count(*) FROM tombstones WHERE tombstone_id = ?", [tomb])
        already = bool(before and before[0])
        store.con.execute("BEGIN TRANSACTION")
        try:
            store.con.execute("CREATE OR REPLACE TEMP TABLE _erase_events AS SELECT event_id FROM events "
                              "WHERE user_id = ?", [uid])
            # Orders of the user's events that no other user's event refers to.
            store.con.execute("CREATE OR REPLACE TEMP TABLE _erase_orders AS SELECT DISTINCT order_id FROM events "
                              "WHERE user_id = ? AND order_id IS NOT NULL EXCEPT SELECT order_id FROM events "
                              "WHERE user_id IS DISTINCT FROM ? AND order_id IS NOT NULL", [uid, uid])
            for table, sql in _DELETES:
                params = [uid] * sql.count("?")
                n = _first_row(store, f"SELECT count(*) FROM {table} WHERE " + sql.split(" WHERE ", 1)[1], params)
                store.con.execute(sql, params)
                removed[table] = int(n[0]) if n else 0
            found = already or sum(removed.values()) > 0
            if found and not already:
                store.con.execute("INSERT INTO tombstones VALUES (?, ?, ?)", [tomb, now, store.setting(KEY_SETTING)])
            store.con.execute("DROP TABLE IF EXISTS _erase_events")
            store.con.execute("DROP TABLE IF EXISTS _erase_orders")
            store.con.execute("COMMIT")
        except Exception:
            store.con.execute("ROLLBACK")
            raise
    if not found:
        return ErasureResult(tombstone_id="", found=False, already_erased=False)
    try:  # write the deletion into the store file and empty the write-ahead log, which held the rows
        store.execute("CHECKPOINT")
    except Exception as exc:  # e.g. another transaction open: DuckDB checkpoints later by itself
        log.info("checkpoint after an erasure deferred: %s", exc)
    _audit(store, "user_erased_again" if already else "user_erased", tomb, by, removed)
    return ErasureResult(tombstone_id=tomb, found=True, already_erased=already, removed=removed, erased_at=now)


def _holds(store: EventStore, uid: str) -> bool:
    row = _first_row(store, "SELECT (SELECT count(*) FROM events WHERE user_id = ?) + (SELECT count(*) FROM labels "
                            "WHERE entity_kind = 'user' AND entity_id = ?) + (SELECT count(*) FROM cases WHERE "
                            "user_id = ?)", [uid, uid, uid])
    return bool(row and row[0])


def _first_row(store: EventStore, sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    with store._lock:
        rows = store.con.execute(sql, params).fetchall()
    return rows[0] if rows else None


def tombstones(store: EventStore) -> set[str]:
    """Every tombstone id of the store (empty for a store from before migration 4)."""
    try:
        df = store.query("SELECT tombstone_id FROM tombstones")
    except Exception:  # a read-only store from before migration 4
        return set()
    return set(df["tombstone_id"].to_list())


class ErasedUsers:
    """Tells whether a user id is tombstoned: one keyed hash per distinct id, remembered.

    ``ErasedUsers.load(store)`` is None when the store has no tombstones (the common case: nothing to do).
    """

    def __init__(self, hasher: Pseudonymiser, ids: set[str]) -> None:
        self.hasher = hasher
        self.ids = ids
        self._seen: dict[str, bool] = {}  # ids known NOT to be erased (an erasure clears it)

    @classmethod
    def load(cls, store: EventStore, *, pseudonymiser: Pseudonymiser | None = None) -> ErasedUsers | None:
        ids = tombstones(store)
        if not ids:
            return None
        hasher = tombstone_hasher(store, pseudonymiser=pseudonymiser)
        return None if hasher is None else cls(hasher, ids)

    def add(self, tomb: str) -> None:
        self.ids.add(tomb)
        self._seen.clear()

    def discard(self, tomb: str) -> None:
        self.ids.discard(tomb)
        self._seen.clear()

    def __contains__(self, user_id: Any) -> bool:
        if user_id is None:
            return False
        uid = str(user_id)
        if uid in self._seen:
            return False
        if tombstone_id(self.hasher, uid) in self.ids:
            return True  # not remembered: no erased user's id is kept, even in memory
        if len(self._seen) > 1_000_000:
            self._seen.clear()
        self._seen[uid] = False
        return False

    def mask(self, users: pl.Series) -> pl.Series:
        """True where a frame's ``user_id`` is tombstoned (each distinct id hashed once)."""
        distinct = users.drop_nulls().unique().to_list()
        erased = [u for u in distinct if u in self]
        return users.is_in(erased).fill_null(False) if erased else pl.Series(users.name, [False] * len(users))


def compact_store(path: str | Path) -> tuple[int, int]:
    """Rewrite a closed store file into a fresh one (``COPY FROM DATABASE``) and swap it in; returns the
    sizes before and after.

    DuckDB marks deleted rows and reuses their blocks later, so an erased user's bytes can stay in the file
    until then; the rewritten file holds only live rows. Tables, keys, indexes and settings are kept. The
    store must not be open elsewhere (stop the service first).
    """
    import duckdb

    db = Path(path)
    tmp = db.with_name(db.name + ".compact")
    tmp.unlink(missing_ok=True)
    before = db.stat().st_size
    con = duckdb.connect(str(db))
    try:
        name = con.execute("SELECT current_database()").fetchall()[0][0]
        con.execute("ATTACH ? AS _compact", [str(tmp)])
        con.execute(f'COPY FROM DATABASE "{name}" TO _compact')
        con.execute("DETACH _compact")
        con.execute("CHECKPOINT")
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.chmod(tmp, 0o600)
    os.replace(tmp, db)
    Path(f"{tmp}.wal").unlink(missing_ok=True)
    return before, db.stat().st_size
