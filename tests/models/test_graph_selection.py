"""Variant selection inside the graph detectors: the right variant on graphs where it is obvious, and
never a test node in the inner loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from shopguard.errors import ModelError, ValidationFailed
from shopguard.features.graph import aggregate_neighbours
from shopguard.models.base import load_detector
from shopguard.models.graph import (
    DEFAULT_CANDIDATES,
    GraphDeviationDetector,
    GraphLightGBMDetector,
    column_groups,
    neighbour_label_features,
    resolve_candidates,
)

FAST = {"n_folds": 3, "n_estimators": 200, "learning_rate": 0.1, "early_stopping_rounds": 20}


def _links(groups: np.ndarray, per_node: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Each node links to ``per_node`` random members of its own group (symmetrised)."""
    n = groups.size
    rows, cols = [], []
    for i in range(n):
        same = np.flatnonzero(groups == groups[i])
        for j in rng.choice(same, per_node):
            if j != i:
                rows += [i, j]
                cols += [j, i]
    A = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    A.data[:] = 1.0
    return A


def ring_graph(signal: str, seed: int = 0, n: int = 1500, d: int = 5) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """``signal="labels"``: fraud lives in whole rings of linked accounts whose attributes are pure noise, so
    only known-fraud neighbours give a node away. ``signal="own"``: fraud shows in the node's own
    attributes and links are random, so no neighbour column carries anything."""
    rng = np.random.default_rng(seed)
    if signal == "labels":
        ring = rng.integers(0, n // 10, n)
        bad_rings = rng.random(n // 10) < 0.12
        y = bad_rings[ring].astype(int)
        X = rng.normal(size=(n, d))
        return X, _links(ring, 4, rng), y
    y = (rng.random(n) < 0.1).astype(int)
    X = rng.normal(size=(n, d))
    X[:, :2] += 1.6 * y[:, None]
    return X, _links(rng.integers(0, n // 10, n), 4, rng), y


def split_frame(X: np.ndarray, A: sp.csr_matrix, y: np.ndarray, seed: int = 0
                ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(len(y))
    tr, te = np.sort(idx[: len(y) // 2]), np.sort(idx[len(y) // 2:])
    frame = aggregate_neighbours(X, A, aggregates=("mean",))
    labels = neighbour_label_features(A, tr, y[tr], random_state=seed)
    return pl.concat([frame, labels], how="horizontal"), tr, te


@pytest.mark.parametrize(("signal", "expect"), [("labels", "labels"), ("own", "own+degree")])
def test_selection_picks_the_obvious_variant(signal: str, expect: str) -> None:
    X, A, y = ring_graph(signal)
    frame, tr, te = split_frame(X, A, y)
    det = GraphLightGBMDetector(keep_candidates=True, **FAST).fit(frame[tr], y[tr])
    info = det.fit_info_
    assert [c["name"] for c in info["candidates"]] == list(DEFAULT_CANDIDATES[:4])  # "all" == the fourth: dropped
    if expect == "labels":
        assert "labels" in det.variant_
        assert any(c.startswith("nbr_label_") for c in det.feature_names_)
    else:
        assert det.variant_ == "own+degree"
        assert det.feature_names_ == [f"x{j}" for j in range(X.shape[1])] + ["nbr_degree"]
    assert info["variant"] == det.variant_
    # The pick is good on the test nodes too, and no worse than the simplest candidate there.
    auc = roc_auc_score(y[te], det.score(frame[te]))
    assert auc >= 0.8
    assert auc >= roc_auc_score(y[te], det.score_candidate(frame[te], "own+degree")[0]) - 0.02


def test_selection_never_sees_test_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    X, A, y = ring_graph("labels", seed=1, n=900)
    frame, tr, te = split_frame(X, A, y, seed=1)
    # Mark the test rows: a value no training row has. Whatever reaches the inner loop must not hold it.
    marked = frame.with_columns(pl.when(pl.int_range(pl.len()).is_in(te.tolist())).then(1e9).otherwise(pl.col("x0"))
                                .alias("x0"))
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    inner = GraphLightGBMDetector._bagged

    def spy(self: GraphLightGBMDetector, matrix: np.ndarray, target: np.ndarray, cat_idx: list[int]) -> object:
        seen.append((matrix.copy(), target.copy()))
        return inner(self, matrix, target, cat_idx)

    monkeypatch.setattr(GraphLightGBMDetector, "_bagged", spy)
    det = GraphLightGBMDetector(**FAST).fit(marked[tr], y[tr])
    assert len(seen) == len(det.fit_info_["candidates"]) >= 2  # one inner loop per candidate
    for matrix, target in seen:
        assert matrix.shape[0] == tr.size  # the training rows, every one of them, and nothing else
        np.testing.assert_array_equal(target, y[tr])
        assert not np.any(matrix == 1e9)
    # The label features the candidates read were built from training labels only: flipping every test
    # label changes neither them nor the choice.
    flipped = y.copy()
    flipped[te] = 1 - flipped[te]
    np.testing.assert_array_equal(neighbour_label_features(A, tr, flipped[tr], random_state=1).to_numpy(),
                                  frame.select([c for c in frame.columns if c.startswith("nbr_label_")]).to_numpy())


def test_fixed_variant_features_and_records(tmp_path: Path) -> None:
    X, A, y = ring_graph("own", seed=2, n=600)
    frame, tr, te = split_frame(X, A, y, seed=2)
    one = GraphLightGBMDetector(variant="own+degree+mean", **FAST).fit(frame[tr], y[tr])
    assert one.variant_ == "own+degree+mean" and len(one.fit_info_["candidates"]) == 1
    pinned = GraphLightGBMDetector(features=["x0", "x1"], **FAST).fit(frame[tr], y[tr])
    assert pinned.feature_names_ == ["x0", "x1"] and pinned.variant_ == "features"
    # Frames without neighbour columns (the event-stream features) have one candidate: every column.
    own = frame.select([f"x{j}" for j in range(X.shape[1])])
    plain = GraphLightGBMDetector(**FAST).fit(own[tr], y[tr])
    assert plain.variant_ == "own+degree" and plain.feature_names_ == own.columns
    assert plain.fit_info_["rule"] == "single candidate"
    # The record survives a save / load.
    auto = GraphLightGBMDetector(**FAST).fit(frame[tr], y[tr])
    auto.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.fit_info_ == auto.fit_info_ and again.get_params()["variant"] == "auto"
    np.testing.assert_allclose(again.score(frame[te]), auto.score(frame[te]))
    with pytest.raises(ModelError):
        auto.score_candidate(frame[te], "own+degree")  # not kept
    with pytest.raises(ValidationFailed) as exc:
        GraphLightGBMDetector(variant="own+bogus", **FAST).fit(frame[tr], y[tr])
    assert exc.value.field == "candidates"


def test_column_groups_and_candidates() -> None:
    cols = ["a", "b", "nbr_degree", "nbr_mean__a", "nbr_label_share", "nbr_max__a", "nbr_diff__a", "nbr_x"]
    g = column_groups(cols)
    assert g["own"] == ["a", "b"] and g["labels"] == ["nbr_label_share"] and g["nbr"] == ["nbr_x"]
    plan = resolve_candidates(["a", "nbr_degree", "nbr_mean__a"], DEFAULT_CANDIDATES)
    # Without label columns the label candidates collapse into the ones without; "all" equals "+mean".
    assert [n for n, _ in plan] == ["own+degree", "own+degree+mean"]


# -- unsupervised: the label-free context weight -----------------------------------------------------------
def review_like(seed: int = 0, users: int = 400) -> tuple[pl.DataFrame, np.ndarray]:
    """Reviews of one user are linked to each other and are noisy copies of the user's profile; a few
    users are odd. Each review alone is noisy, its neighbours' mean is the user: the context view wins."""
    rng = np.random.default_rng(seed)
    d = 6
    prof = rng.lognormal(0, 1, size=(users, d))
    bad = rng.random(users) < 0.06
    prof[bad] *= rng.lognormal(1.2, 0.3, size=(int(bad.sum()), d))
    owner = np.repeat(np.arange(users), rng.integers(3, 6, users))
    X = prof[owner] * rng.lognormal(0, 0.9, size=(owner.size, d))
    rows, cols = [], []
    for u in range(users):
        ids = np.flatnonzero(owner == u)
        for i in ids:
            for j in ids:
                if i != j:
                    rows.append(i)
                    cols.append(j)
    A = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(owner.size, owner.size))
    return aggregate_neighbours(X, A, aggregates=("mean", "diff")), bad[owner].astype(int)


def test_context_weight_follows_neighbour_redundancy(tmp_path: Path) -> None:
    from .test_graph import community_graph

    frame, y = review_like()
    auto = GraphDeviationDetector(n_estimators=100).fit(frame)
    fixed = GraphDeviationDetector(n_estimators=100, context_weight=0.0).fit(frame)
    assert auto.fit_info_["context_weight"] > 0.3  # neighbours are copies of the node: high redundancy
    assert roc_auc_score(y, auto.score(frame)) > roc_auc_score(y, fixed.score(frame)) + 0.02
    auto.save(tmp_path / "dev")
    again = load_detector(tmp_path / "dev")
    np.testing.assert_allclose(again.score(frame[:50]), auto.score(frame[:50]))
    assert again.fit_info_ == auto.fit_info_
    # Linked accounts that are different people (communities with contextual anomalies): weight stays small,
    # and the contrast still finds them.
    cframe, cy = community_graph()
    det = GraphDeviationDetector(n_estimators=100).fit(cframe)
    assert det.fit_info_["context_weight"] < det.fit_info_["redundancy"] + 1e-12
    assert roc_auc_score(cy, det.score(cframe)) >= 0.9
    s = det.score(cframe)
    assert s.min() >= 0.0 and s.max() <= 1.0
    with pytest.raises(ValidationFailed):
        GraphDeviationDetector(context_weight=2.0).fit(cframe)
    own = cframe.select([c for c in cframe.columns if not c.startswith("nbr_")])
    assert GraphDeviationDetector(n_estimators=20).fit(own).fit_info_["context_weight"] == 0.0


def test_negligible_redundancy_keeps_the_plain_deviation_score() -> None:
    from shopguard.models.graph import MIN_CONTEXT_WEIGHT

    # Random links between independent accounts: the neighbourhood says nothing about a node.
    rng = np.random.default_rng(5)
    n = 600
    X = rng.lognormal(0, 1, size=(n, 4))
    r, c = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    A = sp.csr_matrix((np.ones(6000), (np.r_[r, c], np.r_[c, r])), shape=(n, n))
    A.setdiag(0)
    A.eliminate_zeros()
    frame = aggregate_neighbours(X, A, aggregates=("mean", "diff"))
    auto = GraphDeviationDetector(n_estimators=50).fit(frame)
    assert auto.fit_info_["redundancy"] < MIN_CONTEXT_WEIGHT
    assert auto.fit_info_["context_weight"] == 0.0 and auto.context_forest_ is None
    plain = GraphDeviationDetector(n_estimators=50, context_weight=0.0).fit(frame)
    np.testing.assert_allclose(auto.score(frame), plain.score(frame))
