"""The in-process decision engine: event -> store -> online features -> model score -> rules -> decision.

One ``DecisionEngine`` owns the service's state (online features, the model slot, the rules, the
account-link graph) and is used by the HTTP routes and by the benchmark directly. Deciding is
serialised under one lock (online features are order dependent) and a request's events are scored by
the model in one pass. Storing goes through ``StoreWriter``: one thread appends whatever decisions are
waiting to an fsync-ed journal in one write (group commit), so concurrent requests share an fsync while
each answer still waits for its own: a 2xx is only sent for a durably stored event. The journal is
written into DuckDB in larger transactions off the request path and replayed after a crash.

Idempotency: an ``event_id`` seen before is answered with its original decision (from memory, from
the in-flight commit it is waiting on, or from the store) and is not learnt by the features again.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shopguard.decision.cases import RISK_RANK, WebhookDispatcher, case_for, should_open
from shopguard.decision.rules import SEVERITY, ReloadingRules, RuleResult
from shopguard.errors import ModelError, ShopguardError, ValidationFailed
from shopguard.events.schema import derive_event_id, parse_event
from shopguard.models import registry as reg
from shopguard.store import EventStore

log = logging.getLogger("shopguard.service")

ACTION_RISK = {"allow": "low", "review": "medium", "challenge": "high", "block": "critical"}
RECENT_DECISIONS = 100_000  # decisions kept in memory for fast repeated-id answers
RECENT_BYTES = 32 << 20  # ...and at most this many bytes of them (each is compact JSON; older ids: the store)
_ENTRY_OVERHEAD = 150  # bytes object header, ordered-dict slot and id key per remembered answer (approx.)
LABELS_PER_LOCK = 100  # labels learnt per hold of the decision lock


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------
@dataclass
class ModelOutput:
    score: float
    probability: float | None
    risk_level: str
    action: str
    reasons: list[dict[str, Any]]
    # The score's percentile among the validation events, for models calibrated without labels (their
    # ``probability`` is then None: a percentile is not a probability, and ``probability >= 0.98`` must
    # not read as "the model is very sure"). Rules see it as ``score_percentile``.
    percentile: float | None = None


class LoadedModel:
    """A model bundle behind one call: features of one event in, score/probability/risk/action out."""

    def __init__(self, bundle: Any, version: str, path: Path, manifest: dict[str, Any] | None = None, *,
                 fast: bool = True) -> None:
        self.bundle = bundle
        self.version = version
        self.path = path
        self.manifest = manifest or {}
        fs = getattr(bundle, "feature_set", None)
        self.feature_set = fs
        self.feature_set_version = str(getattr(fs, "version", None) or self.manifest.get("feature_set_version") or "")
        cal = getattr(bundle, "calibrator", None)
        # Calibrated without labels: what the bundle calls probability is the score's percentile.
        self.percentile_only = cal is not None and getattr(cal, "is_probability", True) is False
        # A fusion model (transformer + features) scores from each user's event history too: served by its
        # ONNX graph over a per-user history cache that the engine warms (api.fusion); None otherwise.
        self.fusion: Any = None
        from shopguard.models.base import needs_events

        if needs_events(getattr(bundle, "detector", None)):
            from shopguard.api.fusion import FusionServing

            self.fusion = FusionServing(bundle, path)
        # Plain rows straight into LightGBM's C single-row predictor (no frame): same decisions as
        # ``bundle.decide``, a sixth of the CPU per event; None for other models (they take the frame path).
        self.fast = _row_scorer(bundle) if fast and self.fusion is None else None

    @classmethod
    def load(cls, path: Path, *, feature_set_version: str | None = None, version: str | None = None,
             fast: bool = True) -> LoadedModel:
        """Verify (when a manifest is present) and load a model folder; raises ModelError otherwise."""
        manifest: dict[str, Any] | None = None
        if (path / reg.MANIFEST).exists():
            manifest = reg.verify(path, feature_set_version=feature_set_version)
        try:
            from shopguard.models.bundle import ModelBundle
        except ImportError as exc:
            raise ModelError(f"model bundles are unavailable in this install: {exc}", field="model") from None
        try:
            bundle = ModelBundle.load(path)
        except ShopguardError:
            raise
        except Exception as exc:  # a corrupted pickle and the like: refuse with a clear error
            raise ModelError(f"model at {path} cannot be loaded: {exc}", field="model", value=str(path)) from None
        version = version or str(getattr(bundle, "model_version", None) or (manifest or {}).get("version")
                                 or path.name)
        return cls(bundle, version, path, manifest, fast=fast)

    def decide(self, features: dict[str, Any]) -> ModelOutput:
        return self.decide_many([features])[0]

    def decide_many(self, rows: list[dict[str, Any]]) -> list[ModelOutput]:
        """Score several events in one call (one model pass: batches are much cheaper per event)."""
        fast = self.fast
        if fast is not None:
            try:
                found = fast.decide(rows)
            except Exception:  # never worse than the frame path: it decides (or raises) instead
                log.exception("fast row scoring failed for model %s; using the frame path", self.version)
                found = None
            if found is not None:
                return [ModelOutput(d.score, d.probability, d.risk_level.value, d.action.value,
                                    [{"code": r.code, "text": r.text, "source": "model"} for r in d.reasons])
                        for d in found]
        return self._decide_frame(rows)

    def _decide_frame(self, rows: list[dict[str, Any]]) -> list[ModelOutput]:
        """The general path: one Polars frame through ``ModelBundle.decide`` (any detector)."""
        import polars as pl

        frame = pl.DataFrame(rows, infer_schema_length=None)
        decide = getattr(self.bundle, "decide", None)
        if decide is None:
            return [ModelOutput(float(x), None, "low", "allow", []) for x in self.bundle.score(frame)]
        out = []
        # Reasons only where the action is not allow: contributions cost several times the score.
        for d in decide(frame, explain="flagged"):
            reasons = []
            for r in getattr(d, "reasons", None) or []:
                if isinstance(r, dict):
                    reasons.append({"code": str(r.get("code")), "text": str(r.get("text", "")), "source": "model"})
                else:
                    reasons.append({"code": str(getattr(r, "code", r)), "text": str(getattr(r, "text", "")),
                                    "source": "model"})
            prob = getattr(d, "probability", None)
            out.append(ModelOutput(float(d.score), None if prob is None else float(prob),
                                   str(_enum_value(d.risk_level)), str(_enum_value(d.action)), reasons))
        return out


def _row_scorer(bundle: Any) -> Any:
    """``models.fastscore.RowScorer`` for the bundle, or None (other detectors, or unavailable)."""
    try:
        from shopguard.models.fastscore import RowScorer

        return RowScorer.for_bundle(bundle)
    except Exception:  # an optimisation only: the frame path always works
        log.exception("fast row scoring unavailable; models are scored through frames")
        return None


def _enum_value(v: Any) -> Any:
    return getattr(v, "value", v)


class _RegistryFollower:
    """Follows a model registry's current pointer from the watcher thread (one stat when unchanged)."""

    registry: reg.ModelRegistry | None
    _lock: threading.Lock
    _state_mtime: int | None

    def _follow(self) -> bool:
        raise NotImplementedError

    def check(self) -> bool:
        """Follow the registry's current pointer; returns whether a new version is now serving."""
        if self.registry is None:
            return False
        m = _mtime_ns(self.registry.state_path)
        if m == self._state_mtime:
            return False
        with self._lock:
            self._state_mtime = m
            return self._follow()


class ModelSlot(_RegistryFollower):
    """The model in service, swapped atomically; a model that fails to load never replaces the current one.

    ``source`` is a model folder or a registry root; for a registry the slot follows its current pointer
    (``check()``, called from a watcher thread), loading the new version off the request path and
    swapping one reference, so requests in flight finish on the old model and none is dropped.
    """

    def __init__(self, source: Path | None, *, on_change: Callable[[LoadedModel | None], None] | None = None,
                 fast_scoring: bool = True) -> None:
        self.source = source
        self.fast_scoring = fast_scoring  # LoadedModel.fast for the models it loads
        self.model: LoadedModel | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self.on_change = on_change
        # How a newly loaded version goes in: called with (model, swap) off the request path; the engine
        # sets it (a fusion model's history cache is warmed before ``swap()`` is called). None: swap at once.
        self.installer: Callable[[LoadedModel, Callable[[], None]], None] | None = None
        self._lock = threading.Lock()
        self._state_mtime: int | None = None
        self.registry = reg.ModelRegistry(source) if source is not None and reg.is_registry(source) else None

    def load_initial(self) -> None:
        if self.source is None:
            return
        if not self.source.exists():
            raise ModelError(f"model path {self.source} does not exist", field="model", value=str(self.source))
        if self.registry is not None:
            self._state_mtime = _mtime_ns(self.registry.state_path)
            cur = self.registry.current_path()
            if cur is None:
                self.last_error = f"registry {self.source} has no promoted version yet"
                return
            self._set(LoadedModel.load(cur, version=cur.name, fast=self.fast_scoring))
        else:
            self._set(LoadedModel.load(self.source, fast=self.fast_scoring))

    def _set(self, model: LoadedModel | None) -> None:
        if model is not None:
            log.info("model %s scores %s", model.version, "frame-free (LightGBM C single-row predictor)"
                     if model.fast is not None else "through Polars frames")
        self.model = model  # one reference assignment: atomic for readers
        self.swaps += 1
        if self.on_change is not None:
            self.on_change(model)

    def _follow(self) -> bool:
        return self.reload()

    def reload(self) -> bool:
        if self.registry is None:
            return False
        try:
            cur = self.registry.current_version()
            if cur is None or (self.model is not None and self.model.path == self.registry.root / cur):
                return False
            want = self.model.feature_set_version if self.model is not None else None
            new = LoadedModel.load(self.registry.root / cur, feature_set_version=want or None, version=cur,
                                   fast=self.fast_scoring)
            if self.model is not None and self.model.feature_set_version and new.feature_set_version \
                    and new.feature_set_version != self.model.feature_set_version:
                raise ModelError(f"model {cur} computes feature set {new.feature_set_version}, the service "
                                 f"runs {self.model.feature_set_version}: restart the service to switch",
                                 field="feature_set_version", value=new.feature_set_version)
            if self.installer is not None:
                self.installer(new, functools.partial(self._set, new))
            else:
                self._set(new)
        except ShopguardError as exc:
            self.last_error = exc.message
            log.error("model not swapped, %s keeps serving: %s", self.version, exc.message)
            return False
        except Exception as exc:  # never expected: still keeps the current model and says so
            self.last_error = f"model reload failed ({type(exc).__name__}); the current model keeps serving"
            log.exception("model not swapped, %s keeps serving", self.version)
            return False
        self.last_error = None
        log.info("model %s now serving", new.version)
        return True

    @property
    def version(self) -> str | None:
        m = self.model
        return None if m is None else m.version


class TextModelSlot(_RegistryFollower):
    """The review/chat text model in service, hot swapped like the main model.

    ``source`` is a text model folder (``shopguard train --detector text``) or a registry root holding
    text model versions (``shopguard models register``); for a registry the slot follows its current
    pointer (``check()``, from the watcher thread). A new version is verified (manifest checksums), loaded
    and type-checked off the request path, then swapped in with one assignment on the engine's
    ``OnlineTextScorer`` (its review history is kept: only the model changes). A corrupted or wrong
    artifact is refused with a clear error and the current model keeps serving.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        self.scorer: Any = None  # the engine's OnlineTextScorer, bound once the engine exists
        self.version: str | None = None
        self.path: Path | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._lock = threading.Lock()
        self._state_mtime: int | None = None
        self.registry = reg.ModelRegistry(source) if source.is_dir() and reg.is_registry(source) else None

    def load_initial(self) -> Any:
        """The detector to start with (raises ModelError: a service must not start on a bad text model)."""
        if not self.source.exists():
            raise ModelError(f"text model path {self.source} does not exist", field="text_model",
                             value=str(self.source))
        if self.registry is None:
            path, version = self.source, self.source.name
        else:
            self._state_mtime = _mtime_ns(self.registry.state_path)
            cur = self.registry.current_version()
            if cur is None:
                raise ModelError(f"text model registry {self.source} has no promoted version yet",
                                 field="text_model", value=str(self.source))
            path, version = self.registry.root / cur, cur
        det = load_text_model(path)
        self.path, self.version = path, version
        return det

    def bind(self, scorer: Any) -> None:
        self.scorer = scorer

    def _follow(self) -> bool:
        return self._reload()

    def reload(self) -> bool:
        with self._lock:  # the watcher and POST /v1/models/text/reload may both ask
            return self._reload()

    def _reload(self) -> bool:
        if self.registry is None or self.scorer is None:
            return False
        try:
            cur = self.registry.current_version()
            if cur is None or self.registry.root / cur == self.path:
                return False
            det = load_text_model(self.registry.root / cur)
        except ShopguardError as exc:
            self.last_error = f"text model: {exc.message}"
            log.error("text model not swapped, %s keeps serving: %s", self.version, exc.message)
            return False
        except Exception as exc:  # never expected: the current text model keeps serving
            self.last_error = f"text model reload failed ({type(exc).__name__})"
            log.exception("text model not swapped, %s keeps serving", self.version)
            return False
        self.scorer.model = det  # one reference: a review being scored finishes on the model it started with
        self.path, self.version = self.registry.root / cur, cur
        self.last_error = None
        self.swaps += 1
        log.info("text model %s now serving", cur)
        return True


def load_text_model(path: Path) -> Any:
    """Verify (when a manifest is present), load and type-check a text model folder; ModelError otherwise."""
    if (path / reg.MANIFEST).exists():
        reg.verify(path)
    from shopguard.models.base import load_detector
    from shopguard.models.text.scoring import TextEventDetector

    try:
        det = load_detector(path)
    except ShopguardError:
        raise
    except Exception as exc:  # a corrupted file the loader did not anticipate
        raise ModelError(f"text model at {path} cannot be loaded: {exc}", field="text_model",
                         value=str(path)) from None
    if not isinstance(det, TextEventDetector):
        raise ModelError(f"{path} holds a {type(det).__name__}, not a text model", field="text_model",
                         value=str(path))
    return det


def check_servable(path: Path, *, serving: Path | None = None) -> str:
    """Load a model folder exactly as ``serve`` would (verify, load, build its scorer) and check its
    feature set against what this code computes and what ``serving`` (the version in service) computes.
    Returns what it is ("model <version>" or "text model"); raises ModelError naming the problem."""
    from shopguard.models.registry import current_feature_set_version

    manifest = reg.read_manifest(path)
    if manifest.get("format") != "shopguard-model":
        load_text_model(path)  # a review/chat text model: the text slot's loader, type check included
        return "text model"
    try:
        model = LoadedModel.load(path, version=path.name)
    except ShopguardError:
        raise
    except Exception as exc:  # LoadedModel.load wraps the bundle; anything else is still a refusal
        raise ModelError(f"model at {path} cannot be served: {type(exc).__name__}: {str(exc)[:200]}",
                         field="model", value=str(path)) from None
    have = model.feature_set_version or None
    code = current_feature_set_version()
    fs = model.feature_set
    if fs is not None and code is not None and have is not None and have != code:
        # The online engine builds the model's own feature set; refuse only when it cannot.
        try:
            _make_feature_engine(model)
        except Exception as exc:
            raise ModelError(f"model {path.name} needs feature set {have}, which the service's online feature "
                             f"engine cannot compute ({str(exc)[:200]})", field="feature_set_version",
                             value=have) from None
    if serving is not None and have is not None:
        try:
            cur = reg.read_manifest(serving)
        except ShopguardError:
            cur = {}
        running = cur.get("feature_set_version") or cur.get("feature_version")
        if running and str(running) != str(have):
            raise ModelError(f"model {path.name} computes feature set {have}, the version in service "
                             f"({serving.name}) computes {running}: a running service refuses this swap; "
                             "promote it with --feature-set-change and restart the service",
                             field="feature_set_version", value=have)
    return f"model {model.version}"


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------
# Store writer: a journal for durability, group commits into DuckDB
# ---------------------------------------------------------------------------------------------------
_TS_KEYS = {"events": ("ts", "promised_ts", "actual_ts"), "decisions": ("decided_at",), "cases": ("opened_at",)}


@dataclass
class _Job:
    events: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    future: cf.Future[int] = field(default_factory=cf.Future)


_Rows = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class _Flush:
    future: cf.Future[int] = field(default_factory=cf.Future)


class StoreWriter:
    """Makes decided events durable before they are acknowledged, then writes them into DuckDB.

    With a ``journal`` (the service's default: ``DB.journal.<n>`` segments next to the store), the
    writer thread appends each group of waiting jobs to the current segment as one JSON line and
    ``fsync``-s it: that is the commit a 2xx waits for (one fsync per group, instead of a DuckDB
    transaction, which costs tens of milliseconds). Every ``apply_every_s`` (or ``apply_max`` events)
    the segment is closed and handed to a second thread that writes it into DuckDB in one transaction
    and deletes it, so acknowledgements never wait behind DuckDB. On start, segments a crash left
    behind are applied first; appends are idempotent, so applying twice is harmless, and a torn last
    line was never acknowledged.

    Without a journal each group is committed straight into DuckDB before acknowledgement.
    """

    def __init__(self, store: EventStore, *, max_batch: int = 2_000, journal: Path | None = None,
                 fsync: bool = True, apply_every_s: float = 0.25, apply_max: int = 20_000) -> None:
        self.store = store
        self.max_batch = max_batch
        self.journal = journal
        self.fsync = fsync
        self.apply_every_s = apply_every_s
        self.apply_max = apply_max
        self._q: queue.Queue[_Job | _Flush | None] = queue.Queue()
        self._applyq: queue.Queue[tuple[Path, int] | _Flush | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._applier: threading.Thread | None = None
        self._fd: int | None = None
        self._segment: Path | None = None
        self._seq = 0
        self._pending = 0  # acknowledged events in the current segment, not yet handed to the applier
        self._pending_since = 0.0
        self.commits = 0
        self.committed_events = 0
        self.recovered = 0
        self.apply_error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.journal is not None:
            self.recovered = self.recover()
            self._open_segment()
            self._applier = threading.Thread(target=self._apply_loop, name="shopguard-applier", daemon=True)
            self._applier.start()
        self._thread = threading.Thread(target=self._run, name="shopguard-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(30)
            self._thread = None
        if self._applier is not None:
            self._applyq.put(None)
            self._applier.join(60)
            self._applier = None

    def alive(self) -> bool:
        ok = self._thread is not None and self._thread.is_alive()
        return ok and (self.journal is None or (self._applier is not None and self._applier.is_alive()))

    def submit(self, events: list[dict[str, Any]], decisions: list[dict[str, Any]],
               cases: list[dict[str, Any]]) -> cf.Future[int]:
        job = _Job(events, decisions, cases)
        if self._thread is None:
            job.future.set_exception(ShopguardError("the store writer is not running"))
            return job.future
        self._q.put(job)
        return job.future

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything acknowledged so far is in DuckDB (read-your-writes for analyst reads)."""
        if self._thread is None or self.journal is None:
            return
        f = _Flush()
        self._q.put(f)
        f.future.result(timeout)

    # -- journal -----------------------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        assert self.journal is not None
        found = []
        for p in self.journal.parent.glob(self.journal.name + ".*"):
            suffix = p.name[len(self.journal.name) + 1:]
            if suffix.isdigit():
                found.append((int(suffix), p))
        return [p for _, p in sorted(found)]

    def recover(self) -> int:
        """Apply the journal segments a previous run left, in order, then delete them; returns events."""
        total = 0
        for seg in self._segments():
            total += self._apply_segment(seg)
            seg.unlink()
            self._seq = max(self._seq, int(seg.name.rsplit(".", 1)[1]))
        if total:
            log.info("recovered %d journalled events into the store", total)
        return total

    def _apply_segment(self, segment: Path) -> int:
        """Write one closed journal segment into DuckDB (one transaction); returns its events.

        The segment's JSON lines go straight into Arrow tables (``journal_tables``: pyarrow's JSON reader,
        C++ without the GIL, so the event loop keeps running) and into the store with plain inserts.
        A segment that reader refuses (an unusual value) takes the general path: Python rows through
        ``EventStore.append_decided``.
        """
        data = segment.read_bytes()
        try:
            tables = journal_tables(data)
        except Exception as exc:
            log.warning("journal segment %s read row by row (%s)", segment.name, exc)
            tables = None
        if tables is not None:
            if tables[0].num_rows:
                self.store.append_decided_tables(*tables)
            return tables[0].num_rows
        rows = _journal_rows(data)
        if rows[0]:
            self.store.append_decided(*rows)
        return len(rows[0])

    def _open_segment(self) -> None:
        assert self.journal is not None
        self._seq += 1
        self._segment = Path(f"{self.journal}.{self._seq}")
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _journal(self, jobs: list[_Job]) -> None:
        assert self._fd is not None
        entry = {"events": [e for j in jobs for e in j.events], "decisions": [d for j in jobs for d in j.decisions],
                 "cases": [c for j in jobs for c in j.cases]}
        data = orjson.dumps(entry, default=str) + b"\n"
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except BaseException:
            # Not acknowledged, so not in the segment either: the applier reads the segment file, and must
            # find exactly the acknowledged groups there.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                log.exception("could not cut an unacknowledged group off %s", self._segment)
            raise

    def _hand_off(self) -> None:
        """Close the current segment and give it to the applier; new acks go to a fresh segment."""
        if not self._pending or self._segment is None or self._fd is None:
            return
        os.close(self._fd)
        self._applyq.put((self._segment, self._pending))
        self._pending = 0
        self._open_segment()

    def _apply_loop(self) -> None:
        while True:
            item = self._applyq.get()
            if item is None:
                return
            if isinstance(item, _Flush):
                if self.apply_error:
                    item.future.set_exception(ShopguardError(self.apply_error))
                else:
                    item.future.set_result(0)
                continue
            segment, n = item
            while True:
                try:
                    self._apply_segment(segment)
                    break
                except Exception as exc:  # stays journalled: retried here, and recovered on restart
                    self.apply_error = f"writing journalled events into the store failed: {exc}"
                    log.exception("apply of %d journalled events failed; retrying", n)
                    time.sleep(1.0)
            self.apply_error = None
            segment.unlink(missing_ok=True)

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            wait = None
            if self._pending:
                wait = max(0.0, self._pending_since + self.apply_every_s - time.monotonic())
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                self._hand_off()  # time to apply
                continue
            items = [item]
            n = len(item.events) if isinstance(item, _Job) else 0
            while n < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                items.append(nxt)
                n += len(nxt.events) if isinstance(nxt, _Job) else 0
            jobs = [i for i in items if isinstance(i, _Job)]
            if jobs:
                self._commit(jobs)
            stopping = any(i is None for i in items)
            flushes = [i for i in items if isinstance(i, _Flush)]
            if self.journal is not None and (flushes or stopping or self._pending >= self.apply_max):
                self._hand_off()
                for f in flushes:
                    self._applyq.put(f)  # answered by the applier once everything before it is in DuckDB
            if stopping:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                    if self._segment is not None and self._segment.stat().st_size == 0:
                        self._segment.unlink(missing_ok=True)
                return

    def _commit(self, jobs: list[_Job]) -> None:
        events = [e for j in jobs for e in j.events]
        try:
            if self.journal is not None:
                self._journal(jobs)
            elif events:
                self.store.append_decided(events, [d for j in jobs for d in j.decisions],
                                          [c for j in jobs for c in j.cases])
            self.commits += 1
            self.committed_events += len(events)
        except Exception as exc:  # nothing durable: every waiting request learns it (503), none is acked
            log.exception("commit of %d events failed", len(events))
            for j in jobs:
                j.future.set_exception(exc)
            return
        if self.journal is not None:
            if not self._pending:
                self._pending_since = time.monotonic()
            # The applier reads the rows back from the segment file: nothing is kept in memory here.
            self._pending += len(events)
        for j in jobs:
            j.future.set_result(len(j.events))


@functools.cache
def _journal_schema() -> Any:
    """A journal line as Arrow sees it: three lists of records in the store's table schemas."""
    import pyarrow as pa

    from shopguard.store.duckdb import CASE_ARROW_SCHEMA, DECISION_ARROW_SCHEMA, EVENT_ARROW_SCHEMA

    return pa.schema([(name, pa.list_(pa.struct(list(schema)))) for name, schema in
                      (("events", EVENT_ARROW_SCHEMA), ("decisions", DECISION_ARROW_SCHEMA),
                       ("cases", CASE_ARROW_SCHEMA))])


def journal_tables(data: bytes) -> tuple[Any, Any, Any]:
    """The events, decisions and cases of a journal segment's bytes as Arrow tables in the store's schemas.

    Each line is one group commit ``{"events": [...], "decisions": [...], "cases": [...]}``; a torn last
    line (no newline: the process died while writing it, so it was never acknowledged) is left out.
    Raises on anything pyarrow's JSON reader cannot type exactly (the caller then reads row by row).
    """
    import pyarrow as pa
    import pyarrow.json as pj

    from shopguard.store.duckdb import CASE_ARROW_SCHEMA, DECISION_ARROW_SCHEMA, EVENT_ARROW_SCHEMA

    end = data.rfind(b"\n") + 1
    schemas = (EVENT_ARROW_SCHEMA, DECISION_ARROW_SCHEMA, CASE_ARROW_SCHEMA)
    if end == 0:
        return tuple(s.empty_table() for s in schemas)  # type: ignore[return-value]
    table = pj.read_json(
        pa.BufferReader(memoryview(data)[:end]),
        # One block on the calling thread: the applier must not take the event loop's core.
        read_options=pj.ReadOptions(use_threads=False, block_size=max(end, 1 << 20)),
        parse_options=pj.ParseOptions(explicit_schema=_journal_schema(), unexpected_field_behavior="ignore"),
    )
    out = []
    for name, schema in zip(("events", "decisions", "cases"), schemas, strict=True):
        arr = table.column(name).combine_chunks().flatten()  # list<struct> -> struct, one row per record
        out.append(pa.Table.from_struct_array(arr).cast(schema))
    return out[0], out[1], out[2]


def _journal_rows(data: bytes) -> _Rows:
    """A journal segment's rows as Python dicts (the general path), stopping at a torn line."""
    rows: _Rows = ([], [], [])
    for line in data.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            break  # a torn last line: written while the process died, never acknowledged
        for i, kind in enumerate(("events", "decisions", "cases")):
            rows[i].extend(_revive(kind, r) for r in entry.get(kind, []))
    return rows


def _revive(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """Journal rows come back with ISO strings where the store wants datetimes."""
    for k in _TS_KEYS[kind]:
        v = row.get(k)
        if isinstance(v, str):
            row[k] = datetime.fromisoformat(v)
    return row


# ---------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------
class Unavailable(ShopguardError):
    """The store could not commit: nothing was acknowledged."""

    status_code = 503


@dataclass
class Prepared:
    record: dict[str, Any]  # the validated, pseudonymised flat record as stored
    index: int


class DecisionEngine:
    """Decides events and stores them; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: EventStore,
        *,
        rules: ReloadingRules | None = None,
        model: ModelSlot | None = None,
        pseudonymiser: Any = None,
        case_risk_level: str = "high",
        webhooks: WebhookDispatcher | None = None,
        writer_max_batch: int = 2_000,
        journal: Path | None = None,
        journal_fsync: bool = True,
        journal_apply_every_s: float = 0.25,
        features: Any = None,
        metrics: Any = None,
        sequence: Any = None,
        text: Any = None,
        text_min_score: float = 0.5,
        max_future_s: float | None = 300.0,
    ) -> None:
        self.store = store
        self.max_future_s = max_future_s
        self.rules = rules or ReloadingRules(None)
        self.model = model or ModelSlot(None)
        self.pseudonymiser = pseudonymiser
        self.case_risk_level = case_risk_level
        self.webhooks = webhooks or WebhookDispatcher([])
        self.writer = StoreWriter(store, max_batch=writer_max_batch, journal=journal, fsync=journal_fsync,
                                  apply_every_s=journal_apply_every_s)
        self.features = features
        self.metrics = metrics
        self._lock = threading.RLock()
        self._pending: dict[str, cf.Future[dict[str, Any]]] = {}
        # Answers as JSON bytes: bytes are not tracked by the garbage collector, so 100,000 remembered
        # decisions (a million small dicts and lists otherwise) never lengthen a collection pause.
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._known: set[str] = set()
        self.ready = False
        self.features_error: str | None = None
        self.graph: Any = None  # live account-link index (features.graph.RingIndex) for timelines
        self.graph_skipped = 0
        # Optional behaviour-transformer scorer (models.sequence.export.IncrementalScorer): its score is
        # ``sequence_score`` in the rule context.
        self.sequence = sequence
        # Optional review/chat text model (models.text.TextEventDetector, or an OnlineTextScorer around
        # one): review and chat decisions take the larger of its score and the model's probability.
        self.text: Any = None
        if text is not None:
            from shopguard.models.text.decisions import OnlineTextScorer

            self.text = text if isinstance(text, OnlineTextScorer) else OnlineTextScorer(text)
        self.text_errors = 0
        self.text_min_score = text_min_score
        self.text_slot: TextModelSlot | None = None  # set by the app when the text model can be hot swapped
        # Events learnt while a fusion model's history is being warmed for a hot swap (install_model).
        self._taps: list[list[dict[str, Any]]] = []
        # Tombstoned (erased) users (store.erasure.ErasedUsers): their events are answered, never stored.
        self.erased: Any = None
        if self.model.installer is None:
            self.model.installer = self.install_model

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, rebuild_features: bool = True) -> None:
        """Recover the journal, load ids already stored, rebuild online features, start the threads."""
        self.writer.start()  # first: it applies what a crash left in the journal
        from shopguard.store.erasure import ErasedUsers

        self.erased = ErasedUsers.load(self.store, pseudonymiser=self.pseudonymiser)
        ids = self.store.query("SELECT event_id FROM events")
        self._known = set(ids["event_id"].to_list()) if ids.height else set()
        if self.features is None:
            self.features = _make_feature_engine(self.model.model)
        if self.features is not None and rebuild_features:
            try:
                self.features.rebuild(self.store)
            except Exception as exc:  # features unavailable: rules on raw fields and the model still run
                self.features_error = f"online features could not be rebuilt: {exc}"
                log.error(self.features_error)
                self.features = None
        fusion = getattr(self.model.model, "fusion", None)
        if (self.sequence is not None or fusion is not None) and rebuild_features:
            events = self.store.events()
            if self.sequence is not None:
                self.sequence.warm(events)
            if fusion is not None:
                fusion.warm(events)
        if self.text is not None:
            try:
                self.text.warm(self.store)
            except Exception as exc:  # text context only enriches reviews: never block start-up on it
                log.error("text history could not be warmed: %s", exc)
        try:
            from shopguard.features.graph import build_ring_index

            self.graph = build_ring_index(self.store)
        except ImportError:
            self.graph = None
        except Exception as exc:  # the graph only enriches timelines: never block start-up on it
            log.error("account-link graph could not be built: %s", exc)
            self.graph = None
        self.webhooks.start()
        self.ready = True

    def install_model(self, new: LoadedModel, swap: Callable[[], None]) -> None:
        """Put a newly loaded model in service (``ModelSlot.installer``; the watcher thread calls it).

        A fusion model reads each user's history, so its cache is filled before it decides anything:
        from the store (after the journal is applied), then from the events decided meanwhile (a tap
        records them in decision order); the last of those are learnt and the model swapped in under the
        decision lock, so no event is missed or learnt twice. Requests keep being decided by the current
        model throughout. Other models are swapped at once.
        """
        fusion = getattr(new, "fusion", None)
        if fusion is None or not self.ready:  # before start(), start() warms it
            with self._lock:
                swap()
            return
        import polars as pl

        tap: list[dict[str, Any]] = []
        with self._lock:
            self._taps.append(tap)
        try:
            self.flush()  # everything decided before the tap is in DuckDB now
            events = self.store.events()
            with self._lock:
                done = len(tap)
                seen = [r["event_id"] for r in tap[:done]]
            if seen:  # decided after the tap opened and already applied: learnt from the tap, in order
                events = events.filter(~pl.col("event_id").is_in(seen))
            fusion.warm(events)
            for rec in tap[:done]:
                fusion.learn_one(rec)
            with self._lock:
                for rec in tap[done:]:
                    fusion.learn_one(rec)
                swap()
        finally:
            with self._lock:
                self._taps = [t for t in self._taps if t is not tap]

    def stop(self) -> None:
        self.ready = False
        self.writer.stop()
        self.webhooks.stop()

    # -- validation ------------------------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], *, batch: bool) -> list[Prepared]:
        """Validate every event (all or nothing) and pseudonymise personal fields."""
        out = []
        # Future-dated events are refused: one would pin an entity's velocity windows (they evict by the
        # newest time seen) and make rules fire on its later, legitimate traffic.
        latest = None if self.max_future_s is None else _now() + timedelta(seconds=self.max_future_s)
        for i, data in enumerate(payloads):
            try:
                _check_payload(data)
                derive = isinstance(data, dict) and not data.get("event_id")
                # Without an id, parsing would hash the raw values; the id is derived below instead, from
                # the record as stored (pseudonymised): a placeholder skips the first, wasted hash.
                rec = parse_event({**data, "event_id": "_"} if derive else data).to_record()
                if latest is not None and rec["ts"] > latest:
                    if self.metrics is not None:
                        self.metrics.rejected("future_ts")
                    raise ValidationFailed(
                        f"ts: {rec['ts'].isoformat()} is more than {self.max_future_s:g} s in the future (the "
                        "service's clock-skew limit): send the time the event happened, in UTC",
                        field="ts", value=data.get("ts"))
            except ValidationFailed as exc:
                if not batch:
                    raise
                fld = f"events[{i}].{exc.field}" if exc.field else f"events[{i}]"
                raise ValidationFailed(f"events[{i}]: {exc.message}", field=fld, value=exc.value) from None
            if self.pseudonymiser is not None:
                rec = self.pseudonymiser.apply_record(rec)
            if derive:
                # From the pseudonymised values only (an unkeyed hash of raw values would let anyone test
                # guessed IPs against a stored id), exactly as ingestion derives it.
                rec["event_id"] = derive_event_id(rec)
            # attrs as JSON text, as the store keeps it: mixed attrs across a batch never confuse a frame
            attrs = rec.get("attrs")
            try:
                rec["attrs"] = orjson.dumps(attrs).decode() if attrs else None
            except (orjson.JSONEncodeError, TypeError) as exc:
                raise ValidationFailed(f"events[{i}].attrs: cannot be stored: {exc}" if batch else
                                       f"attrs: cannot be stored: {exc}",
                                       field=f"events[{i}].attrs" if batch else "attrs") from None
            out.append(Prepared(rec, i))
        return out

    # -- deciding --------------------------------------------------------------------------------------
    def submit(self, prepared: Sequence[Prepared]) -> tuple[list[Any], cf.Future[int] | None]:
        """Decide each event and queue new ones for commit.

        Returns one entry per event, each a decision dict (repeated id, already known) or a future of one
        (still being committed), and the commit future of this call's new events (None if none).
        """
        out = self.submit_groups([prepared])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def submit_groups(self, groups: Sequence[Sequence[Prepared]]
                      ) -> list[tuple[list[Any], cf.Future[int] | None] | BaseException]:
        """``submit`` for several requests at once: one model pass and one commit for all their events.

        The HTTP path coalesces the requests that arrive together into one call (one model pass costs
        about as much for a dozen events as for one). A group whose features fail gets its exception in
        its slot, and the other groups are decided as usual.
        """
        rules = self.rules.current()
        slots: list[Any] = []
        new_events: list[dict[str, Any]] = []
        new_decisions: list[dict[str, Any]] = []
        new_cases: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        todo: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]] = []
        # Text first, outside the decision lock: a slow review never holds up other requests' events.
        texts: dict[str, dict[str, Any]] = {}
        for prepared in groups:
            texts.update(self._text_scores(prepared))
        commit: cf.Future[int] | None = None
        mine: dict[str, dict[str, Any]] = {}
        relearn: set[str] = set()  # stored before but never decided: read, not learnt again
        with self._lock:
            model = self.model.model  # under the lock: a fusion model is swapped in under it (install_model)
            for prepared in groups:
                results: list[Any] = []
                opened: list[str] = []
                try:
                    erased = self.erased
                    for p in prepared:
                        eid = p.record["event_id"]
                        if erased is not None and p.record.get("user_id") in erased:
                            results.append(_erased_answer(eid))  # neither decided, stored nor learnt
                            continue
                        # Pending before recent: a commit settling meanwhile remembers the decision before
                        # it drops the pending entry, so one of the two always answers.
                        fut = self._pending.get(eid)
                        if fut is not None:
                            results.append(fut)
                            continue
                        prior = self._recall(eid)
                        if prior is not None:
                            results.append(prior)
                            continue
                        if eid in self._known:
                            stored = self.stored_decision(eid)
                            if stored is not None:
                                self._remember(eid, stored)
                                results.append(stored)
                                continue
                        # Phase 1, in order: features (each event sees the ones before it, as in the batch
                        # engine).
                        t0 = time.perf_counter()
                        learn = eid not in self._known
                        ctx, feats = self._context(p.record, learn=learn, sequence=False)
                        if not learn:
                            relearn.add(eid)
                        else:
                            for tap in self._taps:
                                tap.append(p.record)
                        if self.text is not None and learn:
                            try:
                                self.text.observe(p.record)
                            except Exception:  # enrichment only
                                log.exception("text history update failed on %s", eid)
                        if self.graph is not None and learn:
                            try:
                                self.graph.add_event(p.record)
                            except ShopguardError:  # e.g. a late event: the link graph learns in time order
                                self.graph_skipped += 1
                            except Exception:  # enrichment only
                                log.exception("graph update failed on %s", eid)
                        fut = cf.Future()
                        self._pending[eid] = fut
                        opened.append(eid)
                        results.append(fut)
                        todo.append((p.record, ctx, feats, time.perf_counter() - t0))
                except Exception as exc:
                    # This group is answered with the error; its events already queued are withdrawn (never
                    # committed, so never acknowledged).
                    drop = set(opened)
                    todo[:] = [t for t in todo if t[0]["event_id"] not in drop]
                    for eid in opened:
                        f = self._pending.pop(eid, None)
                        if f is not None:
                            f.set_exception(exc)
                    slots.append(exc)
                    continue
                slots.append((results, bool(opened)))
            # Phase 2: one transformer run and one model pass for every event; phase 3: rules and policy.
            t1 = time.perf_counter()
            self._sequence_pass(todo, relearn)
            outs = self._score(model, todo, relearn)
            share = (time.perf_counter() - t1) / max(len(todo), 1)
            for (rec, ctx, _feats, spent), out in zip(todo, outs, strict=True):
                t2 = time.perf_counter()
                out = self._with_text(rec, out, model, texts.get(rec["event_id"]))
                decision, scenario = self._finish(rec, ctx, out, rules, model)
                seconds = spent + share + (time.perf_counter() - t2)
                decision["latency_ms"] = round(seconds * 1000, 3)
                if self.metrics is not None:
                    self.metrics.observe_decision(decision, seconds)
                new_events.append(rec)
                new_decisions.append(_stored_decision(decision))
                mine[rec["event_id"]] = _public(decision)
                if should_open(decision["risk_level"], self.case_risk_level):
                    new_cases.append(case_for(decision, rec, scenario))
                    alerts.append({"event": "case_opened", "case_id": f"case_{rec['event_id']}", "scenario": scenario,
                                   "user_id": rec.get("user_id"), **decision})
            if new_events:
                commit = self.writer.submit(new_events, new_decisions, new_cases)
        if commit is not None:
            commit.add_done_callback(lambda f: self._settle(f, mine, alerts))
        # Each group gets the shared commit when it queued an event of its own (None otherwise).
        return [s if isinstance(s, BaseException) else (s[0], commit if s[1] else None) for s in slots]

    def _settle(self, commit: cf.Future[int], mine: dict[str, dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
        exc = commit.exception()
        with self._lock:
            for eid, d in mine.items():
                if exc is None:
                    # Remember before dropping the pending entry (submit looks in that order).
                    self._remember(eid, d)
                    self._known.add(eid)
                fut = self._pending.pop(eid, None)
                if fut is not None:
                    if exc is None:
                        fut.set_result(d)
                    else:
                        fut.set_exception(Unavailable(f"the store could not commit: {exc}", field="store"))
        if exc is None:
            for a in alerts:
                self.webhooks.submit(a)
            if self.metrics is not None:
                self.metrics.cases_opened(len(alerts))

    def _remember(self, eid: str, decision: dict[str, Any]) -> None:
        """Keep a compact copy of an answer for repeated ids: JSON bytes without the id (it is the key) and
        without empty fields, within ``RECENT_DECISIONS`` answers and ``RECENT_BYTES`` bytes, oldest out
        first (older ids are answered from the store). Bytes are not tracked by the garbage collector."""
        # orjson's output sits in an over-allocated buffer (about twice its length): keep an exact copy.
        data = memoryview(orjson.dumps({k: v for k, v in decision.items()
                                        if k != "event_id" and v is not None and v != []})).tobytes()
        old = self._recent.pop(eid, None)
        if old is not None:
            self._recent_bytes -= len(old) + _ENTRY_OVERHEAD
        self._recent[eid] = data
        self._recent_bytes += len(data) + _ENTRY_OVERHEAD
        while len(self._recent) > RECENT_DECISIONS or self._recent_bytes > RECENT_BYTES:
            _, gone = self._recent.popitem(last=False)
            self._recent_bytes -= len(gone) + _ENTRY_OVERHEAD

    def _recall(self, eid: str) -> dict[str, Any] | None:
        """A remembered answer, as it was given (None when not remembered)."""
        data = self._recent.get(eid)
        if data is None:
            return None
        d = orjson.loads(data)
        return {"event_id": eid, "score": d.get("score"), "probability": d.get("probability"),
                "risk_level": d.get("risk_level"), "action": d.get("action"), "reasons": d.get("reasons", []),
                "rule_hits": d.get("rule_hits", []), "model_version": d.get("model_version"),
                "latency_ms": d.get("latency_ms")}

    def _decide(self, rec: dict[str, Any], rules: Any, model: LoadedModel | None, *,
                learn: bool) -> tuple[dict[str, Any], str | None]:
        """Decide one event (features, model, rules); ``submit`` runs the same steps batched."""
        text = self._text_scores([Prepared(rec, 0)]).get(rec["event_id"])
        ctx, feats = self._context(rec, learn=learn)
        relearn = set() if learn else {rec["event_id"]}
        out = self._with_text(rec, self._score(model, [(rec, ctx, feats, 0.0)], relearn)[0], model, text)
        return self._finish(rec, ctx, out, rules, model)

    def _context(self, rec: dict[str, Any], *, learn: bool, sequence: bool = True
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rule context (event fields, derived time fields, attrs, online features) and the features.

        ``sequence=False`` leaves ``sequence_score`` to the caller (``submit_groups`` scores a whole pass
        in one transformer run)."""
        feats: dict[str, Any] = {}
        if self.features is not None:
            try:
                feats = self.features.update(rec) if learn else _peek(self.features, rec)
            except ShopguardError:
                raise
            except Exception as exc:  # a feature bug must not take the decision path down
                self.features_error = f"online features failed: {exc}"
                log.exception("online features failed on %s", rec.get("event_id"))
                feats = {}
        ctx: dict[str, Any] = dict(rec)
        ts = rec["ts"]
        ctx["hour"] = ts.hour
        ctx["weekday"] = ts.weekday()
        attrs = rec.get("attrs")
        if isinstance(attrs, str):
            try:
                ctx["attrs"] = json.loads(attrs)
            except json.JSONDecodeError:
                ctx["attrs"] = {}
        ctx.update(feats)
        if self.sequence is not None and sequence:
            try:
                ctx["sequence_score"] = self.sequence.score_one(rec, learn=learn)
            except Exception:  # the transformer only adds a signal: rules and the model still decide
                log.exception("sequence scorer failed on %s", rec.get("event_id"))
        return ctx, feats

    def _sequence_pass(self, todo: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]],
                       relearn: set[str]) -> None:
        """``sequence_score`` of every event of a pass, from one transformer run (same scores as one by one)."""
        if self.sequence is None or not todo:
            return
        records = [rec for rec, _ctx, _feats, _ in todo]
        try:
            scores = sequence_scores(self.sequence, records, [r["event_id"] not in relearn for r in records])
        except Exception:  # the transformer only adds a signal: rules and the model still decide
            log.exception("sequence scorer failed on %d events", len(records))
            return
        for (_rec, ctx, _feats, _), score in zip(todo, scores, strict=True):
            ctx["sequence_score"] = score

    def _score(self, model: LoadedModel | None, todo: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                                               float]], relearn: set[str] | frozenset[str] = frozenset()
               ) -> list[ModelOutput | None]:
        if model is None or not todo:
            return [None] * len(todo)
        rows = [{**{k: rec.get(k) for k in ("event_id", "ts", "type", "user_id")}, **feats}
                for rec, _ctx, feats, _ in todo]
        try:
            if model.fusion is not None:  # one run of the fused graph; its history learns the new events
                records = [rec for rec, *_ in todo]
                outs = list(model.fusion.decide(records, rows, [r["event_id"] not in relearn for r in records]))
            else:
                outs = list(model.decide_many(rows))
            if getattr(model, "percentile_only", False):
                for o in outs:
                    o.percentile, o.probability = o.probability, None
            return outs
        except Exception as exc:  # a failing model falls back to rules only, loudly
            log.exception("model %s failed on %d events", model.version, len(rows))
            if self.metrics is not None:
                self.metrics.error("model")
            self.model.last_error = f"model {model.version} failed: {exc}"
            return [None] * len(todo)

    def _text_scores(self, prepared: Sequence[Prepared]) -> dict[str, dict[str, Any]]:
        """Text score and reasons of each new review/chat; a failure is logged and the event decided
        without text (never an error answer)."""
        if self.text is None:
            return {}
        from shopguard.models.text.scoring import TEXT_EVENT_TYPES

        out: dict[str, dict[str, Any]] = {}
        for i, p in enumerate(prepared):
            rec = p.record
            eid = rec["event_id"]
            if rec.get("type") not in TEXT_EVENT_TYPES or eid in self._recent or eid in self._known:
                continue
            try:
                # Earlier events of this request are not observed yet: they count as history too.
                res = self.text.score(rec, [q.record for q in prepared[:i]])
            except Exception:
                self.text_errors += 1
                log.exception("text model failed on %s; deciding without it", eid)
                if self.metrics is not None:
                    self.metrics.error("text")
                continue
            if res is not None:
                out[eid] = res
        return out

    def _with_text(self, rec: dict[str, Any], out: ModelOutput | None, model: LoadedModel | None,
                   text: dict[str, Any] | None) -> ModelOutput | None:
        """The model output with the text evidence merged: the larger probability, the level and action
        from the bundle's policy, text reasons first (``models.text.decisions.merge_decision``; a text
        score below ``text_min_score`` only decides events the model does not score)."""
        if text is None:
            return out
        try:
            from shopguard.decision.policy import Policy
            from shopguard.models.text.decisions import REASON_CODES, lifts, reason_texts

            policy = getattr(getattr(model, "bundle", None), "policy", None) or Policy()
            s = float(text["score"])
            if out is not None and not lifts(s, self.text_min_score):
                return out
            code = REASON_CODES.get(str(rec.get("type")), "TEXT")
            reasons = [{"code": code, "text": t, "source": "text"}
                       for t in reason_texts(str(rec.get("type")), s, text.get("reasons") or [])]
            p = s if out is None or out.probability is None else max(out.probability, s)
            level = policy.level(p)
            if out is None:
                return ModelOutput(s, p, level.value, policy.action_for(level).value, reasons)
            return ModelOutput(out.score, p, level.value, policy.action_for(level).value, reasons + out.reasons)
        except Exception:  # a malformed text result must not cost the decision
            self.text_errors += 1
            log.exception("merging the text score failed on %s", rec.get("event_id"))
            return out

    def _finish(self, rec: dict[str, Any], ctx: dict[str, Any], out: ModelOutput | None, rules: Any,
                model: LoadedModel | None) -> tuple[dict[str, Any], str | None]:
        """Rules over the context (with the model's score), then the policy: the decision."""
        if out is not None:
            ctx["score"] = out.score
            ctx["model_score"] = out.score
            ctx["probability"] = out.probability
            ctx["score_percentile"] = out.percentile
        res: RuleResult = rules.evaluate(ctx)
        reasons: list[dict[str, Any]] = []
        if res.list_match is not None:  # an allow/deny list entry decides alone
            action = res.action or "allow"
            risk = ACTION_RISK[action]
        else:
            action = out.action if out is not None else "allow"
            risk = out.risk_level if out is not None and out.risk_level in RISK_RANK else "low"
            if res.action is not None:
                if SEVERITY[res.action] > SEVERITY.get(action, 0):
                    action = res.action
                if RISK_RANK[ACTION_RISK[res.action]] > RISK_RANK[risk]:
                    risk = ACTION_RISK[res.action]
            if out is not None:
                reasons.extend(out.reasons)
        for h in res.hits:
            reasons.append({"code": h.reason, "text": h.description, "source": "rule"})
        scenario = next((h.scenario for h in res.hits if h.scenario), None)
        decision = {
            "event_id": rec["event_id"],
            "score": None if out is None else out.score,
            "probability": None if out is None else out.probability,
            "risk_level": risk,
            "action": action,
            "reasons": reasons,
            "rule_hits": [h.name for h in res.hits],
            "model_version": None if out is None or model is None else model.version,
            "decided_at": _now(),
        }
        return decision, scenario

    # -- convenience ---------------------------------------------------------------------------------------
    def process(self, payloads: Sequence[Any], *, batch: bool = True, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Validate, decide, commit and wait: the synchronous path (CLI, benchmark, tests)."""
        prepared = self.prepare(payloads, batch=batch)
        results, commit = self.submit(prepared)
        if commit is not None:
            try:
                commit.result(timeout)
            except Exception as exc:
                raise Unavailable(f"the store could not commit: {exc}", field="store") from None
        return [r.result(timeout) if isinstance(r, cf.Future) else r for r in results]

    def flush(self) -> None:
        """Make every acknowledged event visible to store queries (analyst reads call this first)."""
        try:
            self.writer.flush()
        except Exception as exc:
            raise Unavailable(f"the store is not accepting writes: {exc}", field="store") from None

    def learn_labels(self, labels: Sequence[dict[str, Any]]) -> None:
        """Tell the online features about new labels (label-delayed features use them once known)."""
        learn = getattr(self.features, "learn_label", None)
        # In slices: a 10,000-label request must not hold the decision lock (and every event waiting on it)
        # for tens of milliseconds; each slice holds it well under a millisecond.
        for start in range(0, len(labels), LABELS_PER_LOCK):
            with self._lock:
                for lab in labels[start:start + LABELS_PER_LOCK]:
                    if learn is not None:
                        learn(lab["entity_kind"], lab["entity_id"], lab["label"], lab["labeled_at"])
                    if self.graph is not None and lab["entity_kind"] == "user":
                        self.graph.add_label(lab["entity_id"], int(lab["label"]))

    # -- erasure -----------------------------------------------------------------------------------------
    def erase_user(self, user_id: str, *, by: str) -> Any:
        """Erase a user while serving (``DELETE /v1/users/{id}``): ``store.erasure.erase_user`` plus the
        service's own state. Returns its ``ErasureResult`` (``found`` False: an unknown user, nothing done).

        In order: the user's new events are refused (tombstone checked under the decision lock, so none is
        queued after this point); everything acknowledged before is written into DuckDB (journal applied);
        the store erasure (one transaction); then, under the decision lock, the user's remembered answers
        and ids are dropped, the online features and the account-link graph are rebuilt from the store
        (decisions wait meanwhile: about the start-up rebuild time), and the user's cached histories
        (behaviour transformer, fusion model, text context) are dropped.
        """
        from shopguard.store.erasure import ErasedUsers, erase_user, tombstone_hasher, tombstone_id

        hasher = tombstone_hasher(self.store, pseudonymiser=self.pseudonymiser, create=True)
        assert hasher is not None
        tomb = tombstone_id(hasher, user_id)
        with self._lock:
            if self.erased is None:
                self.erased = ErasedUsers(hasher, set())
            blocked_before = tomb in self.erased.ids
            self.erased.add(tomb)
        try:
            self._drain()
            ids = self.store.query("SELECT event_id FROM events WHERE user_id = ?", [user_id])["event_id"].to_list()
            res = erase_user(self.store, user_id, by=by, pseudonymiser=self.pseudonymiser)
        except BaseException:
            if not blocked_before:
                with self._lock:
                    self.erased.discard(tomb)
            raise
        if not res.found:
            if not blocked_before:
                with self._lock:
                    self.erased.discard(tomb)
            return res
        self._forget(user_id, ids, rebuild=res.total > 0)
        return res

    def _drain(self) -> None:
        """Wait until every event queued so far is committed into DuckDB."""
        if self.writer.journal is None:
            if self.writer.alive():
                self.writer.submit([], [], []).result(30)  # the writer commits in order
            return
        self.flush()

    def _forget(self, user_id: str, event_ids: list[str], *, rebuild: bool) -> None:
        with self._lock:
            for eid in event_ids:
                old = self._recent.pop(eid, None)
                if old is not None:
                    self._recent_bytes -= len(old) + _ENTRY_OVERHEAD
                self._known.discard(eid)
            for scorer in (self.sequence, getattr(getattr(self.model.model, "fusion", None), "history", None)):
                users = getattr(scorer, "users", None)
                if isinstance(users, dict):
                    users.pop(user_id, None)
                    for eid in event_ids:  # events without a user are cached under their id
                        users.pop(f"evt:{eid}", None)
            if self.text is not None:
                _forget_text(self.text, user_id)
            if not rebuild:
                return
            if self.features is not None:
                try:
                    self.features.rebuild(self.store)
                except Exception as exc:  # as at start: rules on raw fields and the model still run
                    self.features_error = f"online features could not be rebuilt after an erasure: {exc}"
                    log.error(self.features_error)
                    self.features = None
            if self.graph is not None:
                try:
                    from shopguard.features.graph import build_ring_index

                    self.graph = build_ring_index(self.store)
                except Exception as exc:  # the graph only enriches timelines
                    log.error("account-link graph could not be rebuilt after an erasure: %s", exc)
                    self.graph = None

    def linked_accounts(self, user_id: str) -> list[dict[str, Any]]:
        """Accounts sharing devices, cards, IPs or addresses with ``user_id`` (empty without the graph)."""
        if self.graph is None:
            return []
        with self._lock:
            return list(self.graph.linked_accounts(user_id))

    def stored_decision(self, event_id: str) -> dict[str, Any] | None:
        row = self.store.decision(event_id)
        if row is None:
            return None
        return _public(row)

    def decision(self, event_id: str) -> dict[str, Any] | None:
        d = self._recall(event_id)
        return d if d is not None else self.stored_decision(event_id)


MAX_ATTRS_DEPTH = 16  # nesting of an event's attrs (orjson refuses more than 255 levels: a 500 before)
MAX_ATTRS_ITEMS = 2_000  # keys and list items in one event's attrs
_STRICT_NUMBERS = {"amount": (int, float), "old_price": (int, float), "new_price": (int, float),
                   "quantity": (int,), "rating": (int,)}


def _check_payload(data: Any) -> None:
    """Cheap checks the event model does not make: numbers are JSON numbers (``amount: true`` and
    ``quantity: "3"`` are refused, not coerced), and ``attrs`` is bounded in depth and size (walked
    without recursion). Raises ValidationFailed naming the field."""
    if not isinstance(data, dict):
        return  # parse_event names the problem
    for name, kinds in _STRICT_NUMBERS.items():
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kinds)):
            want = "an integer" if kinds == (int,) else "a number"
            raise ValidationFailed(f"{name}: must be {want}, got {type(v).__name__} {v!r}"[:300], field=name,
                                   value=repr(v)[:100])
    attrs = data.get("attrs")
    if not attrs or not isinstance(attrs, dict | list):
        return
    items = 0
    stack: list[tuple[Any, int]] = [(attrs, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_ATTRS_DEPTH:
            raise ValidationFailed(f"attrs: nested deeper than {MAX_ATTRS_DEPTH} levels", field="attrs")
        children = v.values() if isinstance(v, dict) else v
        items += len(v)
        if items > MAX_ATTRS_ITEMS:
            raise ValidationFailed(f"attrs: more than {MAX_ATTRS_ITEMS} keys and items", field="attrs")
        for c in children:
            if isinstance(c, dict | list) and c:
                stack.append((c, depth + 1))


def sequence_scores(scorer: Any, records: Sequence[dict[str, Any]], learn: Sequence[bool]) -> list[Any]:
    """``scorer.score_one(r, learn=l)`` for each record in order, with ONE model run for all of them.

    ``scorer`` is a ``models.sequence.export.IncrementalScorer``. Each event's window is built from its
    user's history as it stands after the events before it (those learnt), exactly as one-by-one scoring
    builds it; only the network runs once, on the stacked windows (an ONNX run's fixed cost dominates a
    single window); a session export turns each window's per-event surprise into its session score.
    Falls back to one-by-one for scorers without that structure and for embeddings.
    """
    import numpy as np

    stack = getattr(scorer, "windows", None)
    net = getattr(scorer, "scorer", None)
    if len(records) < 2 or stack is None or net is None or net.kind == "embedding":
        return [scorer.score_one(r, learn=ln) for r, ln in zip(records, learn, strict=True)]
    n = len(records)
    tokens, dts = stack(records, learn)
    windows = getattr(scorer, "score_windows", None)  # session exports aggregate the per-slot surprise
    out = windows(tokens, dts) if windows is not None else net.run(tokens, dts)
    return [float(x) for x in np.asarray(out).reshape(n, -1)[:, 0]]


def _peek(features: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """Features of an event already learnt (stored without a decision): read, never learn twice."""
    peek = getattr(features, "peek", None) or getattr(features, "features", None)
    return peek(rec) if callable(peek) else {}


def _make_feature_engine(model: LoadedModel | None) -> Any:
    try:
        from shopguard.features.online import OnlineFeatureEngine
    except ImportError:
        return None
    fs = getattr(model, "feature_set", None) if model is not None else None
    return OnlineFeatureEngine(fs) if fs is not None else OnlineFeatureEngine()


def _erased_answer(event_id: str) -> dict[str, Any]:
    """The answer to an event of an erased user: not decided, not stored, not learnt."""
    return {"event_id": event_id, "score": None, "probability": None, "risk_level": "low", "action": "allow",
            "reasons": [{"code": "user_erased", "text": "the user was erased: the event is neither stored nor "
                         "decided", "source": "rule"}], "rule_hits": [], "model_version": None, "latency_ms": None}


def _forget_text(text: Any, user_id: str) -> None:
    """Drop a user from the text scorer's history (``OnlineTextScorer``): first-seen time, purchases, reviews."""
    lock = getattr(text, "_lock", None)
    if lock is None:
        return
    with lock:
        getattr(text, "_first", {}).pop(user_id, None)
        getattr(text, "_buys", {}).pop(user_id, None)
        reviews = getattr(text, "_reviews", None)
        if reviews is not None:
            keep = [r for r in reviews if r.get("user_id") != user_id]
            if len(keep) != len(reviews):
                reviews.clear()
                reviews.extend(keep)


def _stored_decision(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    out["reasons"] = json.dumps(d["reasons"])
    out["rule_hits"] = json.dumps(d["rule_hits"])
    return out


def _public(d: dict[str, Any]) -> dict[str, Any]:
    """The decision as the API answers it (JSON columns decoded, internal fields dropped)."""
    out = {k: d.get(k) for k in ("event_id", "score", "probability", "risk_level", "action", "reasons",
                                 "rule_hits", "model_version", "latency_ms")}
    for k in ("reasons", "rule_hits"):
        if isinstance(out[k], str):
            try:
                out[k] = json.loads(out[k])
            except json.JSONDecodeError:
                out[k] = []
        out[k] = out[k] or []
    return out


__all__ = ["DecisionEngine", "LoadedModel", "ModelOutput", "ModelSlot", "StoreWriter", "TextModelSlot", "Unavailable",
           "load_text_model", "sequence_scores"]
