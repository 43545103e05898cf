"""The service's garbage-collector hygiene: young survivors frozen off the request path, pauses measured."""

from __future__ import annotations

import gc
import weakref

from shopguard.api.app import gc_sweep
from shopguard.api.metrics import ServiceMetrics


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_sweep_collects_garbage_cycles_then_freezes_the_survivors() -> None:
    before = gc.get_freeze_count()
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a garbage cycle: only the collector can free it
        dead = weakref.ref(a)
        del a, b
        alive = {"window": [1, 2, 3]}  # state the service keeps
        gc_sweep()
        assert dead() is None  # collected before the freeze, never frozen
        assert gc.get_freeze_count() > before
        tracked = {id(o) for g in range(3) for o in gc.get_objects(g)}
        assert id(alive) not in tracked and id(alive["window"]) not in tracked  # later collections skip them
    finally:
        gc.unfreeze()


def test_gc_pauses_are_a_metric() -> None:
    m = ServiceMetrics()
    gc.callbacks.append(m.gc_callback)
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(m.gc_callback)
    text = m.render().decode()
    assert 'shopguard_gc_pause_seconds_count{generation="0"} 1.0' in text
