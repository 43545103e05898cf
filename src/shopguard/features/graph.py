"""Link analysis: accounts tied together by what they share, and point-in-time ring features.

Brushing rings, coupon-abuse multi-accounts and collusive reviewers give themselves away by what they
share: a device, an IP address used at about the same time, a shipping address, a payment instrument,
or the same item reviewed / bought within minutes. Two users sharing any of these are *linked*; the
connected components of that graph are *rings*.

``RingIndex`` keeps the graph incrementally (union-find with path halving and union by size), so the
service can learn one event at a time and always answer ring questions about the present; the batch
functions replay the store through the same index in time order so features are point-in-time by
construction: an event's features come from the state *before* it is learned (score, then learn, as in
River), and fraud labels count only once ``labeled_at`` is strictly before the event's time.

``components_batch`` is an independent implementation (SQL over the store + scipy connected
components) used to check that the incremental index finds the same rings.

``aggregate_neighbours`` adds GADBench-style neighbour aggregates (mean / max of neighbours' features,
and own minus neighbour mean) for a static graph, e.g. the Amazon user graph in ``benchmarks/graph.py``.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from shopguard.errors import DataError, ValidationFailed

if TYPE_CHECKING:
    from shopguard.store import EventStore

# What can link two accounts, and the event column it comes from.
LINK_FIELDS: dict[str, str] = {
    "device": "device_id",
    "ip": "ip",
    "address": "address",
    "instrument": "payment_instrument",
    "item": "item_id",
}
LINK_KINDS: tuple[str, ...] = tuple(LINK_FIELDS)
# Kinds that link whenever two accounts ever share the value; the others need it within a time window.
STATIC_KINDS: tuple[str, ...] = ("device", "address", "instrument")

# Per-user behaviour counters whose neighbour mean / max become features (GADBench's RF-Graph idea).
USER_COUNTERS: tuple[str, ...] = ("events", "orders", "failed_pays", "refunds", "reviews", "coupons")

RING_FEATURES: tuple[str, ...] = (
    "ring_size",
    "ring_linked_accounts",
    "ring_device_accounts",
    "ring_ip_accounts",
    "ring_address_accounts",
    "ring_instrument_accounts",
    "ring_known_fraud",
    "ring_fraud_share",
    "ring_linked_fraud_share",
    *(f"ring_nbr_mean_{c}" for c in USER_COUNTERS),
    *(f"ring_nbr_max_{c}" for c in USER_COUNTERS),
)


class GraphConfig(BaseModel):
    """How accounts get linked. Defaults are a priori choices, not tuned on any labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip_window: timedelta = Field(timedelta(hours=24), description="Same IP within this time links two users.")
    item_window: timedelta = Field(
        timedelta(minutes=30), description="Same item reviewed / ordered within this time links two users."
    )
    item_event_types: tuple[str, ...] = Field(
        ("review", "order", "coupon_use"), description="Event types whose item_id links co-acting users."
    )
    max_entity_users: int = Field(
        25,
        ge=2,
        description="Only the first N accounts of one device / IP / address / card / item link to each other: "
        "a shared office IP or a best-selling item would otherwise glue the whole shop into one ring.",
    )

    def window(self, kind: str) -> timedelta | None:
        if kind == "ip":
            return self.ip_window
        if kind == "item":
            return self.item_window
        return None


# -- the incremental index ------------------------------------------------------------------------------
@dataclass
class _Entity:
    """One shared value (a device, an IP...): first-use rank of each account, and when the linkable
    ones (the first ``max_entity_users``) last used it."""

    rank: dict[str, int] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)
    last_seen: dict[str, datetime] = field(default_factory=dict)


class RingIndex:
    """Incremental account-link graph with union-find rings and point-in-time label counts.

    >>> idx = RingIndex()
    >>> _ = idx.add_event({"ts": "2024-01-01T10:00:00", "type": "login", "user_id": "a", "device_id": "d1"})
    >>> _ = idx.add_event({"ts": "2024-01-01T11:00:00", "type": "login", "user_id": "b", "device_id": "d1"})
    >>> idx.ring_of("a") == idx.ring_of("b"), idx.ring_size("a")
    (True, 2)
    """

    def __init__(self, config: GraphConfig | None = None, *, track_distinct: Iterable[str] = ()) -> None:
        self.config = config or GraphConfig()
        # Link kinds whose distinct values are kept per ring (``ring_values``), merged small-into-large.
        self._track = tuple(k for k in LINK_KINDS if k in set(track_distinct))
        self._ring_values: dict[str, dict[str, set[str]]] = {}
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}
        self._fraud: dict[str, int] = {}  # per root: known fraudsters in the ring
        self._known_fraud: set[str] = set()
        self._neighbours: dict[str, dict[str, set[str]]] = defaultdict(dict)  # user -> nbr -> link kinds
        self._evidence: dict[tuple[str, str], dict[str, str]] = {}  # (u, v) sorted -> kind -> shared value
        self._entities: dict[str, dict[str, _Entity]] = {k: {} for k in LINK_KINDS}
        self._counters: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(USER_COUNTERS, 0.0))
        self._last_ts: datetime | None = None
        self.events_seen = 0
        self._plan = [(kind, column, self.config.window(kind)) for kind, column in LINK_FIELDS.items()]
        self._item_types = frozenset(self.config.item_event_types)
        # The fixed per-user counters behind features_for's ring_nbr_* columns; RingFeatures keeps its own.
        self.count_activity = True

    # -- union-find --------------------------------------------------------------------------------------
    def _add_user(self, u: str) -> None:
        if u not in self._parent:
            self._parent[u] = u
            self._size[u] = 1
            self._fraud[u] = 1 if u in self._known_fraud else 0
            if self._track:
                self._ring_values[u] = {k: set() for k in self._track}

    def _find(self, u: str) -> str:
        parent = self._parent
        while parent[u] != u:
            parent[u] = parent[parent[u]]  # path halving keeps trees flat without recursion
            u = parent[u]
        return u

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size.pop(rb)
        self._fraud[ra] += self._fraud.pop(rb)
        if self._track:
            into, other = self._ring_values[ra], self._ring_values.pop(rb)
            for k in self._track:
                a, b = into[k], other[k]
                if len(a) < len(b):
                    a, b = b, a  # small-into-large keeps merging O(n log n) over the whole replay
                a |= b
                into[k] = a

    # -- learning ----------------------------------------------------------------------------------------
    def add_label(self, user_id: str, label: int = 1) -> None:
        """Record that ``user_id`` is a known fraudster (label 1) or cleared (label 0) from now on."""
        user_id = str(user_id)
        was = user_id in self._known_fraud
        now = bool(label)
        if was == now:
            return
        if now:
            self._known_fraud.add(user_id)
        else:
            self._known_fraud.discard(user_id)
        if user_id in self._parent:
            self._fraud[self._find(user_id)] += 1 if now else -1

    def add_event(self, record: Mapping[str, Any], *, ts: datetime | None = None) -> list[tuple[str, str, str, str]]:
        """Learn one event; returns the new links it made as ``(user, other_user, kind, shared_value)``.

        Events must arrive in time order (as the service and the batch replay deliver them); an event
        older than the last one is refused, because windowed IP / item links would silently differ.
        ``ts`` (naive UTC) overrides the record's own time, for callers that already parsed it.
        """
        user = record.get("user_id")
        if user in (None, ""):
            return []  # shipments and price changes carry no account
        user = str(user)
        ts = _as_ts(record.get("ts")) if ts is None else ts
        if self._last_ts is not None and ts < self._last_ts:
            raise ValidationFailed(
                f"ts: events must be added in time order ({ts.isoformat()} < {self._last_ts.isoformat()})",
                field="ts",
                value=ts.isoformat(),
            )
        self._last_ts = ts
        self.events_seen += 1
        self._add_user(user)
        if self.count_activity:
            self._count(user, record)
        new: list[tuple[str, str, str, str]] = []
        etype = record.get("type")
        cap = self.config.max_entity_users
        mine = self._neighbours.get(user)
        for kind, column, window in self._plan:
            value = record.get(column)
            if value is None or value == "":
                continue
            if kind == "item" and etype not in self._item_types:
                continue
            value = str(value)
            if kind in self._track:
                self._ring_values[self._find(user)][kind].add(value)
            ents = self._entities[kind]
            ent = ents.get(value)
            if ent is None:  # no eager _Entity() per event: setdefault would build one every time
                ent = ents[value] = _Entity()
            rank = ent.rank.get(user)
            first_time = rank is None
            if first_time:
                rank = ent.rank[user] = len(ent.rank) + 1
                if rank <= cap:
                    ent.first.append(user)
            if rank > cap:
                continue  # this account came after the hub cap: it does not link through this value
            ent.last_seen[user] = ts
            if window is None and not first_time:
                continue  # static links were all made the first time this account used the value
            for other in ent.first:
                if other == user:
                    continue
                if window is not None:
                    if mine is not None:
                        kinds = mine.get(other)
                        if kinds is not None and kind in kinds:
                            continue  # already linked this way: nothing to learn
                    if ts - ent.last_seen[other] > window:
                        continue
                if self._link(user, other, kind, value):
                    new.append((user, other, kind, value))
                    mine = self._neighbours.get(user)
        return new

    def _count(self, user: str, record: Mapping[str, Any]) -> None:
        c = self._counters[user]
        etype = record.get("type")
        c["events"] += 1
        if etype == "order":
            c["orders"] += 1
        elif etype == "pay" and record.get("status") == "failure":
            c["failed_pays"] += 1
        elif etype in ("refund", "return"):
            c["refunds"] += 1
        elif etype == "review":
            c["reviews"] += 1
        elif etype == "coupon_use":
            c["coupons"] += 1

    def _link(self, u: str, v: str, kind: str, value: str) -> bool:
        """Add the edge (or a new kind on it); True when this kind is new for the pair."""
        kinds = self._neighbours[u].get(v)
        if kinds is not None and kind in kinds:
            return False
        self._neighbours[u].setdefault(v, set()).add(kind)
        self._neighbours[v].setdefault(u, set()).add(kind)
        self._evidence.setdefault(_pair(u, v), {}).setdefault(kind, value)
        self._union(u, v)
        return True

    # -- questions -----------------------------------------------------------------------------------------
    @property
    def users(self) -> list[str]:
        return list(self._parent)

    def ring_of(self, user_id: str) -> str | None:
        """The ring (component) id of a user: its union-find root, stable until the ring grows."""
        return self._find(user_id) if user_id in self._parent else None

    def ring_size(self, user_id: str) -> int:
        return self._size[self._find(user_id)] if user_id in self._parent else 0

    def ring_values(self, user_id: str, kind: str) -> set[str]:
        """Distinct values of a tracked link kind (``track_distinct``) used by the members of the user's ring."""
        if kind not in self._track:
            raise ValidationFailed(f"kind: {kind!r} is not tracked by this index (tracked: {', '.join(self._track)})",
                                   field="kind", value=kind)
        return self._ring_values[self._find(user_id)][kind] if user_id in self._parent else set()

    def neighbours(self, user_id: str) -> dict[str, set[str]]:
        return dict(self._neighbours.get(user_id, {}))

    def entity_accounts(self, kind: str, value: Any) -> int:
        """How many distinct accounts have used this device / IP / address / instrument / item so far."""
        if value in (None, ""):
            return 0
        ent = self._entities[kind].get(str(value))
        return len(ent.rank) if ent else 0

    def components(self) -> dict[str, list[str]]:
        """Every ring with two or more members: root -> sorted members."""
        groups: dict[str, list[str]] = defaultdict(list)
        for u in self._parent:
            groups[self._find(u)].append(u)
        return {r: sorted(m) for r, m in groups.items() if len(m) > 1}

    def features_for(self, record: Mapping[str, Any]) -> dict[str, float]:
        """Ring features of an event from the current state (call before ``add_event`` for point-in-time)."""
        user = record.get("user_id")
        user = None if user in (None, "") else str(user)
        out: dict[str, float] = {}
        known = user is not None and user in self._parent
        size = self.ring_size(user) if known else 1
        out["ring_size"] = float(size)
        nbrs = self._neighbours.get(user, {}) if known else {}
        out["ring_linked_accounts"] = float(len(nbrs))
        for kind in ("device", "ip", "address", "instrument"):
            value = record.get(LINK_FIELDS[kind])
            n = self.entity_accounts(kind, value)
            ent = self._entities[kind].get(str(value)) if value not in (None, "") else None
            if ent is not None and user in ent.rank:
                n -= 1  # other accounts only
            out[f"ring_{kind}_accounts"] = float(n)
        ring_fraud = self._fraud[self._find(user)] if known else 0
        self_fraud = 1 if user in self._known_fraud else 0
        others = size - 1
        out["ring_known_fraud"] = float(ring_fraud - self_fraud)
        out["ring_fraud_share"] = (ring_fraud - self_fraud) / others if others else 0.0
        out["ring_linked_fraud_share"] = (
            sum(1 for v in nbrs if v in self._known_fraud) / len(nbrs) if nbrs else 0.0
        )
        for c in USER_COUNTERS:
            vals = [self._counters[v][c] for v in nbrs]
            out[f"ring_nbr_mean_{c}"] = float(np.mean(vals)) if vals else 0.0
            out[f"ring_nbr_max_{c}"] = float(max(vals)) if vals else 0.0
        return out

    def linked_accounts(self, user_id: str) -> list[dict[str, Any]]:
        """Accounts directly linked to ``user_id``, with what they share; most links first."""
        user_id = str(user_id)
        rows = []
        for v, kinds in self._neighbours.get(user_id, {}).items():
            ev = self._evidence.get(_pair(user_id, v), {})
            rows.append({
                "user_id": v,
                "links": [{"kind": k, "value": ev.get(k)} for k in sorted(kinds)],
                "ring_id": self._find(v),
                "known_fraud": v in self._known_fraud,
            })
        rows.sort(key=lambda r: (-len(r["links"]), r["user_id"]))
        return rows

    def adjacency(self, users: list[str] | None = None) -> tuple[sp.csr_matrix, list[str]]:
        """The link graph as a symmetric 0/1 sparse matrix over ``users`` (default: every user seen)."""
        users = list(self._parent) if users is None else [str(u) for u in users]
        pos = {u: i for i, u in enumerate(users)}
        rows, cols = [], []
        for u, nbrs in self._neighbours.items():
            i = pos.get(u)
            if i is None:
                continue
            for v in nbrs:
                j = pos.get(v)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        n = len(users)
        adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        return adj, users

    def rings(self, top: int = 20, *, min_size: int = 2) -> list[dict[str, Any]]:
        """The riskiest rings: members, what links them, known fraudsters and a risk score.

        Risk (a fixed formula, not learned): ``log2(size) * (1 + 3 * known_fraud_share) * (1 + strong)``
        where ``strong`` is the share of links through a device, address or payment instrument — sharing
        a card or a phone says more than sharing a busy IP.
        """
        comps = self.components()
        scored = []
        for root, members in comps.items():
            if len(members) < min_size:
                continue
            kinds: dict[str, int] = defaultdict(int)
            shared: dict[str, set[str]] = defaultdict(set)
            n_links = 0
            for u in members:
                for v, ks in self._neighbours.get(u, {}).items():
                    if u < v:
                        n_links += 1
                        ev = self._evidence.get(_pair(u, v), {})
                        for k in ks:
                            kinds[k] += 1
                            if len(shared[k]) < 5 and ev.get(k) is not None:
                                shared[k].add(ev[k])
            fraud = sum(1 for u in members if u in self._known_fraud)
            share = fraud / len(members)
            strong = sum(kinds.get(k, 0) for k in STATIC_KINDS) / max(sum(kinds.values()), 1)
            risk = math.log2(len(members)) * (1 + 3 * share) * (1 + strong)
            scored.append((risk, root, members, dict(kinds), {k: sorted(v) for k, v in shared.items()}, fraud, n_links))
        best = heapq.nlargest(top, scored, key=lambda t: (t[0], len(t[2]), t[1]))
        return [
            {
                "ring_id": root,
                "risk": round(risk, 4),
                "size": len(members),
                "members": members,
                "links": n_links,
                "link_kinds": kinds,
                "shared_values": shared,
                "known_fraud": fraud,
            }
            for risk, root, members, kinds, shared, fraud, n_links in best
        ]


def _pair(u: str, v: str) -> tuple[str, str]:
    return (u, v) if u < v else (v, u)


def _as_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(None).replace(tzinfo=None)
    if value is None:
        raise ValidationFailed("ts: required to link accounts in time", field="ts", value=None)
    from shopguard.events.schema import to_utc_naive

    try:
        return to_utc_naive(value)
    except ValueError as exc:
        raise ValidationFailed(f"ts: {exc}", field="ts", value=value) from None


# -- replaying the store ----------------------------------------------------------------------------------
_EVENT_COLUMNS = ("event_id", "ts", "type", "user_id", "status", *LINK_FIELDS.values())


def _user_labels(store: EventStore, known_before: datetime | None) -> pl.DataFrame:
    """User-level labels as (user_id, label, labeled_at), latest per user; event labels map to their user."""
    sql = (
        "SELECT entity_id AS user_id, label, labeled_at FROM labels WHERE entity_kind = 'user' "
        "UNION ALL SELECT e.user_id, l.label, l.labeled_at FROM labels l JOIN events e "
        "ON l.entity_kind = 'event' AND l.entity_id = e.event_id WHERE l.label = 1 AND e.user_id IS NOT NULL"
    )
    params: list[Any] = []
    if known_before is not None:
        sql = f"SELECT * FROM ({sql}) WHERE labeled_at < ?"
        params.append(known_before)
    return store.query(sql + " ORDER BY labeled_at", params)


def replay(
    store: EventStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    config: GraphConfig | None = None,
    with_features: bool = True,
    progress: Any = None,
) -> tuple[RingIndex, pl.DataFrame]:
    """Replay the store in time order through a fresh ``RingIndex``.

    Returns the index as of ``until`` and, when ``with_features``, one row of ring features per event
    with ``since <= ts < until`` computed before that event was learned. A label joins the index at its
    ``labeled_at``, i.e. before any event strictly later than it, never earlier.
    """
    index = RingIndex(config)
    events = store.events(until=until, columns=list(_EVENT_COLUMNS))
    labels = _user_labels(store, until)
    lab_rows = labels.rows()
    li = 0
    rows: list[dict[str, float]] = []
    ids: list[str] = []
    task = progress.add_task("ring features", total=events.height) if progress is not None else None
    for k, rec in enumerate(events.iter_rows(named=True)):
        ts = rec["ts"]
        while li < len(lab_rows) and lab_rows[li][2] < ts:
            index.add_label(lab_rows[li][0], lab_rows[li][1])
            li += 1
        if with_features and (since is None or ts >= since):
            rows.append(index.features_for(rec))
            ids.append(rec["event_id"])
        index.add_event(rec)
        if task is not None and k % 2000 == 0:
            progress.update(task, completed=k)
    for user, label, _ in lab_rows[li:]:
        index.add_label(user, label)  # known before `until` (or ever, if open-ended)
    if task is not None:
        progress.update(task, completed=events.height)
    schema = {name: pl.Float64 for name in RING_FEATURES}
    feats = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return index, feats.with_columns(pl.Series("event_id", ids, dtype=pl.Utf8)).select(["event_id", *RING_FEATURES])


def ring_features(
    store: EventStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    config: GraphConfig | None = None,
) -> pl.DataFrame:
    """Point-in-time ring features, one row per event (``event_id`` + ``RING_FEATURES``)."""
    return replay(store, since=since, until=until, config=config)[1]


def build_ring_index(
    store: EventStore, *, until: datetime | None = None, config: GraphConfig | None = None
) -> RingIndex:
    """The ring index as of ``until`` (default: everything in the store), with the labels known then."""
    return replay(store, until=until, config=config, with_features=False)[0]


def linked_accounts(store_or_graph: EventStore | RingIndex, user_id: str) -> list[dict[str, Any]]:
    """Accounts linked to ``user_id`` and what they share, for the service's user timeline.

    Each item: ``{"user_id", "links": [{"kind", "value"}], "ring_id", "known_fraud"}``. Pass a live
    ``RingIndex`` for O(links) answers; passing a store replays it (fine for small stores and tools).
    """
    index = store_or_graph if isinstance(store_or_graph, RingIndex) else build_ring_index(store_or_graph)
    return index.linked_accounts(user_id)


# -- ring features as feature definitions (both feature engines) -------------------------------------------
#: Event column -> link kind, for graph feature definitions' ``field``.
FIELD_KINDS: dict[str, str] = {column: kind for kind, column in LINK_FIELDS.items()}
_LABEL_AGGREGATES = ("ring_known_fraud", "ring_known_fraud_share", "linked_known_fraud_share")
(_OP_SIZE, _OP_DEGREE, _OP_KIND, _OP_DISTINCT, _OP_RING_FRAUD, _OP_RING_SHARE, _OP_LINKED_SHARE, _OP_MAX,
 _OP_MEAN) = range(9)
_OPS = {"ring_size": _OP_SIZE, "linked_accounts": _OP_DEGREE, "ring_distinct": _OP_DISTINCT,
        "ring_known_fraud": _OP_RING_FRAUD, "ring_known_fraud_share": _OP_RING_SHARE,
        "linked_known_fraud_share": _OP_LINKED_SHARE, "linked_max": _OP_MAX, "linked_mean": _OP_MEAN}


class RingFeatures:
    """Graph ``FeatureDef``s (``kind == "graph"``) over a live ``RingIndex``: the shared core of both engines.

    The batch engine (``ring_feature_frame``) and the online engine (``OnlineFeatureEngine``) drive
    the same object the same way: before an event at ``t``, ``advance(t)`` applies the user labels with
    ``labeled_at < t``. ``values(record)`` then reads the ring as the events learnt so far left it, and
    the engine calls ``learn`` only once a later ``ts`` arrives, so events sharing a ``ts`` never see each
    other. An event label (``label = 1``) counts as a label of the event's user.

    >>> from shopguard.features.definitions import RING_FEATURE_DEFS
    >>> rf = RingFeatures(RING_FEATURE_DEFS)
    >>> t = datetime(2024, 1, 1)
    >>> rf.learn({"type": "login", "user_id": "a", "device_id": "d"}, t)
    >>> rf.learn({"type": "login", "user_id": "b", "device_id": "d"}, t + timedelta(minutes=1))
    >>> rf.advance(t + timedelta(minutes=2))
    >>> v = rf.features({"type": "login", "user_id": "c", "device_id": "d"})
    >>> v["user_ring_size"], v["user_linked_accounts"]
    (1.0, 0.0)
    >>> v = rf.features({"type": "login", "user_id": "a"})
    >>> v["user_ring_size"], v["user_linked_accounts_shared_device"], v["user_ring_devices"]
    (2.0, 1.0, 1.0)
    """

    def __init__(self, definitions: Iterable[Any], config: GraphConfig | None = None) -> None:
        self.definitions = [d for d in definitions if getattr(d, "kind", None) == "graph"]
        self.names = [d.name for d in self.definitions]
        track = {FIELD_KINDS[d.field] for d in self.definitions if d.aggregate == "ring_distinct"}
        self.config = config or GraphConfig()
        self._track = tuple(track)
        # One per-user counter of matching events per distinct (types, where) filter of linked_mean / max.
        self._filters: list[tuple[frozenset[str] | None, tuple[tuple[str, frozenset[Any]], ...]]] = []
        self._plan: list[tuple[str, str, int]] = []  # (aggregate, link kind or "", filter index)
        for d in self.definitions:
            fid = -1
            if d.aggregate in ("linked_mean", "linked_max"):
                key = (frozenset(d.types) if d.types is not None else None,
                       tuple((c, frozenset(a)) for c, a in d.where))
                if key not in self._filters:
                    self._filters.append(key)
                fid = self._filters.index(key)
            self._plan.append((d.aggregate, FIELD_KINDS.get(d.field or "", ""), fid))
        self._ops: list[tuple[int, Any]] = []
        for agg, kind, fid in self._plan:
            op = _OPS[agg]
            if agg == "linked_accounts" and kind:
                op = _OP_KIND
            self._ops.append((op, fid if fid >= 0 else kind))
        self._by_kind = any(a == "linked_accounts" and k for a, k, _ in self._plan)
        self._by_type: dict[Any, list[int]] = {}
        # The values of an account with no links, except ring_distinct (its own devices / cards).
        alone = {_OP_SIZE: 1.0, _OP_DEGREE: 0.0, _OP_KIND: 0.0, _OP_DISTINCT: 0.0, _OP_RING_FRAUD: 0.0}
        self._alone: list[float | None] = [alone.get(op) for op, _ in self._ops]
        self._alone_distinct = [(i, arg) for i, (op, arg) in enumerate(self._ops) if op == _OP_DISTINCT]
        self._uses_labels = any(a in _LABEL_AGGREGATES for a, _, _ in self._plan)
        self.reset()

    def reset(self) -> None:
        """Forget every event and label."""
        self.index = RingIndex(self.config, track_distinct=self._track)
        self.index.count_activity = False
        n = len(self._filters)
        self._counts: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]
        # Kept up to date as links, events and labels arrive, so reading a user's features is O(1):
        self._nbr_sum: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]  # sum of neighbours' counts
        self._nbr_max: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]  # max of neighbours' counts
        self._kind_links: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # user -> kind -> links
        self._fraud_nbrs: dict[str, int] = defaultdict(int)  # user -> known fraudsters among the links
        self._labels: list[tuple[datetime, int, str, int]] = []  # heap of (labeled_at, seq, user, label)
        self._seq = 0
        self._event_user: dict[str, str] = {}  # event -> user, so event labels reach the user
        self._waiting: dict[str, datetime] = {}  # labels of events not seen yet: event -> labeled_at
        self._last: datetime | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.names)

    @property
    def needed_columns(self) -> set[str]:
        """Event columns the ring needs (links, the counters' filters)."""
        cols = {"event_id", "ts", "type", "user_id", *LINK_FIELDS.values()}
        for d in self.definitions:
            cols.update(c for c, _ in d.where)
        return cols

    # -- labels --------------------------------------------------------------------------------------------
    def add_user_label(self, user_id: str, label: int, labeled_at: datetime) -> None:
        """A user label that counts for events strictly after ``labeled_at`` (0 clears an earlier 1)."""
        if not self._uses_labels:
            return
        heapq.heappush(self._labels, (labeled_at, self._seq, str(user_id), int(label)))
        self._seq += 1

    def add_label(self, entity_kind: str, entity_id: str, label: int, labeled_at: datetime) -> None:
        """A label from the labels table: user labels as they are, positive event labels for the event's user."""
        if not self._uses_labels:
            return
        if entity_kind == "user":
            self.add_user_label(entity_id, label, labeled_at)
        elif entity_kind == "event" and int(label) == 1:
            user = self._event_user.get(str(entity_id))
            if user is not None:
                self.add_user_label(user, 1, labeled_at)
            else:  # the event has not arrived yet: the label waits for it
                prev = self._waiting.get(str(entity_id))
                self._waiting[str(entity_id)] = labeled_at if prev is None else min(prev, labeled_at)

    def advance(self, ts: datetime) -> None:
        """Apply the labels known before ``ts`` (``labeled_at < ts``)."""
        heap = self._labels
        idx = self.index
        while heap and heap[0][0] < ts:
            _, _, user, label = heapq.heappop(heap)
            was = user in idx._known_fraud
            idx.add_label(user, label)
            now = user in idx._known_fraud
            if was != now:
                step = 1 if now else -1
                for w in idx._neighbours.get(user, ()):
                    self._fraud_nbrs[w] += step

    # -- events --------------------------------------------------------------------------------------------
    def learn(self, record: Mapping[str, Any], ts: datetime) -> None:
        """Learn one event into the ring. A late event is learnt as if it came at the latest time seen."""
        if self._last is not None and ts < self._last:
            ts = self._last
        self._last = ts
        user = record.get("user_id")
        if user in (None, ""):
            return
        user = str(user)
        idx = self.index
        new = idx.add_event(record, ts=ts)
        if new:
            self._new_links(new)
        nbrs = idx._neighbours.get(user)
        etype = record.get("type")
        fids = self._by_type.get(etype)
        if fids is None:  # filters whose types admit this event type, worked out once per type
            fids = self._by_type[etype] = [i for i, (types, _) in enumerate(self._filters)
                                           if types is None or etype in types]
        for i in fids:
            where = self._filters[i][1]
            if where and not all(record.get(c) in allowed for c, allowed in where):
                continue
            counts = self._counts[i]
            c = counts[user] + 1
            counts[user] = c
            if nbrs:
                sums, maxes = self._nbr_sum[i], self._nbr_max[i]
                for w in nbrs:
                    sums[w] += 1
                    if maxes[w] < c:
                        maxes[w] = c
        if self._uses_labels:
            eid = record.get("event_id")
            if eid is not None:
                eid = str(eid)
                self._event_user[eid] = user
                waiting = self._waiting.pop(eid, None)
                if waiting is not None:
                    self.add_user_label(user, 1, waiting)

    def _new_links(self, new: list[tuple[str, str, str, str]]) -> None:
        """Fold the links one event made into the per-user aggregates."""
        idx = self.index
        added: dict[tuple[str, str], int] = defaultdict(int)
        for u, v, kind, _value in new:
            if self._by_kind:
                self._kind_links[u][kind] += 1
                self._kind_links[v][kind] += 1
            added[(u, v)] += 1
        for (u, v), k in added.items():
            if len(idx._neighbours[u][v]) != k:
                continue  # the pair was linked before (through another kind): already a neighbour
            for i in range(len(self._filters)):
                counts, sums, maxes = self._counts[i], self._nbr_sum[i], self._nbr_max[i]
                cu, cv = counts.get(u, 0), counts.get(v, 0)
                sums[u] += cv
                sums[v] += cu
                if maxes[u] < cv:
                    maxes[u] = cv
                if maxes[v] < cu:
                    maxes[v] = cu
            if self._uses_labels:
                if v in idx._known_fraud:
                    self._fraud_nbrs[u] += 1
                if u in idx._known_fraud:
                    self._fraud_nbrs[v] += 1

    def values(self, record: Mapping[str, Any]) -> list[float | None]:
        """The graph features of an event from the current state, in ``names`` order (no learning)."""
        user = record.get("user_id")
        if user is None or user == "":
            return [None] * len(self._ops)
        user = str(user)
        idx = self.index
        root = idx._find(user) if user in idx._parent else None
        size = idx._size[root] if root is not None else 1
        if size == 1:  # an account linked to nobody (most events): constants, plus its own devices / cards
            out = list(self._alone)
            for pos, kind in self._alone_distinct:
                out[pos] = float(len(idx._ring_values[root][kind])) if root is not None else 0.0
            return out
        nbrs = idx._neighbours.get(user)
        degree = len(nbrs) if nbrs else 0
        out = []
        append = out.append
        for op, arg in self._ops:  # integer op codes: this runs for every event of a backfill
            if op == _OP_SIZE:
                append(float(size))
            elif op == _OP_DEGREE:
                append(float(degree))
            elif op == _OP_KIND:
                links = self._kind_links.get(user)
                append(float(links.get(arg, 0)) if links else 0.0)  # type: ignore[call-overload]
            elif op == _OP_DISTINCT:
                append(float(len(idx._ring_values[root][arg])) if root is not None else 0.0)  # type: ignore[index]
            elif op == _OP_RING_FRAUD or op == _OP_RING_SHARE:
                others = (idx._fraud[root] - (1 if user in idx._known_fraud else 0)) if root is not None else 0
                if op == _OP_RING_FRAUD:
                    append(float(others))
                else:
                    append(others / (size - 1) if size > 1 else None)
            elif op == _OP_LINKED_SHARE:
                append(self._fraud_nbrs.get(user, 0) / degree if degree else None)
            elif not degree:  # linked_mean / linked_max without links
                append(None)
            elif op == _OP_MAX:
                append(float(self._nbr_max[arg].get(user, 0)))  # type: ignore[index]
            else:
                append(self._nbr_sum[arg].get(user, 0) / degree)  # type: ignore[index]
        return out

    def features(self, record: Mapping[str, Any]) -> dict[str, float | None]:
        """``values`` as a name -> value mapping."""
        return dict(zip(self.names, self.values(record), strict=True))


def ring_feature_frame(
    store: EventStore,
    definitions: Iterable[Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    config: GraphConfig | None = None,
) -> pl.DataFrame:
    """Point-in-time graph features for the events with ``since <= ts < until`` (and type in ``types``).

    Replays the store in time order through ``RingFeatures`` (the graph has no horizon, so the replay
    starts at the first event even when ``since`` is late). Per distinct ``ts``: apply the labels known
    before it, compute the features of its events, then learn them together. Columns: ``event_id`` and
    the graph features, Float64.
    """
    rf = RingFeatures(definitions, config)
    schema = {"event_id": pl.Utf8, **{n: pl.Float64 for n in rf.names}}
    if not rf.names:
        return pl.DataFrame(schema=schema)
    for user, label, labeled_at in _user_labels(store, until).iter_rows():
        rf.add_user_label(user, label, labeled_at)
    wanted = set(types) if types is not None else None
    cols = sorted(rf.needed_columns)
    events = store.events(until=until, columns=cols)
    rows: list[list[Any]] = []
    pending: list[dict[str, Any]] = []
    current: datetime | None = None
    learn, values, advance = rf.learn, rf.values, rf.advance
    for rec in events.iter_rows(named=True):
        ts = rec["ts"]
        if ts != current:
            for p in pending:
                learn(p, current)  # type: ignore[arg-type]
            pending.clear()
            current = ts
            advance(ts)
        if (since is None or ts >= since) and (wanted is None or rec["type"] in wanted):
            row = values(rec)
            row.append(rec["event_id"])
            rows.append(row)
        pending.append(rec)
    if not rows:
        return pl.DataFrame(schema=schema)
    frame = pl.DataFrame(rows, schema={**{n: pl.Float64 for n in rf.names}, "event_id": pl.Utf8}, orient="row")
    return frame.select(list(schema))


# -- batch components (independent check of the index) --------------------------------------------------
def link_edges_batch(store: EventStore, config: GraphConfig | None = None) -> pl.DataFrame:
    """All links (user_a < user_b, kind) computed in SQL over the store, with the same rules as the index."""
    cfg = config or GraphConfig()
    frames = []
    for kind, column in LINK_FIELDS.items():
        type_filter = ""
        params: list[Any] = []
        if kind == "item":
            type_filter = f" AND type IN ({', '.join('?' * len(cfg.item_event_types))})"
            params.extend(cfg.item_event_types)
        window = cfg.window(kind)
        # The first max_entity_users accounts of a value (by first use, ties by event_id) may link.
        base = (
            f"WITH ev AS (SELECT user_id, {column} AS v, ts, event_id FROM events "
            f"WHERE user_id IS NOT NULL AND {column} IS NOT NULL AND {column} <> ''{type_filter}), "
            "firsts AS (SELECT v, user_id, min((ts, event_id)) AS first FROM ev GROUP BY v, user_id), "
            "ranked AS (SELECT v, user_id, row_number() OVER (PARTITION BY v ORDER BY first) AS r FROM firsts), "
            "ok AS (SELECT ev.* FROM ev JOIN ranked USING (v, user_id) WHERE r <= ?) "
        )
        params.append(cfg.max_entity_users)
        if window is None:
            sql = base + "SELECT DISTINCT least(a.user_id, b.user_id) AS a, greatest(a.user_id, b.user_id) AS b " \
                "FROM (SELECT DISTINCT v, user_id FROM ok) a JOIN (SELECT DISTINCT v, user_id FROM ok) b " \
                "ON a.v = b.v AND a.user_id < b.user_id"
        else:
            sql = base + "SELECT DISTINCT least(a.user_id, b.user_id) AS a, greatest(a.user_id, b.user_id) AS b " \
                "FROM ok a JOIN ok b ON a.v = b.v AND a.user_id <> b.user_id " \
                "AND b.ts <= a.ts AND a.ts - b.ts <= ?"
            params.append(window)
        df = store.query(sql, params)
        frames.append(df.with_columns(pl.lit(kind).alias("kind")))
    out = pl.concat(frames) if frames else pl.DataFrame(schema={"a": pl.Utf8, "b": pl.Utf8, "kind": pl.Utf8})
    return out.unique().sort(["a", "b", "kind"])


def components_batch(store: EventStore, config: GraphConfig | None = None) -> list[list[str]]:
    """Rings (two or more members) from ``link_edges_batch`` via scipy connected components."""
    from scipy.sparse.csgraph import connected_components

    edges = link_edges_batch(store, config)
    users = sorted(set(edges["a"].to_list()) | set(edges["b"].to_list()))
    if not users:
        return []
    pos = {u: i for i, u in enumerate(users)}
    r = [pos[u] for u in edges["a"].to_list()]
    c = [pos[u] for u in edges["b"].to_list()]
    adj = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(users), len(users)))
    _, lab = connected_components(adj, directed=False)
    groups: dict[int, list[str]] = defaultdict(list)
    for u, g in zip(users, lab, strict=True):
        groups[int(g)].append(u)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


# -- neighbour aggregation on a static graph (GADBench RF-Graph / XGB-Graph) ------------------------------
def aggregate_neighbours(
    X: np.ndarray | pl.DataFrame,
    adjacency: sp.spmatrix,
    *,
    names: Iterable[str] | None = None,
    aggregates: tuple[str, ...] = ("mean", "max", "diff"),
) -> pl.DataFrame:
    """Own features plus neighbours' mean / max and own-minus-neighbour-mean, one row per node.

    Column names: ``f``, ``nbr_mean__f``, ``nbr_max__f``, ``nbr_diff__f`` and ``nbr_degree``. Nodes
    without neighbours get 0 aggregates and ``diff`` equal to their own value.
    """
    if isinstance(X, pl.DataFrame):
        names = list(X.columns) if names is None else list(names)
        arr = X.to_numpy().astype(np.float64)
    else:
        arr = np.asarray(X, dtype=np.float64)
        names = [f"x{j}" for j in range(arr.shape[1])] if names is None else list(names)
    if arr.ndim != 2 or len(names) != arr.shape[1]:
        raise DataError(f"features must be 2-D with one name per column, got shape {arr.shape}", field="X")
    A = sp.csr_matrix(adjacency, dtype=np.float64)
    if A.shape != (arr.shape[0], arr.shape[0]):
        raise DataError(
            f"adjacency must be {arr.shape[0]} x {arr.shape[0]} to match the features, got {A.shape}",
            field="adjacency",
            value=A.shape,
        )
    unknown = set(aggregates) - {"mean", "max", "diff"}
    if unknown:
        raise ValidationFailed(f"aggregates: unknown {sorted(unknown)} (allowed: mean, max, diff)", field="aggregates")
    A.data[:] = 1.0
    deg = np.asarray(A.sum(axis=1)).ravel()
    cols: dict[str, np.ndarray] = {n: arr[:, j] for j, n in enumerate(names)}
    mean = (sp.diags(1.0 / np.maximum(deg, 1.0)) @ A) @ arr
    if "mean" in aggregates:
        cols.update({f"nbr_mean__{n}": mean[:, j] for j, n in enumerate(names)})
    if "max" in aggregates:
        mx = _neighbour_max(A, arr)
        cols.update({f"nbr_max__{n}": mx[:, j] for j, n in enumerate(names)})
    if "diff" in aggregates:
        cols.update({f"nbr_diff__{n}": arr[:, j] - mean[:, j] for j, n in enumerate(names)})
    cols["nbr_degree"] = deg
    return pl.DataFrame(cols)


def _neighbour_max(A: sp.csr_matrix, X: np.ndarray) -> np.ndarray:
    """Column-wise max over each node's neighbours (0 for isolated nodes), vectorised per row block."""
    n = X.shape[0]
    out = np.zeros_like(X)
    indptr, indices = A.indptr, A.indices
    deg = np.diff(indptr)
    has = deg > 0
    if indices.size:
        # reduceat over the neighbour lists: one vectorised pass instead of a Python loop per node.
        starts = indptr[:-1][has]
        out[has] = np.maximum.reduceat(X[indices], starts, axis=0)
    assert out.shape[0] == n
    return out
