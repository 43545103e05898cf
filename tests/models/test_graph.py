"""Graph detectors on a small seeded graph: quality floors, persistence, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError, ModelError, ValidationFailed
from shopguard.features.graph import aggregate_neighbours
from shopguard.models.base import load_detector
from shopguard.models.graph import GRAPH_DETECTORS, GraphDeviationDetector, GraphLightGBMDetector


def community_links(seed: int = 0, n: int = 1200, d: int = 6, rate: float = 0.06
                    ) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """Communities of look-alike accounts; anomalies are either globally odd or unlike their community.

    Contextual anomalies carry another community's profile: ordinary for the shop as a whole, so only
    the contrast with their neighbours gives them away.
    """
    rng = np.random.default_rng(seed)
    k = 12
    centers = rng.normal(0, 3, size=(k, d))
    comm = rng.integers(0, k, n)
    X = centers[comm] + rng.normal(0, 0.6, size=(n, d))
    y = (rng.random(n) < rate).astype(int)
    bad = np.flatnonzero(y)
    half = bad[: len(bad) // 2]
    X[half] += rng.normal(0, 1, size=(len(half), d)) * 4.0  # global outliers
    other = (comm[bad[len(bad) // 2:]] + rng.integers(1, k, len(bad) - len(half))) % k
    X[bad[len(bad) // 2:]] = centers[other] + rng.normal(0, 0.6, size=(len(other), d))  # contextual
    rows, cols = [], []
    for i in range(n):
        same = np.flatnonzero(comm == comm[i])
        for j in rng.choice(same, 5):
            if j != i:
                rows += [i, j]
                cols += [j, i]
    A = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return X, A, y


def community_graph(seed: int = 0, n: int = 1200) -> tuple[pl.DataFrame, np.ndarray]:
    X, A, y = community_links(seed, n)
    return aggregate_neighbours(X, A), y


@pytest.fixture(scope="module")
def graph() -> tuple[pl.DataFrame, np.ndarray]:
    return community_graph()


def test_deviation_detector_quality(graph: tuple[pl.DataFrame, np.ndarray]) -> None:
    frame, y = graph
    det = GraphDeviationDetector(n_estimators=100, random_state=0).fit(frame)
    s = det.score(frame)
    assert s.shape == (frame.height,) and 0.0 <= s.min() and s.max() <= 1.0
    auc = roc_auc_score(y, s)
    own = [c for c in frame.columns if not c.startswith("nbr_")]
    auc_own = roc_auc_score(y, GraphDeviationDetector(n_estimators=100).fit(frame.select(own)).score(frame.select(own)))
    assert auc >= 0.9
    assert auc > auc_own + 0.1  # the neighbourhood contrast is what finds the contextual anomalies
    assert det.explain(frame.head(3)).shape[0] == 3


def test_lightgbm_detector_quality(graph: tuple[pl.DataFrame, np.ndarray]) -> None:
    frame, y = graph
    idx = np.random.default_rng(1).permutation(frame.height)
    tr, te = idx[:600], idx[600:]
    det = GraphLightGBMDetector(n_folds=3, n_estimators=300, learning_rate=0.1, early_stopping_rounds=30)
    det.fit(frame[tr], y[tr])
    assert roc_auc_score(y[te], det.score(frame[te])) >= 0.9
    assert det.oof_.shape == (600,)
    contrib = det.explain(frame[te][:4])
    assert contrib.shape == (4, len(det.feature_names_))


def test_lightgbm_detector_repeats_folds(graph: tuple[pl.DataFrame, np.ndarray]) -> None:
    frame, y = graph
    det = GraphLightGBMDetector(n_folds=3, n_repeats=2, n_estimators=100, learning_rate=0.1, early_stopping_rounds=20,
                                scale_pos_weight=3.0).fit(frame[:600], y[:600])
    assert len(det.boosters_) == 6 and det.oof_.shape == (600,)
    assert roc_auc_score(y[:600], det.oof_) >= 0.85  # every row is held out once per repeat
    assert roc_auc_score(y[600:], det.score(frame[600:])) >= 0.9
    with pytest.raises(ValidationFailed) as exc:
        GraphLightGBMDetector(n_repeats=0).fit(frame[:100], y[:100])
    assert exc.value.field == "n_repeats"


@pytest.mark.parametrize("name", ["graph_lightgbm", "graph_deviation"])
def test_save_load_round_trip(graph: tuple[pl.DataFrame, np.ndarray], name: str, tmp_path: Path) -> None:
    frame, y = graph
    cls = GRAPH_DETECTORS[name]
    det = cls(n_estimators=50, n_folds=2, early_stopping_rounds=10) if cls.supervised else cls(n_estimators=50)
    det.fit(frame[:400], y[:400] if cls.supervised else None)
    det.save(tmp_path / name)
    again = load_detector(tmp_path / name)
    np.testing.assert_allclose(again.score(frame[400:500]), det.score(frame[400:500]))
    assert det.score(frame[:0]).shape == (0,)


def test_errors_name_the_problem(graph: tuple[pl.DataFrame, np.ndarray]) -> None:
    frame, y = graph
    with pytest.raises(DataError) as exc:
        GraphLightGBMDetector().fit(frame[:50], np.zeros(50))
    assert exc.value.field == "y"
    with pytest.raises(ValidationFailed):
        GraphLightGBMDetector(n_folds=1).fit(frame[:50], y[:50])
    det = GraphDeviationDetector(n_estimators=20).fit(frame)
    with pytest.raises(ModelError) as exc2:
        det.score(frame.drop("x0"))
    assert exc2.value.field == "x0"
    with pytest.raises(ModelError):
        GraphDeviationDetector().score(frame)
    with pytest.raises(DataError):
        GraphDeviationDetector().fit(frame.select([c for c in frame.columns if c.startswith("nbr_")]))


def test_graphsage_learns_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from shopguard.models.graph import GraphInput, GraphSAGEDetector

    X, adj, y = community_links(seed=2, n=600)
    own = pl.DataFrame(X, schema=[f"x{j}" for j in range(X.shape[1])], orient="row")
    g = GraphInput(own, adj)
    target = np.where(np.arange(600) < 450, y, -1)
    det = GraphSAGEDetector(epochs=150, patience=30).fit(g, target)
    s = det.score(g)
    assert roc_auc_score(y[450:], s[450:]) >= 0.85
    det.save(tmp_path / "sage")
    np.testing.assert_allclose(load_detector(tmp_path / "sage").score(g), s, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValidationFailed):
        det.score(own)
    assert set(GRAPH_DETECTORS) == {"graph_lightgbm", "graph_deviation", "graphsage"}


# -- out-of-fold neighbour label features -------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_links() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    _, A, y = community_links(seed=3, n=300)
    train = np.random.default_rng(0).permutation(300)[:150]
    return A, y, np.sort(train)


def test_label_features_never_show_a_node_its_own_label(labelled_links: tuple[sp.csr_matrix, np.ndarray, np.ndarray]
                                                         ) -> None:
    from sklearn.model_selection import StratifiedKFold

    from shopguard.models.graph import neighbour_label_features

    A, y, train = labelled_links
    feats = neighbour_label_features(A, train, y[train], n_folds=5, random_state=1).to_numpy()
    # Each training fold must look exactly like unseen nodes scored from the other folds' labels only:
    # then no training row (two-hop share included) can hold its own label or its fold-mates' labels.
    folds = StratifiedKFold(5, shuffle=True, random_state=1).split(train, y[train])
    for keep, held in folds:
        seen = neighbour_label_features(A, train[keep], y[train][keep], random_state=1).to_numpy()
        rows = train[held]
        np.testing.assert_allclose(feats[rows][:, [1, 3]], seen[rows][:, [1, 3]])
        np.testing.assert_allclose(feats[rows][:, [0, 2]], seen[rows][:, [0, 2]] / 0.8)
    test = np.setdiff1d(np.arange(A.shape[0]), train)
    # Unseen nodes see every training label: the fraud count is a direct count over training neighbours.
    known = np.zeros(A.shape[0])
    known[train] = y[train]
    direct = np.asarray((sp.csr_matrix(A) > 0).astype(float) @ known).ravel()
    np.testing.assert_allclose(feats[test, 0], direct[test])
    assert feats.shape == (A.shape[0], 4) and np.all((feats[:, 1] >= 0) & (feats[:, 1] <= 1))


def test_label_features_for_a_training_node_ignore_its_own_and_its_folds_labels(
        labelled_links: tuple[sp.csr_matrix, np.ndarray, np.ndarray]) -> None:
    from shopguard.models.graph import neighbour_label_features

    A, y, train = labelled_links
    ytr = y[train].copy()
    feats = neighbour_label_features(A, train, ytr, n_folds=5, random_state=2).to_numpy()
    # Flipping the labels of the *test* nodes changes nothing at all: they are never read.
    y_other = y.copy()
    test = np.setdiff1d(np.arange(A.shape[0]), train)
    y_other[test] = 1 - y_other[test]
    np.testing.assert_array_equal(neighbour_label_features(A, train, y_other[train], n_folds=5,
                                                           random_state=2).to_numpy(), feats)
    # A training node's counts are rescaled to the share of labels it could see, so the scales agree.
    assert feats[train, 0].mean() == pytest.approx(feats[test, 0].mean(), rel=0.5)


def test_label_features_reject_bad_input(labelled_links: tuple[sp.csr_matrix, np.ndarray, np.ndarray]) -> None:
    from shopguard.models.graph import neighbour_label_features

    A, y, train = labelled_links
    with pytest.raises(DataError) as exc:
        neighbour_label_features(A, train, y[train][:-1])
    assert exc.value.field == "y_train"
    with pytest.raises(DataError):
        neighbour_label_features(A, np.array([0, 10_000]), np.array([0, 1]))
    with pytest.raises(DataError):
        neighbour_label_features(A, train, np.full(len(train), 2))
    with pytest.raises(ValidationFailed):
        neighbour_label_features(A, train, y[train], n_folds=1)
