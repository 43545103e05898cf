"""The review benchmark names every model it can run (a missing name used to crash a run at the end)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from shopguard.models.text.review import COMPONENTS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "reviews.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_reviews", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_component_and_nested_model_has_a_display_name(bench: ModuleType) -> None:
    assert set(COMPONENTS) | {"ensemble"} <= set(bench.MODEL_NAMES)
    assert set(bench.NESTED) <= set(bench.NESTED_NAMES)


def test_default_stacks_use_known_nested_models(bench: ModuleType) -> None:
    parser_default = next(a.default for a in bench.build_parser()._actions if a.dest == "stack")
    used = {c for group in parser_default.split(";") for c in group.split(",") if c}
    assert used <= set(bench.NESTED)
