from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopguard.errors import DataError, ModelError
from shopguard.models.sequence.config import TokenizerConfig
from shopguard.models.sequence.sequences import build_sequences
from shopguard.models.sequence.tokenizer import BOS, FIELDS, NONE, OFFSET, PAD, UNK, EventTokenizer, UserState

F = {f: i for i, f in enumerate(FIELDS)}


def _events(**cols: list) -> pl.DataFrame:
    n = len(cols["type"])
    base = {"event_id": [f"e{i}" for i in range(n)], "user_id": ["u"] * n,
            "ts": [datetime(2024, 1, 1, 10) + timedelta(hours=i) for i in range(n)]}
    return pl.DataFrame({**base, **cols})


@pytest.fixture
def fitted(toy_log: pl.DataFrame) -> EventTokenizer:
    return EventTokenizer(TokenizerConfig(min_count=1)).fit(toy_log)


def test_unknown_values_map_to_unk_and_missing_to_none(fitted: EventTokenizer) -> None:
    ev = _events(type=["view", "teleport", "view"], category=["books", "never-seen", None],
                 status=[None, "weird", None])
    tok = fitted.transform(ev).tokens
    assert tok[0, F["category"]] >= OFFSET
    assert tok[1, F["category"]] == UNK and tok[2, F["category"]] == NONE
    assert tok[1, F["type"]] == UNK and tok[0, F["type"]] >= OFFSET
    assert tok[1, F["status"]] == UNK and tok[0, F["status"]] == NONE
    sizes = fitted.vocab_sizes
    assert all((tok[:, i] < sizes[f]).all() for i, f in enumerate(FIELDS))


def test_time_and_novelty_buckets(fitted: EventTokenizer) -> None:
    ev = _events(type=["login"] * 4, device_id=["a", "a", "b", None], ip=["1", "2", "1", "1"])
    tok = fitted.transform(ev).tokens
    assert tok[0, F["dt"]] == NONE  # first event of the user: no gap
    assert len(set(tok[1:, F["dt"]])) == 1 and tok[1, F["dt"]] > OFFSET  # one hour, every time
    assert list(tok[:, F["device_new"]]) == [OFFSET + 1, OFFSET, OFFSET + 1, NONE]
    assert list(tok[:, F["ip_new"]]) == [OFFSET + 1, OFFSET + 1, OFFSET, OFFSET]
    assert list(tok[:, F["hour"]] - OFFSET) == [10, 11, 12, 13]
    assert tok[0, F["weekday"]] - OFFSET == datetime(2024, 1, 1).weekday()


def test_amount_buckets_are_monotonic(fitted: EventTokenizer) -> None:
    amounts = [0.0, 1.0, 10.0, 30.0, 100.0, 5000.0]
    tok = fitted.transform(_events(type=["pay"] * 6, amount=amounts)).tokens[:, F["amount"]]
    assert (np.diff(tok) >= 0).all() and tok[-1] > tok[0]


def test_save_load_roundtrip(fitted: EventTokenizer, toy_log: pl.DataFrame, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    again = EventTokenizer.load(tmp_path)
    np.testing.assert_array_equal(fitted.transform(toy_log).tokens, again.transform(toy_log).tokens)
    assert again.vocab_sizes == fitted.vocab_sizes


def test_unfitted_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not fitted"):
        EventTokenizer().transform(_events(type=["view"]))
    with pytest.raises(ModelError, match="no tokenizer"):
        EventTokenizer.load(tmp_path)


@pytest.mark.parametrize("column", ["event_id", "ts", "type"])
def test_missing_required_column_names_field(fitted: EventTokenizer, column: str) -> None:
    with pytest.raises(DataError) as err:
        fitted.transform(_events(type=["view"]).drop(column))
    assert err.value.field == column


def test_online_encoding_matches_batch(fitted: EventTokenizer, toy_log: pl.DataFrame) -> None:
    batch = fitted.transform(toy_log)
    by_id = {e: i for i, e in enumerate(batch.event_ids)}
    states: dict[str, UserState] = {}
    for rec in toy_log.sort(["ts", "event_id"]).iter_rows(named=True):
        st_ = states.setdefault(rec["user_id"], UserState())
        row, dt = fitted.encode_one(rec, st_)
        fitted.state_update(rec, st_)
        i = by_id[rec["event_id"]]
        np.testing.assert_array_equal(row, batch.tokens[i])
        assert dt == pytest.approx(float(batch.dt_log[i]), abs=1e-5)


def test_windows_are_right_aligned_with_bos(fitted: EventTokenizer, toy_log: pl.DataFrame) -> None:
    b = build_sequences(toy_log, ["u0e0", "u0e3", "u0e29"], 8, fitted)
    assert b.tokens.shape == (3, 9, len(FIELDS))
    assert list(b.event_ids) == ["u0e0", "u0e3", "u0e29"]
    assert b.tokens[0, -2, 0] == BOS and (b.tokens[0, :-2] == PAD).all()
    assert b.tokens[1, -5, 0] == BOS
    assert (b.tokens[2, :, 0] > BOS).all()  # long history: no BOS, no padding
    with pytest.raises(DataError, match="not in events"):
        build_sequences(toy_log, ["nope"], 8, fitted)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e7, allow_nan=False), st.integers(0, 10**7),
                          st.sampled_from(["pay", "login", "view", "bogus"])), min_size=1, max_size=12))
def test_tokens_always_in_vocab(rows: list[tuple[float, int, str]]) -> None:
    tok = EventTokenizer(TokenizerConfig(min_count=1, amount_buckets=4)).fit(
        _events(type=["pay", "pay"], amount=[1.0, 50.0]))
    ev = pl.DataFrame({"event_id": [f"e{i}" for i in range(len(rows))],
                       "ts": [datetime(2024, 1, 1) + timedelta(seconds=s) for _, s, _ in rows],
                       "type": [t for *_, t in rows], "user_id": ["u"] * len(rows),
                       "amount": [a for a, *_ in rows]})
    out = tok.transform(ev).tokens
    sizes = tok.vocab_sizes
    for i, f in enumerate(FIELDS):
        assert ((out[:, i] >= NONE) & (out[:, i] < sizes[f])).all(), f


def test_online_encoding_accepts_iso_time_and_rejects_garbage(fitted: EventTokenizer) -> None:
    state = UserState()
    a, _ = fitted.encode_one({"type": "login", "ts": "2024-01-01T10:00:00Z", "user_id": "u"}, state)
    b, _ = fitted.encode_one({"type": "login", "ts": datetime(2024, 1, 1, 10), "user_id": "u"}, state)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError) as err:
        fitted.encode_one({"type": "login", "ts": "yesterday"}, state)
    assert err.value.field == "ts"
