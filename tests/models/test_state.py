"""The pickle-free detector state format (``shopguard.models.state``): what it stores and refuses."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopguard.models.state import load_state, save_state
from shopguard.models.tabular import TabularEncoder


def test_plain_values_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rs = np.random.RandomState(3)
    rs.rand(5)
    state = {
        "nums_": [1, 2.5, float("nan"), float("inf"), -0.0, True, None, "x"],
        "keys_": {1: "a", (2, "b"): [3], "__sg__": 4},
        "tuple_": (1, (2, 3)), "set_": {3, 1}, "frozen_": frozenset({"a"}),
        "dd_": defaultdict(dict, {"valid": {"auc": 0.5}}),
        "arr_": rng.normal(size=(3, 4)).astype(np.float32), "ints_": np.arange(5, dtype=np.int16),
        "strs_": np.array(["a", "bb", "ccc"], dtype=object), "mixed_": np.array([1, "a", None], dtype=object),
        "scalar_": np.float64(1.0) / 3, "i_": np.int64(7), "dtype_": np.dtype("<f4"), "type_": np.float64,
        "when_": datetime(2024, 3, 9, 12, 0, 1, 5), "day_": date(2024, 3, 9), "span_": timedelta(hours=3),
        "frame_": pl.DataFrame({"u": ["a", "b"], "x": [1.0, None]}), "series_": pl.Series("s", [1, 2]),
        "rs_": rs, "enc_": TabularEncoder.fit(pl.DataFrame({"a": [1.0, 2.0], "c": ["x", "y"]}), ["a"], ["c"]),
    }
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["nums_"][:2] == [1, 2.5] and np.isnan(back["nums_"][2]) and back["nums_"][3] == float("inf")
    assert back["nums_"][5:] == [True, None, "x"]
    assert back["keys_"] == {1: "a", (2, "b"): [3], "__sg__": 4}
    assert back["tuple_"] == (1, (2, 3)) and back["set_"] == {1, 3} and back["frozen_"] == frozenset({"a"})
    assert back["dd_"]["valid"] == {"auc": 0.5}
    for k in ("arr_", "ints_"):
        assert back[k].dtype == state[k].dtype and np.array_equal(back[k], state[k])
    assert back["strs_"].dtype == object and list(back["strs_"]) == ["a", "bb", "ccc"]
    assert list(back["mixed_"]) == [1, "a", None]
    assert back["scalar_"] == state["scalar_"] and type(back["i_"]) is np.int64
    assert back["dtype_"] == np.dtype("<f4") and back["type_"] is np.float64
    assert (back["when_"], back["day_"], back["span_"]) == (state["when_"], state["day_"], state["span_"])
    assert back["frame_"].equals(state["frame_"]) and back["series_"].equals(state["series_"])
    assert np.array_equal(back["rs_"].rand(3), rs.rand(3))
    assert vars(back["enc_"]) == vars(state["enc_"])
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.joblib"))


def test_what_cannot_be_stored_without_a_pickle_fails_at_save(tmp_path: Path) -> None:
    class Local:
        pass

    for bad in (Local(), lambda x: x, print, json.dumps, Path("x")):
        with pytest.raises(TypeError, match="without a pickle"):
            save_state(tmp_path, {"x_": bad})


def test_arrays_are_read_without_pickles(tmp_path: Path) -> None:
    save_state(tmp_path, {"a_": np.arange(3)})
    np.savez(tmp_path / "state.npz", a0=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_state(tmp_path)
