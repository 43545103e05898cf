"""Online feature engine: the batch definitions computed event by event from per-entity state.

For each new event ``update`` first computes its features from the state (only events strictly before
its ``ts``), then learns it, like River's score-before-learn. Events at the same ``ts`` are held in a
small pending buffer and learned together once a later ``ts`` arrives, so ties never see each other,
exactly as in the batch engine. ``rebuild(store)`` replays the store's history (and loads its labels)
after a restart. Events are expected in non-decreasing ``ts`` order; a late event is learned in place
(windows stay in time order). Windows are evicted relative to the event being scored, and items at or
after its time (a late event, or any after one dated in the future) are not counted, so one
future-dated event neither stops eviction nor counts in later events' windows. A slow sweep drops the
windows of entities whose every item has expired (one-off IPs, cards, devices), so memory follows the
traffic inside the windows, not all traffic ever seen.

State per entity: a deque of ``(ts, value)`` with running count / sum / sum of squares (and a value
counter for distinct counts) per window, the last / first time per filter, the last time each value was
seen for new-value flags, and sorted timestamps plus known positives for label-delayed merchant risk.
The all-history smoothed fraud rate keeps, per entity, the count of earlier events and the times from
which each labelled event counts (``max(ts, labeled_at)``), matured into running counts as time passes
(a late event sees what had matured by the latest time seen); every event that a label may still reach
stays findable by id (memory grows with the events learnt).
An ``"attr:<key>"`` entity is read from the event's ``attrs`` as text, as the batch engine reads it.
Ring (account-graph) features run through ``features.graph.RingFeatures``, the object the batch engine
replays: computed in ``update``, learnt with the pending events, user and event labels via ``learn_label``.

>>> eng = OnlineFeatureEngine([FeatureDef("user_events_1h", "count", entity="user_id", window="1h")])
>>> eng.update({"event_id": "a", "type": "login", "ts": "2024-05-01T10:00:00", "user_id": "u"})
{'user_events_1h': 0.0}
>>> eng.update({"event_id": "b", "type": "login", "ts": "2024-05-01T10:30:00", "user_id": "u"})
{'user_events_1h': 1.0}
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl

from shopguard.errors import ValidationFailed
from shopguard.events.schema import to_utc_naive
from shopguard.features.batch import finish_stats
from shopguard.features.definitions import AttrFeature, FeatureDef, FeatureSet, as_feature_set
from shopguard.store import EventStore

_ATTR_TEXT = AttrFeature("key", "categorical")  # attrs entities are read as text, like json_extract_string

_EPOCH = datetime(1970, 1, 1)
Value = float | str | None


def ts_us(value: Any, field_name: str = "ts") -> int:
    """Naive-UTC microseconds since the epoch (integers keep window edges exact)."""
    dt = value if isinstance(value, datetime) and value.tzinfo is None else to_utc_naive(value, field_name)
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _as_dt(t: int) -> datetime:
    """Microseconds since the epoch back to a naive-UTC datetime (the ring index works in datetimes)."""
    return _EPOCH + timedelta(microseconds=t)


def _opt_ts_us(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return ts_us(value)
    except (ValueError, TypeError):
        return None


class _Window:
    """Earlier events of one entity value inside a sliding window, with running aggregates."""

    __slots__ = ("items", "keep", "n", "nv", "s", "s2", "counter")

    def __init__(self, distinct: bool, keep: bool) -> None:
        self.items: deque[tuple[int, Any]] = deque()
        self.keep = keep  # all-history windows never evict, so they keep only the running aggregates
        self.n = 0  # events
        self.nv = 0  # events with a numeric value
        self.s = 0.0
        self.s2 = 0.0
        self.counter: Counter[Any] | None = Counter() if distinct else None

    def add(self, t: int, v: Any, numeric: bool, late: bool = True) -> None:
        if self.keep:
            items = self.items
            if late and items and items[-1][0] > t:
                # A late event goes in time order, so eviction (oldest first) never stops at a later one.
                items.insert(bisect.bisect_right(items, t, key=_item_ts), (t, v))
            else:
                items.append((t, v))
        self.n += 1
        if v is None:
            return
        if self.counter is not None:
            self.counter[v] += 1
        if numeric:
            self.nv += 1
            self.s += v
            self.s2 += v * v

    def evict(self, lo: int | None, numeric: bool) -> None:
        items = self.items
        if lo is None:
            return
        while items and items[0][0] < lo:
            _, v = items.popleft()
            self.n -= 1
            if v is None:
                continue
            if self.counter is not None:
                c = self.counter[v] - 1
                if c:
                    self.counter[v] = c
                else:
                    del self.counter[v]
            if numeric:
                self.nv -= 1
                self.s -= v
                self.s2 -= v * v
        if not items or self.nv == 0:
            # Start again from exact zeros so subtraction drift never accumulates.
            self.s = self.s2 = 0.0

    def before(self, t: int, numeric: bool, user: Any) -> tuple[int, int, float, float, int, int]:
        """``(n, nv, s, s2, distinct, user's events)`` of the items strictly before ``t``: what an event
        at ``t`` sees when items at or after it are held (a late event, or one dated in the future)."""
        n, nv, s, s2 = self.n, self.nv, self.s, self.s2
        drop: Counter[Any] = Counter()
        for ts, v in reversed(self.items):
            if ts < t:
                break
            n -= 1
            if v is None:
                continue
            drop[v] += 1
            if numeric:
                nv -= 1
                s -= v
                s2 -= v * v
        if nv == 0:
            s = s2 = 0.0
        c = self.counter
        nd = 0 if c is None else len(c) - sum(1 for v, k in drop.items() if c.get(v, 0) <= k)
        nu = 0 if c is None or user is None else c.get(user, 0) - drop.get(user, 0)
        return n, nv, s, s2, nd, nu


class _Spec:
    """One piece of state shared by every feature with the same entity, window, filter and field."""

    def __init__(self, kind: str, d: FeatureDef, field: str | None = None) -> None:
        self.kind = kind  # win | delayed | last | first | new | pos | rate
        self.entity = d.entity
        self.window = d.window_us
        self.delay = d.delay_us
        self.types = frozenset(d.types) if d.types is not None else None
        self.where = tuple((c, frozenset(a)) for c, a in d.where)
        self.field = (field or d.field) if kind in ("win", "new") else None
        self.labelled = d.denominator == "labelled"  # rate: the denominator counts labelled events
        self.numeric = False
        self.distinct = False
        self.fid = 0  # index of this spec's filter among the engine's distinct filters
        self.state: dict[Any, Any] = {}

    def matches(self, rec: dict[str, Any]) -> bool:
        if self.types is not None and rec.get("type") not in self.types:
            return False
        for col, allowed in self.where:
            if rec.get(col) not in allowed:
                return False
        return True


def _spec_key(kind: str, d: FeatureDef, field: str | None = None) -> tuple[Any, ...]:
    window = d.window_us if kind in ("win", "delayed", "new") else None
    delay = d.delay_us if kind in ("delayed", "pos") else 0
    fld = (field or d.field) if kind in ("win", "new") else None
    if kind == "pos":
        window = d.window_us
    if kind == "rate":
        fld = d.denominator
    return (kind, d.entity, window, delay, d.types, d.where, fld)


class OnlineFeatureEngine:
    """Incremental twin of ``compute_features``: same definitions, same numbers, one event at a time."""

    def __init__(self, definitions: FeatureSet | Sequence[FeatureDef] | None = None) -> None:
        self.feature_set = as_feature_set(definitions)
        self._specs: dict[tuple[Any, ...], _Spec] = {}
        self._plan: list[tuple[FeatureDef, _Spec | None, _Spec | None]] = []
        for d in self.feature_set.definitions:
            main = pos = None
            if d.aggregate in ("count", "distinct", "sum", "mean", "std", "zscore", "ratio_to_mean", "deviation"):
                main = self._spec("delayed" if d.delay_us else "win", d)
                if d.aggregate == "distinct":
                    main.distinct = True
                elif d.aggregate != "count":
                    main.numeric = True
            elif d.aggregate == "since_last":
                main = self._spec("last", d)
            elif d.aggregate == "since_first":
                main = self._spec("first", d)
            elif d.aggregate == "is_new":
                main = self._spec("new", d)
            elif d.aggregate == "label_rate":
                main = self._spec("delayed", d)
                pos = self._spec("pos", d)
            elif d.aggregate == "user_share":  # shares the state of the entity's distinct users
                main = self._spec("win", d, field="user_id")
                main.distinct = True
            elif d.aggregate == "smoothed_label_rate":
                main = self._spec("rate", d)
            self._plan.append((d, main, pos))
        # Compiled plan: features grouped by the state they read, so each state is evicted once per event.
        groups: dict[int, tuple[_Spec, list[tuple[str, str, str | None, Any]]]] = {}
        for d, main, pos in self._plan:
            if main is not None:
                # label_rate reads its positives' state; smoothed_label_rate its (m * prior, m).
                extra = (float(d.smoothing) * float(d.prior), float(d.smoothing)) if main.kind == "rate" else pos  # type: ignore[arg-type]
                groups.setdefault(id(main), (main, []))[1].append((d.name, d.aggregate, d.field, extra))
        self._groups = list(groups.values())
        # The same plan, flattened for ``_compute`` (the service's per-event hot path): per group its kind
        # as a small int and its features split by what they read, so the loop does no string tests.
        self._fast_groups: list[tuple[Any, ...]] = []
        for spec, feats in self._groups:
            code = {"win": _WIN, "delayed": _DELAYED, "last": _SINCE, "first": _SINCE, "new": _NEW,
                    "rate": _RATE}[spec.kind]
            counts = tuple(n for n, agg, _f, _p in feats if agg == "count")
            distinct = tuple(n for n, agg, _f, _p in feats if agg == "distinct")
            shares = tuple(n for n, agg, _f, _p in feats if agg == "user_share")
            stats = tuple((n, agg, f if agg in ("zscore", "ratio_to_mean", "deviation") else None)
                          for n, agg, f, _p in feats if agg not in ("count", "distinct", "user_share"))
            rates = tuple((n, p) for n, agg, _f, p in feats if agg != "count")
            self._fast_groups.append((spec, spec.entity, code, spec.window, spec.numeric, counts, distinct, stats,
                                      rates, tuple(n for n, *_ in feats), shares))
        self._current_defs = [d for d in self.feature_set.definitions if d.kind == "current"]
        self._derived = [(d.name, d.inputs[0], d.inputs[1]) for d in self.feature_set.definitions if d.kind == "derived"]
        self._attrs = [(a, a.name, a.key) for a in self.feature_set.attrs]  # names computed once
        self._columns = self.feature_set.columns
        filters: dict[tuple[Any, ...], int] = {}
        for spec in self._specs.values():
            spec.fid = filters.setdefault((spec.types, spec.where), len(filters))
        self._numeric_fields = {s.field for s in self._specs.values() if s.numeric}
        # ``_learn``'s loop over every piece of state, flattened the same way (kinds as small ints).
        learn_codes = {"win": _WIN, "delayed": _DELAYED, "last": _LAST, "first": _FIRST, "new": _NEW, "pos": _POS}
        self._learn_plan = [(spec, spec.entity, spec.fid, learn_codes[spec.kind], spec.field, spec.numeric,
                             spec.distinct, spec.window is not None) for spec in self._specs.values()
                            if spec.kind not in ("pos", "rate")]  # learnt by _learn_positive / _learn_rate
        self._pos_specs = [s for s in self._specs.values() if s.kind == "pos"]
        self._rate_specs = [s for s in self._specs.values() if s.kind == "rate"]
        # "attr:<key>" entities: (entity, attrs key), copied into the record as text by _attr_entities.
        self._attr_entities = sorted({(d.entity, d.attr_key) for d in self.feature_set.definitions
                                      if d.attr_key is not None and d.entity is not None})
        # Ring (account-graph) features: the same RingFeatures object the batch engine replays.
        self._rings: Any = None
        if self.feature_set.graph_definitions:
            from shopguard.features.graph import RingFeatures

            self._rings = RingFeatures(self.feature_set.graph_definitions, self.feature_set.graph_config())
        self._lock = threading.RLock()  # the service may call from several threads
        self.reset()

    def _spec(self, kind: str, d: FeatureDef, field: str | None = None) -> _Spec:
        key = _spec_key(kind, d, field)
        if key not in self._specs:
            self._specs[key] = _Spec(kind, d, field)
        return self._specs[key]

    # -- state ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every event and label."""
        for spec in self._specs.values():
            spec.state = {}
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._event_known: dict[str, int] = {}  # event_id -> earliest labeled_at of a positive label
        self._order_known: dict[str, int] = {}
        # Events that may still be labelled, for label-delayed features: event_id -> (entity per spec, ts)
        self._pos_index: dict[str, tuple[int, str | None, list[tuple[_Spec, Any]]]] = {}
        self._order_events: dict[str, list[str]] = {}
        self._index_order: list[tuple[int, str]] = []  # heap of (ts, event_id)
        # Smoothed label rates: earliest labeled_at of any label (positive known times: _event_known), and
        # every learnt event a label may still reach: event_id -> [ts, order_id, [(spec, entity)], vp, vl].
        self._event_labelled: dict[str, int] = {}
        self._order_labelled: dict[str, int] = {}
        self._rate_index: dict[str, list[Any]] = {}
        self._rate_order_events: dict[str, list[str]] = {}
        if self._rings is not None:
            self._rings.reset()
        self.events_seen = 0
        self._recent_ts: deque[int] = deque(maxlen=_CLOCK_EVENTS)  # the housekeeping clock (_sweep)
        self._learnt_max = -(1 << 62)  # the latest time learnt: an event after it sees nothing "ahead"
        self._sweep_at = [0, 0]  # [spec index, key index] of the sweep through expired windows
        self._sweep_keys: list[Any] = []

    @property
    def ring_index(self) -> Any:
        """The live account-link graph behind the ring features (``features.graph.RingIndex``), or None."""
        return self._rings.index if self._rings is not None else None

    # -- the contract --------------------------------------------------------------------------------
    def update(self, record: dict[str, Any]) -> dict[str, Value]:
        """Features of this event from the state before it, then learn it."""
        rec = self._normalise(record)
        t = rec["__t"]
        with self._lock:
            if self._pending and self._pending[0][0] != t:
                self.flush()
            values = self._compute(rec, t)
            self._pending.append((t, rec))
        return values

    def features(self, record: dict[str, Any]) -> dict[str, Value]:
        """Features of this event without learning it (e.g. to score a what-if)."""
        rec = self._normalise(record)
        t = rec["__t"]
        with self._lock:
            if self._pending and self._pending[0][0] < t:
                self.flush()
            return self._compute(rec, t)

    def flush(self) -> None:
        """Learn the pending events (those sharing the latest ``ts``)."""
        with self._lock:
            pending, self._pending = self._pending, []
            for t, rec in pending:
                self._learn(rec, t)

    def learn_label(self, entity_kind: str, entity_id: str, label: int, labeled_at: Any) -> None:
        """Take a label into account for label-delayed and ring features (used only once ``labeled_at < t``)."""
        if self._rings is not None and entity_kind in ("user", "event"):
            k = ts_us(labeled_at, "labeled_at")
            with self._lock:
                self._rings.add_label(entity_kind, str(entity_id), int(label), _as_dt(k))
        if entity_kind not in ("event", "order"):
            return
        k = ts_us(labeled_at, "labeled_at")
        with self._lock:
            if int(label) == 1:
                self._learn_label(entity_kind, str(entity_id), k)
            if self._rate_specs:
                self._learn_rate_label(entity_kind, str(entity_id), k)

    def _learn_label(self, entity_kind: str, entity_id: str, k: int) -> None:
        known = self._event_known if entity_kind == "event" else self._order_known
        if entity_id in known and known[entity_id] <= k:
            return
        known[entity_id] = k
        ids = [entity_id] if entity_kind == "event" else self._order_events.get(entity_id, [])
        for eid in ids:
            entry = self._pos_index.get(eid)
            if entry is not None:
                self._mark_positive(eid, entry[0], k, entry[2])

    def add_labels(self, labels: pl.DataFrame) -> None:
        """Load a labels frame (``entity_kind, entity_id, label, labeled_at``)."""
        for row in labels.select("entity_kind", "entity_id", "label", "labeled_at").iter_rows():
            self.learn_label(*row)

    def rebuild(self, store: EventStore, *, until: datetime | None = None) -> int:
        """Forget everything and replay the store (labels, then events in time order); returns events learned."""
        with self._lock:
            self.reset()
            self.add_labels(store.labels())
            cols = sorted(self._needed_columns())
            frame = store.events(until=until, columns=cols)
            for rec in frame.iter_rows(named=True):
                t = ts_us(rec["ts"])
                rec["__t"] = t
                if self._attr_entities:
                    self._read_attr_entities(rec)
                if self._pending and self._pending[0][0] != t:
                    self.flush()
                self._pending.append((t, rec))
            return frame.height

    # -- internals -----------------------------------------------------------------------------------
    def _needed_columns(self) -> set[str]:
        cols = {"event_id", "ts", "type", "user_id", "order_id"}
        for d in self.feature_set.definitions:
            cols.update(c for c in (d.entity, d.field, d.other) if c)
            cols.update(c for c, _ in d.where)
        if self._rings is not None:
            cols.update(self._rings.needed_columns)
        cols -= {e for e, _k in self._attr_entities}
        if self._attr_entities:
            cols.add("attrs")
        return cols

    def _read_attr_entities(self, rec: dict[str, Any]) -> None:
        """Copy the ``attrs`` keys used as entities into the record (as ``"attr:<key>"``, as text)."""
        attrs = _attrs_dict(rec)
        for entity, key in self._attr_entities:
            rec[entity] = _attr_value(_ATTR_TEXT, attrs.get(key), 0)

    def _normalise(self, record: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise ValidationFailed(f"event must be a mapping, got {type(record).__name__}", field="event")
        if record.get("ts") is None:
            raise ValidationFailed("ts: required to compute features", field="ts")
        try:
            t = ts_us(record["ts"])
        except ValueError as exc:
            raise ValidationFailed(f"ts: {exc}", field="ts", value=record.get("ts")) from None
        rec = dict(record)
        rec["__t"] = t
        if self._attr_entities:
            self._read_attr_entities(rec)
        for f in self._numeric_fields:
            v = rec.get(f)
            if v is not None and not isinstance(v, float):
                try:
                    rec[f] = float(v)
                except (TypeError, ValueError):
                    raise ValidationFailed(f"{f}: expected a number (got {v!r})", field=f, value=v) from None
        return rec

    def _learn(self, rec: dict[str, Any], t: int) -> None:
        self.events_seen += 1
        self._recent_ts.append(t)
        if not self.events_seen % _SWEEP_EVERY:
            self._sweep()
        late = t < self._learnt_max  # something later was learnt already: keep windows in time order
        if not late:
            self._learnt_max = t
        matched: dict[int, bool] = {}  # one filter test per distinct filter
        get = rec.get
        for spec, entity, fid, code, fld, numeric, distinct, keep in self._learn_plan:
            ent = get(entity)
            if ent is None:
                continue
            m = matched.get(fid)
            if m is None:
                m = matched[fid] = spec.matches(rec)
            if not m:
                continue
            st = spec.state
            if code == _WIN:
                w = st.get(ent)
                if w is None:
                    w = st[ent] = _Window(distinct, keep)
                w.add(t, get(fld) if fld else None, numeric, late)
            elif code == _DELAYED:
                lst = st.get(ent)
                if lst is None:
                    st[ent] = [t]
                elif lst[-1] <= t:
                    lst.append(t)
                else:
                    bisect.insort(lst, t)
            elif code == _LAST:
                # The latest time; while a later (future-dated) one is known, the few latest times in order,
                # so the events after it still see their real previous one.
                prev = st.get(ent)
                if prev is None:
                    st[ent] = t
                elif type(prev) is int:
                    if t > prev:
                        st[ent] = t
                    elif t < prev:
                        st[ent] = [t, prev]
                elif t > prev[-1]:
                    st[ent] = t  # nothing learnt is later any more
                elif t not in prev:
                    bisect.insort(prev, t)
                    if len(prev) > _LAST_KEEP:
                        del prev[0]
            elif code == _FIRST:
                prev = st.get(ent)
                if prev is None or t < prev:
                    st[ent] = t
            elif code == _NEW:
                v = get(fld)
                if v is not None:
                    seen = st.get(ent)
                    if seen is None:
                        seen = st[ent] = {}
                    prev = seen.get(v)
                    if prev is None or t > prev:
                        seen[v] = t
        if self._pos_specs:
            self._learn_positive(rec, t)
        if self._rate_specs:
            self._learn_rate(rec, t)
        if self._rings is not None:
            self._rings.learn(rec, _as_dt(t))

    def _sweep(self) -> None:
        """Drop a few windows whose every item has expired (``_SWEEP_KEYS`` entities per call, round robin
        over the windowed state). A window is evicted only when its entity comes back, so without this the
        windows of IPs, devices and cards seen once would stay for good. The clock is the earliest of the
        last ``_CLOCK_EVENTS`` learnt times, so a few future-dated events cannot make everything look expired;
        an entity that comes back finds no window, which reads exactly as an expired one."""
        specs = [sp for sp in self._specs.values() if sp.kind == "win" and sp.window is not None]
        if not specs or not self._recent_ts:
            return
        clock = min(self._recent_ts)
        budget = _SWEEP_KEYS
        while budget > 0:
            i, k = self._sweep_at
            if i >= len(specs):
                i, k = 0, 0
            spec = specs[i]
            if k == 0:
                self._sweep_keys = list(spec.state)
            keys = self._sweep_keys[k:k + budget]
            lo = clock - spec.window - _SWEEP_SLACK_US  # type: ignore[operator]
            st = spec.state
            for ent in keys:
                w = st.get(ent)
                if w is not None and (not w.items or w.items[-1][0] < lo):
                    del st[ent]
            budget -= len(keys)
            k += len(keys)
            if k >= len(self._sweep_keys):
                i, k = i + 1, 0
                if i >= len(specs):
                    self._sweep_at = [0, 0]
                    return  # one full pass at most per call
            self._sweep_at = [i, k]

    # -- smoothed label rates ------------------------------------------------------------------------
    def _learn_rate(self, rec: dict[str, Any], t: int) -> None:
        """Count the event for its entities' rates and keep it findable for labels that come later."""
        targets = []
        for spec in self._rate_specs:
            ent = rec.get(spec.entity)  # type: ignore[arg-type]
            if ent is None or not spec.matches(rec):
                continue
            st = spec.state.get(ent)
            if st is None:
                st = spec.state[ent] = [0, 0, [], 0, []]  # events, hits (matured, pending), labelled (...)
            st[0] += 1
            targets.append((spec, ent))
        if not targets:
            return
        eid = str(rec.get("event_id"))
        oid = rec.get("order_id")
        entry = [t, oid, targets, None, None]
        self._rate_index[eid] = entry
        if oid:
            self._rate_order_events.setdefault(oid, []).append(eid)
        self._rate_update(entry, eid)

    def _learn_rate_label(self, entity_kind: str, entity_id: str, k: int) -> None:
        known = self._event_labelled if entity_kind == "event" else self._order_labelled
        if entity_id not in known or k < known[entity_id]:
            known[entity_id] = k
        ids = [entity_id] if entity_kind == "event" else self._rate_order_events.get(entity_id, [])
        for eid in ids:
            entry = self._rate_index.get(eid)
            if entry is not None:
                self._rate_update(entry, eid)

    def _rate_update(self, entry: list[Any], eid: str) -> None:
        """(Re)place the times from which the event counts as a hit (vp) and as labelled (vl)."""
        t, oid, targets, vp, vl = entry
        pos = [k for k in (self._event_known.get(eid), self._order_known.get(oid) if oid else None) if k is not None]
        lab = [k for k in (self._event_labelled.get(eid), self._order_labelled.get(oid) if oid else None)
               if k is not None]
        new_vp = max(t, min(pos)) if pos else None
        new_vl = max(t, min(lab)) if lab else None
        for spec, ent in targets:
            st = spec.state[ent]
            if new_vp is not None and (vp is None or new_vp < vp):
                _move(st, 1, vp, new_vp)
            if spec.labelled and new_vl is not None and (vl is None or new_vl < vl):
                _move(st, 3, vl, new_vl)
        if new_vp is not None and (vp is None or new_vp < vp):
            entry[3] = new_vp
        if new_vl is not None and (vl is None or new_vl < vl):
            entry[4] = new_vl

    def _learn_positive(self, rec: dict[str, Any], t: int) -> None:
        targets = [(s, rec.get(s.entity)) for s in self._pos_specs  # type: ignore[arg-type]
                   if rec.get(s.entity) is not None and s.matches(rec)]  # type: ignore[arg-type]
        if not targets:
            return
        eid = str(rec.get("event_id"))
        oid = rec.get("order_id")
        ks = [k for k in (self._event_known.get(eid), self._order_known.get(oid) if oid else None) if k is not None]
        if ks:
            self._mark_positive(eid, t, min(ks), targets)
        # Keep the event findable for labels that arrive later, for as long as any window can see it.
        self._pos_index[eid] = (t, oid, targets)
        if oid:
            self._order_events.setdefault(oid, []).append(eid)
        # A heap by time, not arrival: an event dated in the future waits at the bottom and never holds
        # the events learnt after it in memory.
        heapq.heappush(self._index_order, (t, eid))
        horizon = max((s.window or 0) + s.delay for s in self._pos_specs)
        while self._index_order and self._index_order[0][0] < t - horizon:
            _, old = heapq.heappop(self._index_order)
            entry = self._pos_index.pop(old, None)
            if entry is not None and entry[1]:
                evs = self._order_events.get(entry[1])
                if evs is not None:
                    try:
                        evs.remove(old)
                    except ValueError:
                        pass
                    if not evs:
                        del self._order_events[entry[1]]

    def _mark_positive(self, eid: str, t: int, k: int, targets: list[tuple[_Spec, Any]]) -> None:
        for spec, ent in targets:
            bucket = spec.state.setdefault(ent, {})
            old = bucket.get(eid)
            if old is None or k < old[1]:
                bucket[eid] = (t, k)

    def _compute(self, rec: dict[str, Any], t: int) -> dict[str, Value]:
        out: dict[str, Value] = dict.fromkeys(self._columns)
        ahead = t <= self._learnt_max  # an event at or before the latest learnt one (late, or after a future one)
        for d in self._current_defs:
            out[d.name] = _current(d, rec, t)
        get = rec.get
        for spec, entity, code, window, numeric, counts, distinct, stats, rates, names, shares in self._fast_groups:
            ent = get(entity)
            if ent is None:
                continue  # features of an entity the event does not have stay missing
            if code == _WIN:
                w = spec.state.get(ent)
                if w is None:
                    for name in counts:
                        out[name] = 0.0
                    for name in distinct:
                        out[name] = 0.0
                    for name, agg, fld in stats:
                        out[name] = finish_stats(agg, 0, 0.0, 0.0, get(fld) if fld else None)
                    continue  # shares stay missing: the entity has no events
                items = w.items
                if window is not None:
                    # Evicted relative to this event's time, oldest first (items are in time order).
                    if items and items[0][0] < t - window:  # most events evict nothing: skip the call
                        w.evict(t - window, numeric)
                    elif not items or w.nv == 0:
                        w.s = w.s2 = 0.0  # as evict() does when no number is left: exact zeros, no drift
                if ahead and items and items[-1][0] >= t:  # items at or after this event (late/future): unseen
                    user = get("user_id") if shares else None
                    wn, wnv, ws, ws2, wnd, wnu = w.before(t, numeric, user)
                    for name in counts:
                        out[name] = float(wn)
                    for name in distinct:
                        out[name] = float(wnd)
                    for name, agg, fld in stats:
                        out[name] = finish_stats(agg, wnv, ws, ws2, get(fld) if fld else None)
                    for name in shares:
                        out[name] = wnu / wn if user is not None and wn > 0 else None
                    continue
                if counts:
                    n = float(w.n)
                    for name in counts:
                        out[name] = n
                if distinct:
                    nd = float(len(w.counter)) if w.counter is not None else 0.0
                    for name in distinct:
                        out[name] = nd
                for name, agg, fld in stats:
                    out[name] = finish_stats(agg, w.nv, w.s, w.s2, get(fld) if fld else None)
                if shares:
                    user = get("user_id")
                    share = (w.counter.get(user, 0) / w.n if user is not None and w.n > 0  # type: ignore[union-attr]
                             else None)
                    for name in shares:
                        out[name] = share
            elif code == _RATE:
                st = spec.state.get(ent)
                hits = n = 0
                if st is not None:
                    hits = _matured(st, 1, t)
                    n = _matured(st, 3, t) if spec.labelled else st[0]
                for name, (mp, m) in rates:
                    out[name] = (hits + mp) / (n + m)
            elif code == _DELAYED:
                n = _delayed_count(spec, ent, t)
                for name in counts:
                    out[name] = float(n)
                for name, pos in rates:  # label_rate
                    out[name] = _label_hits(pos, ent, t) / n if n > 0 else None
            elif code == _SINCE:
                prev = spec.state.get(ent)
                if type(prev) is list:  # "last" after a later time: the latest one strictly before this event
                    i = bisect.bisect_left(prev, t)
                    prev = prev[i - 1] if i else None
                elif prev is not None and prev > t:
                    prev = None  # only later times are known (a late event, or one after a future-dated one)
                value = (t - prev) / 1e6 if prev is not None else None
                for name in names:
                    out[name] = value
            else:  # _NEW
                v = get(spec.field)  # type: ignore[arg-type]
                if v is None:
                    continue
                seen = spec.state.get(ent)
                prev = seen.get(v) if seen is not None else None
                fresh = 1.0 if prev is None or (window is not None and prev < t - window) else 0.0
                for name in names:
                    out[name] = fresh
        if self._rings is not None:
            self._rings.advance(_as_dt(t))
            for name, v in zip(self._rings.names, self._rings.values(rec), strict=True):
                out[name] = v
        for name, num_name, den_name in self._derived:
            num, den = out[num_name], out[den_name]
            out[name] = num / den if num is not None and den else None  # type: ignore[operator]
        if self._attrs:
            attrs = _attrs_dict(rec)
            for a, name, key in self._attrs:
                out[name] = _attr_value(a, attrs.get(key), t)
        return out


_WIN, _DELAYED, _SINCE, _NEW, _LAST, _FIRST, _POS, _RATE = range(8)
_LAST_KEEP = 4  # latest times kept per entity for "seconds since the last ..." features
_SWEEP_EVERY = 250  # learnt events between two steps of the sweep through expired windows (~0.6 ms each)
_SWEEP_KEYS = 500  # entities looked at per step: two per event, ahead of the new windows events open
_SWEEP_SLACK_US = 3_600 * 1_000_000  # a window is dropped an hour after its last item left it (late events)
_CLOCK_EVENTS = 64  # the sweep's clock: the earliest of this many last learnt times


def _item_ts(item: tuple[int, Any]) -> int:
    return item[0]


def _matured(st: list[Any], i: int, t: int) -> int:
    """Count at ``st[i]`` after maturing the pending times ``st[i + 1]`` before ``t`` (non-decreasing t)."""
    pending = st[i + 1]
    if pending and pending[0] < t:
        j = bisect.bisect_left(pending, t)
        st[i] += j
        del pending[:j]
    return st[i]  # type: ignore[no-any-return]


def _move(st: list[Any], i: int, old: int | None, new: int) -> None:
    """Replace a pending time ``old`` (if still pending) by ``new``; a matured one needs nothing: new < old."""
    pending = st[i + 1]
    if old is not None:
        j = bisect.bisect_left(pending, old)
        if j == len(pending) or pending[j] != old:
            return  # matured already, and the earlier time would be too
        del pending[j]
    bisect.insort(pending, new)


def _delayed_count(spec: _Spec, ent: Any, t: int) -> int:
    lst = spec.state.get(ent)
    if not lst:
        return 0
    hi_t = t - spec.delay
    lo_t = hi_t - spec.window if spec.window is not None else None
    lo = bisect.bisect_left(lst, lo_t) if lo_t is not None else 0
    if lo > 256 and lo > len(lst) // 2:
        del lst[:lo]  # drop what no window can see any more
        lo = 0
    return bisect.bisect_left(lst, hi_t, lo) - lo


def _attrs_dict(rec: dict[str, Any]) -> dict[str, Any]:
    """The event's ``attrs`` as a dict (parsed when it came as JSON text; empty when absent or broken)."""
    attrs = rec.get("attrs")
    if isinstance(attrs, str):
        try:
            attrs = orjson.loads(attrs)
        except orjson.JSONDecodeError:
            attrs = None
    return attrs if isinstance(attrs, dict) else {}


def _label_hits(pos: _Spec, ent: Any, t: int) -> int:
    bucket = pos.state.get(ent)
    if not bucket:
        return 0
    hi = t - pos.delay
    lo = hi - (pos.window or 0)
    hits = 0
    stale = []
    for eid, (ts, k) in bucket.items():
        if ts < lo:
            stale.append(eid)
        elif ts < hi and k < t:
            hits += 1
    for eid in stale:
        del bucket[eid]
    return hits


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _current(d: FeatureDef, rec: dict[str, Any], t: int) -> Value:
    agg = d.aggregate
    if agg == "hour":
        return float((t // 3_600_000_000) % 24)
    if agg == "weekday":
        return float((t // 86_400_000_000 + 3) % 7)  # 1970-01-01 was a Thursday (3)
    v = rec.get(d.field)  # type: ignore[arg-type]
    if agg == "value":
        return _num(v)
    if agg == "category":
        return None if v is None else str(v)
    if agg == "length":
        return None if v is None else float(len(str(v)))
    if agg == "seconds_between":
        a, b = _opt_ts_us(v), _opt_ts_us(rec.get(d.other))  # type: ignore[arg-type]
        return (b - a) / 1e6 if a is not None and b is not None else None
    if agg == "field_ratio":
        a, b = _num(v), _num(rec.get(d.other))  # type: ignore[arg-type]
        return a / b if a is not None and b else None
    raise ValueError(agg)


def _attr_value(a: AttrFeature, v: Any, t: int) -> Value:
    """One attrs value the way the batch engine reads it (JSON text, then typed)."""
    if v is None:
        return None
    if a.kind == "categorical":
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return v
        return orjson.dumps(v).decode()
    if a.kind == "numeric":
        if isinstance(v, bool) or v in ("true", "false"):
            return 1.0 if v in (True, "true") else 0.0
        if isinstance(v, dict | list):
            return None
        return _num(v)
    if not isinstance(v, str):
        return None
    start = _opt_ts_us(v)
    return (t - start) / 1e6 if start is not None else None


def replay(engine: OnlineFeatureEngine, records: Iterable[dict[str, Any]]) -> list[dict[str, Value]]:
    """Run ``update`` over records in order and collect the features (tests, backtests)."""
    return [engine.update(r) for r in records]
