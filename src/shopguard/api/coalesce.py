"""Coalescing of concurrent single-event requests into one decision pass.

A model pass costs nearly as much for a dozen rows as for one (frame building, encoding, calibration
each carry a fixed cost), so under load deciding requests one by one wastes most of the core. The
requests that reach the event loop in the same turn are handed to ``DecisionEngine.submit_groups``
together, at the start of the next turn: one model pass and one journal commit for all of them. An
idle service adds no wait (the pass runs as soon as the current turn ends); a busy one decides bigger
groups, so its cost per event falls as load rises instead of queueing up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections.abc import Sequence
from typing import Any

from shopguard.api.scoring import DecisionEngine, Prepared

_Result = tuple[list[Any], cf.Future[int] | None]


class RequestCoalescer:
    """Runs the engine once per event-loop turn for every request that asked in that turn.

    ``max_events`` bounds one pass (a pass holds the loop; bigger groups are split into several).
    """

    def __init__(self, engine: DecisionEngine, *, max_events: int = 256) -> None:
        self.engine = engine
        self.max_events = max_events
        self._waiting: list[tuple[Sequence[Prepared], asyncio.Future[_Result]]] = []
        self._scheduled = False
        self.passes = 0
        self.requests = 0

    async def submit(self, prepared: Sequence[Prepared]) -> _Result:
        """``engine.submit(prepared)``, shared with the requests that arrive alongside this one."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Result] = loop.create_future()
        self._waiting.append((prepared, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)
        return await fut

    def _run(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        start = 0
        while start < len(waiting):
            # Split at max_events (a request is never split: its events are decided in one pass).
            end, n = start, 0
            while end < len(waiting) and (end == start or n + len(waiting[end][0]) <= self.max_events):
                n += len(waiting[end][0])
                end += 1
            chunk = waiting[start:end]
            start = end
            live = [(p, f) for p, f in chunk if not f.cancelled()]
            if not live:
                continue
            try:
                outs = self.engine.submit_groups([p for p, _ in live])
            except Exception as exc:  # nothing of this pass was queued for commit
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.passes += 1
            self.requests += len(live)
            for (_, f), out in zip(live, outs, strict=True):
                if f.done():
                    continue
                if isinstance(out, BaseException):
                    f.set_exception(out)
                else:
                    f.set_result(out)
