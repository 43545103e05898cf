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
from collections.abc import Callable, Sequence
from typing import Any

from shopguard.api.scoring import DecisionEngine, Prepared

_Result = tuple[list[Any], cf.Future[int] | None]


class RequestCoalescer:
    """Runs the engine once per event-loop turn for every request that asked in that turn.

    ``max_events`` bounds one pass (a pass holds the loop; bigger groups are split into several).

    ``in_thread`` (a callable asked before each pass, or a bool): decide on one background thread
    instead of the event loop's. The loop then keeps reading and answering requests while a pass runs,
    and the requests that arrive meanwhile form the next pass, so passes grow with load. Passes never
    overlap. That pays when a pass spends its time in native code that releases the GIL, like the
    behaviour transformer's ONNX run, which then gets the second core and runs batched. A pass that is
    mostly Python, like LightGBM with rules, is best left on the loop: the hand-off would only add
    latency. The app turns it on when a transformer is in the path.
    """

    def __init__(self, engine: DecisionEngine, *, max_events: int = 256,
                 in_thread: bool | Callable[[], bool] = False) -> None:
        self.engine = engine
        self.max_events = max_events
        self.in_thread = in_thread
        self._waiting: list[tuple[Sequence[Prepared], asyncio.Future[_Result]]] = []
        self._scheduled = False
        self._busy = False  # a pass is running on the decider thread
        self._pool: cf.ThreadPoolExecutor | None = None
        self.passes = 0
        self.requests = 0
        self.threaded_passes = 0

    async def submit(self, prepared: Sequence[Prepared]) -> _Result:
        """``engine.submit(prepared)``, shared with the requests that arrive alongside this one."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Result] = loop.create_future()
        self._waiting.append((prepared, fut))
        if not self._scheduled and not self._busy:
            self._scheduled = True
            loop.call_soon(self._run)
        return await fut

    def _offload(self) -> bool:
        want = self.in_thread
        return bool(want() if callable(want) else want)

    def _run(self) -> None:
        self._scheduled = False
        if self._busy:  # the running pass starts the next one when it ends
            return
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        if not self._offload():
            self._answer(waiting, self._decide(waiting))
            return
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="shopguard-decider")
        self._busy = True
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._pool, self._decide, waiting)
        done.add_done_callback(lambda f: self._finish(waiting, f))

    def _finish(self, waiting: list[tuple[Sequence[Prepared], asyncio.Future[_Result]]],
                done: asyncio.Future[list[Any]]) -> None:
        """On the loop's thread when a threaded pass ends: answer it, then decide what queued meanwhile."""
        self._busy = False
        self.threaded_passes += 1
        exc = asyncio.CancelledError() if done.cancelled() else done.exception()  # cancelled: shutting down
        self._answer(waiting, [exc] * len(waiting) if exc is not None else done.result())
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _decide(self, waiting: list[tuple[Sequence[Prepared], asyncio.Future[_Result]]]) -> list[Any]:
        """One result (or exception) per waiting request, in order; passes of at most ``max_events``."""
        results: list[Any] = [None] * len(waiting)
        start = 0
        while start < len(waiting):
            # Split at max_events (a request is never split: its events are decided in one pass).
            end, n = start, 0
            while end < len(waiting) and (end == start or n + len(waiting[end][0]) <= self.max_events):
                n += len(waiting[end][0])
                end += 1
            live = [i for i in range(start, end) if not waiting[i][1].cancelled()]
            start = end
            if not live:
                continue
            try:
                outs = self.engine.submit_groups([waiting[i][0] for i in live])
            except Exception as exc:  # nothing of this pass was queued for commit
                outs = [exc] * len(live)
            else:
                self.passes += 1
                self.requests += len(live)
            for i, out in zip(live, outs, strict=True):
                results[i] = out
        return results

    def _answer(self, waiting: list[tuple[Sequence[Prepared], asyncio.Future[_Result]]], results: list[Any]) -> None:
        for (_, f), out in zip(waiting, results, strict=True):
            if f.done() or out is None:
                continue
            if isinstance(out, BaseException):
                f.set_exception(out)
            else:
                f.set_result(out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
