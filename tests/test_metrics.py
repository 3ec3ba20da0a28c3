"""Retrieval metrics against plain brute-force references (notes: Protocol)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kalahash import hamming, metrics
from kalahash.metrics import (
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    silhouette_100,
)

# ------------------------------------------------------------------------------------------------
# Brute-force references: per-query loops, straight from the definitions
# ------------------------------------------------------------------------------------------------


def _distances_and_relevance(qc, ql, dc, dl, i):
    bits = qc.shape[1]
    dist = (bits - dc.astype(np.int64) @ qc[i].astype(np.int64)) // 2
    rel = (dl.astype(np.int64) @ ql[i].astype(np.int64)) > 0
    return dist, rel


def _ap(rel_ranked: np.ndarray) -> float:
    hits = np.cumsum(rel_ranked)
    if hits[-1] == 0:
        return 0.0
    return float((hits / np.arange(1, len(hits) + 1))[rel_ranked].sum() / hits[-1])


def ref_map(qc, ql, dc, dl, topk=None) -> float:
    k = len(dc) if topk is None else min(topk, len(dc))
    aps = []
    for i in range(len(qc)):
        dist, rel = _distances_and_relevance(qc, ql, dc, dl, i)
        aps.append(_ap(rel[np.argsort(dist, kind="stable")][:k]))
    return float(np.mean(aps))


def ref_precision(qc, ql, dc, dl, k) -> float:
    out = []
    for i in range(len(qc)):
        dist, rel = _distances_and_relevance(qc, ql, dc, dl, i)
        out.append(rel[np.argsort(dist, kind="stable")][:k].sum() / k)
    return float(np.mean(out))


def ref_average_by_permutations(qc, ql, dc, dl, ks):
    """Exact E[AP@k] and E[P@k] over every order inside each group of equal distance (tiny N)."""
    n = len(dc)
    aps = np.zeros((len(qc), len(ks)))
    precs = np.zeros((len(qc), len(ks)))
    for i in range(len(qc)):
        dist, rel = _distances_and_relevance(qc, ql, dc, dl, i)
        groups = [np.flatnonzero(dist == d) for d in np.unique(dist)]
        count = 0
        for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
            ranked = rel[np.concatenate(perms)]
            for j, k in enumerate(ks):
                kk = n if k is None else min(k, n)
                aps[i, j] += _ap(ranked[:kk])
                precs[i, j] += ranked[:kk].sum() / (n if k is None else k)
            count += 1
        aps[i] /= count
        precs[i] /= count
    return aps.mean(axis=0), precs.mean(axis=0)


def ref_average_by_placements(dist: np.ndarray, rel: np.ndarray, ks: list[int]) -> np.ndarray:
    """E[AP@k] for one query: the relevant items of each tied group sit on a uniformly random subset
    of the group's ranks (the same law as a uniformly random order), enumerated exhaustively."""
    ds = np.unique(dist)
    sizes = [int((dist == d).sum()) for d in ds]
    n_rel = [int(rel[dist == d].sum()) for d in ds]
    per_group = [
        [np.isin(np.arange(s), sl) for sl in itertools.combinations(range(s), r)]
        for s, r in zip(sizes, n_rel, strict=True)
    ]
    ranked = np.array([np.concatenate(parts) for parts in itertools.product(*per_group)])
    out = []
    for k in ks:
        top = ranked[:, :k]
        hits = np.cumsum(top, axis=1)
        prec_sum = np.where(top, hits / np.arange(1, top.shape[1] + 1), 0).sum(axis=1)
        out.append(np.where(hits[:, -1] > 0, prec_sum / np.maximum(hits[:, -1], 1), 0).mean())
    return np.array(out)


def ref_pr(qc, ql, dc, dl, levels):
    """The released protocol: first prefix whose recall (hits / R, float) reaches each level."""
    rho = np.linspace(0.01, 1, levels)
    rows = []
    for i in range(len(qc)):
        dist, rel = _distances_and_relevance(qc, ql, dc, dl, i)
        if not rel.any():
            continue
        hits = np.cumsum(rel[np.argsort(dist, kind="stable")])
        recall = hits / rel.sum()
        first = np.array([np.flatnonzero(recall >= r)[0] for r in rho])
        rows.append(hits[first] / (first + 1))
    return np.mean(rows, axis=0), rho


def random_case(seed: int, n_query: int, n_db: int, bits: int, classes: int = 5, p: float = 0.3):
    rng = np.random.default_rng(seed)
    qc = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_query, bits))
    dc = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_db, bits))
    ql = (rng.random((n_query, classes)) < p).astype(np.uint8)
    dl = (rng.random((n_db, classes)) < p).astype(np.uint8)
    return qc, ql, dc, dl


# ------------------------------------------------------------------------------------------------
# mAP, ties="index"
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 16])
@pytest.mark.parametrize("topk", [None, 1, 7, 40, 95])
def test_map_index_matches_bruteforce(bits, topk):
    qc, ql, dc, dl = random_case(bits, n_query=12, n_db=80, bits=bits)
    assert mean_average_precision(qc, ql, dc, dl, topk=topk) == pytest.approx(
        ref_map(qc, ql, dc, dl, topk), abs=1e-12
    )


@pytest.mark.parametrize("dense_fraction", [0.0, 2.0])
@pytest.mark.parametrize("ties", ["index", "average"])
def test_both_selection_paths_agree(monkeypatch, dense_fraction, ties):
    """Full-row sort (0.0) and candidate selection (2.0) give the same numbers for every K."""
    qc, ql, dc, dl = random_case(1, n_query=9, n_db=120, bits=4)
    expected = {k: mean_average_precision(qc, ql, dc, dl, topk=k, ties=ties) for k in (1, 5, 33, 120)}
    monkeypatch.setattr(metrics, "_DENSE_FRACTION", dense_fraction)
    for k, value in expected.items():
        assert mean_average_precision(qc, ql, dc, dl, topk=k, ties=ties) == pytest.approx(value, abs=1e-12)
    if ties == "index":
        for k in (1, 5, 33, 120):
            assert mean_average_precision(qc, ql, dc, dl, topk=k) == pytest.approx(
                ref_map(qc, ql, dc, dl, k), abs=1e-12
            )


def test_threshold_guess_too_low_is_widened(monkeypatch):
    """Sampled columns all sit at distance 0 but only 100 items do: the guessed cut-off must widen."""
    monkeypatch.setattr(metrics, "_SAMPLE_COLUMNS", 100)
    bits, n_db = 8, 1000
    qc = np.ones((2, bits), dtype=np.int8)
    qc[1, 0] = -1
    dc = np.ones((n_db, bits), dtype=np.int8)
    off_sample = np.arange(n_db) % 10 != 0  # stride is 10: these items are never sampled
    dc[off_sample, 1 + np.arange(n_db)[off_sample] % 7] = -1
    rng = np.random.default_rng(3)
    ql = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    dl = (rng.random((n_db, 2)) < 0.4).astype(np.uint8)
    for ties in ("index", "average"):
        for k in (150, 240):
            got = mean_average_precision(qc, ql, dc, dl, topk=k, ties=ties)
            monkeypatch.setattr(metrics, "_DENSE_FRACTION", 0.0)
            dense = mean_average_precision(qc, ql, dc, dl, topk=k, ties=ties)
            monkeypatch.setattr(metrics, "_DENSE_FRACTION", 0.25)
            assert got == pytest.approx(dense, abs=1e-12)
    assert mean_average_precision(qc, ql, dc, dl, topk=150) == pytest.approx(
        ref_map(qc, ql, dc, dl, 150), abs=1e-12
    )


@pytest.mark.parametrize("bits", [70, 300])
def test_map_multiword_codes_and_wide_labels(bits):
    """Codes over 64 bits (several words; over 255 bits, uint16 distances) and > 64 classes."""
    qc, ql, dc, dl = random_case(bits, n_query=5, n_db=60, bits=bits, classes=80, p=0.02)
    for topk in (None, 9):
        assert mean_average_precision(qc, ql, dc, dl, topk=topk) == pytest.approx(
            ref_map(qc, ql, dc, dl, topk), abs=1e-12
        )


def test_small_chunks_give_the_same_value(monkeypatch):
    qc, ql, dc, dl = random_case(5, n_query=30, n_db=200, bits=16)
    expected = [
        mean_average_precision(qc, ql, dc, dl, topk=k, ties=t) for k in (10, None) for t in metrics.TIES
    ]
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", 1)  # one query per chunk
    got = [mean_average_precision(qc, ql, dc, dl, topk=k, ties=t) for k in (10, None) for t in metrics.TIES]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_query_without_relevant_item_counts_as_zero():
    qc, ql, dc, dl = random_case(7, n_query=2, n_db=30, bits=8)
    ql[1] = 0  # no label: nothing is relevant to it
    ap_first = mean_average_precision(qc[:1], ql[:1], dc, dl)
    assert ap_first > 0
    for ties in metrics.TIES:
        assert mean_average_precision(qc[1:], ql[1:], dc, dl, ties=ties) == 0.0
    assert mean_average_precision(qc, ql, dc, dl) == pytest.approx(ap_first / 2, abs=1e-15)


def test_relevant_items_outside_topk_count_as_zero():
    """Relevant items exist, but none in the top K: AP@K is 0 for that query."""
    bits = 4
    qc = np.ones((1, bits))
    dc = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, -1]])
    ql = np.array([[1, 0]])
    dl = np.array([[0, 1], [0, 1], [1, 0]])
    assert mean_average_precision(qc, ql, dc, dl, topk=2) == 0.0
    assert mean_average_precision(qc, ql, dc, dl, topk=2, ties="average") == 0.0
    assert mean_average_precision(qc, ql, dc, dl) == pytest.approx(1 / 3)


def test_all_relevant_gives_one():
    qc, _, dc, _ = random_case(8, n_query=6, n_db=50, bits=4)
    for ties in metrics.TIES:
        for topk in (None, 5):
            assert mean_average_precision(
                qc, np.ones((6, 3)), dc, np.ones((50, 3)), topk=topk, ties=ties
            ) == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_map():
    """Distances 0, 1, 1, 2 with relevance 1, 0, 1, 0 (index order inside the tie)."""
    qc = np.array([[1, 1]])
    dc = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    ql = np.array([[1, 0]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    assert mean_average_precision(qc, ql, dc, dl) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(qc, ql, dc, dl, topk=2) == pytest.approx(1.0)
    # average: the tie {1, 2} is in either order: ranks of the 2nd relevant are 2 or 3
    assert mean_average_precision(qc, ql, dc, dl, ties="average") == pytest.approx(
        ((1 + 1) / 2 + (1 + 2 / 3) / 2) / 2
    )


# ------------------------------------------------------------------------------------------------
# ties="average": exact expectations
# ------------------------------------------------------------------------------------------------


def test_average_three_way_tie_by_hand():
    """One tied group of 3 with relevance (0, 1, 1): index gives 7/12, the expectation 29/36."""
    qc = np.ones((1, 2))
    dc = np.ones((3, 2))
    ql = np.array([[1]])
    dl = np.array([[0], [1], [1]])
    assert mean_average_precision(qc, ql, dc, dl) == pytest.approx(7 / 12)
    assert mean_average_precision(qc, ql, dc, dl, ties="average") == pytest.approx(29 / 36)


@pytest.mark.parametrize("seed", range(8))
def test_average_matches_permutation_enumeration(seed):
    rng = np.random.default_rng(100 + seed)
    bits = int(rng.integers(1, 4))
    n_db = int(rng.integers(1, 7))
    qc, ql, dc, dl = random_case(seed, n_query=3, n_db=n_db, bits=bits, classes=3, p=0.4)
    ks = [None, 1, 2, 3, 5, n_db + 2]
    ap_ref, prec_ref = ref_average_by_permutations(qc, ql, dc, dl, ks)
    for j, k in enumerate(ks):
        got = mean_average_precision(qc, ql, dc, dl, topk=k, ties="average")
        assert got == pytest.approx(ap_ref[j], abs=1e-12)
        pk = precision_at_k(qc, ql, dc, dl, k=n_db if k is None else k, ties="average")
        assert pk == pytest.approx(prec_ref[j], abs=1e-12)


def test_average_matches_placement_enumeration_large_groups():
    """Groups of up to 8 with a straddling cut-off (hypergeometric split), against enumeration."""
    dist = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3])
    rel = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    bits = 3
    qc = np.ones((1, bits))
    dc = np.ones((len(dist), bits))
    for i, d in enumerate(dist):
        dc[i, :d] = -1
    ql = np.array([[1]])
    dl = rel[:, None].astype(int)
    ks = [1, 2, 4, 9, 13, 17, 20]
    got = [mean_average_precision(qc, ql, dc, dl, topk=k, ties="average") for k in ks]
    np.testing.assert_allclose(got, ref_average_by_placements(dist, rel, ks), rtol=0, atol=1e-12)


def test_group_precision_sum_closed_form():
    """The per-group closed form against enumeration of relevant-slot subsets."""
    for s, c, m, t in [(0, 0, 1, 1), (3, 1, 4, 2), (5, 2, 6, 6), (2, 0, 5, 0), (10, 4, 7, 3), (0, 0, 6, 4)]:
        total = count = 0
        for slots in itertools.combinations(range(1, m + 1), t):
            total += sum((c + 1 + j) / (s + p) for j, p in enumerate(slots))
            count += 1
        got = metrics._group_precision_sum(np.array(t), np.array(m), np.array(s), np.array(c))
        assert float(got) == pytest.approx(total / count, abs=1e-12)


def test_average_equals_index_without_ties():
    """Each database item at its own distance: every ordering is the index ordering."""
    bits = 8
    qc = np.ones((1, bits))
    dc = np.ones((bits + 1, bits))
    for i in range(bits + 1):
        dc[i, :i] = -1
    rng = np.random.default_rng(0)
    dc = dc[rng.permutation(bits + 1)]
    ql = np.array([[1, 0]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1]])
    for topk in (None, 1, 4, 20):
        index = mean_average_precision(qc, ql, dc, dl, topk=topk)
        assert mean_average_precision(qc, ql, dc, dl, topk=topk, ties="average") == pytest.approx(
            index, abs=1e-14
        )


def test_average_differs_from_index_when_ties_reorder_relevant_items():
    qc, ql, dc, dl = random_case(11, n_query=10, n_db=200, bits=4)
    index = mean_average_precision(qc, ql, dc, dl, topk=20)
    average = mean_average_precision(qc, ql, dc, dl, topk=20, ties="average")
    assert abs(index - average) > 1e-4


# ------------------------------------------------------------------------------------------------
# precision@k and the PR curve
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 6, 50, 70])
def test_precision_at_k_matches_bruteforce(k):
    qc, ql, dc, dl = random_case(21, n_query=10, n_db=60, bits=4)
    assert precision_at_k(qc, ql, dc, dl, k=k) == pytest.approx(ref_precision(qc, ql, dc, dl, k), abs=1e-12)


def test_precision_at_k_beyond_database_divides_by_k():
    qc = np.ones((1, 2))
    dc = np.ones((4, 2))
    ql = np.array([[1]])
    dl = np.array([[1], [1], [0], [1]])
    assert precision_at_k(qc, ql, dc, dl, k=10) == pytest.approx(0.3)
    assert precision_at_k(qc, ql, dc, dl, k=10, ties="average") == pytest.approx(0.3)
    assert precision_at_k(qc, ql, dc, dl, k=2, ties="average") == pytest.approx(0.75)  # E = 2 * 3/4 hits
    assert precision_at_k(qc, ql, dc, dl, k=2) == pytest.approx(1.0)


def test_pr_curve_hand_computed():
    """Ranked relevance 1, 0, 1, 0 (R = 2): recall 0.5 at rank 1, 1.0 at rank 3."""
    qc = np.array([[1, 1]])
    dc = np.array([[1, 1], [1, -1], [-1, -1], [-1, -1]])
    ql = np.array([[1]])
    dl = np.array([[1], [0], [1], [0]])
    precision, recall = precision_recall_curve(qc, ql, dc, dl, levels=4)
    np.testing.assert_allclose(recall, [0.01, 0.34, 0.67, 1.0])
    np.testing.assert_allclose(precision, [1.0, 1.0, 2 / 3, 2 / 3])


@pytest.mark.parametrize("bits", [4, 16])
def test_pr_curve_matches_bruteforce(bits):
    qc, ql, dc, dl = random_case(bits + 30, n_query=15, n_db=90, bits=bits, p=0.25)
    ql[3] = 0  # a query without relevant items is left out of the average
    precision, recall = precision_recall_curve(qc, ql, dc, dl)
    ref_p, ref_r = ref_pr(qc, ql, dc, dl, 15)
    assert precision.shape == recall.shape == (15,)
    np.testing.assert_allclose(recall, ref_r)
    np.testing.assert_allclose(precision, ref_p, atol=1e-12)
    assert np.all(np.diff(recall) > 0)
    assert np.all((precision >= 0) & (precision <= 1))
    keep = np.arange(15) != 3
    np.testing.assert_allclose(precision_recall_curve(qc[keep], ql[keep], dc, dl)[0], precision, atol=1e-12)


def test_pr_curve_needs_a_query_with_relevant_items():
    qc, ql, dc, dl = random_case(2, n_query=3, n_db=10, bits=4)
    with pytest.raises(ValueError, match="no query has a relevant"):
        precision_recall_curve(qc, np.zeros_like(ql), dc, dl)


# ------------------------------------------------------------------------------------------------
# silhouette
# ------------------------------------------------------------------------------------------------


def test_silhouette_hand_computed_and_label_forms():
    """1-D points 0, 1 | 4, 5: silhouettes 7/9, 5/7, 5/7, 7/9 -> mean 47/63 -> 50 (1 + 47/63)."""
    x = np.array([[0.0], [1.0], [4.0], [5.0]])
    expected = 50 * (1 + 47 / 63)
    assert silhouette_100(x, np.array([0, 0, 1, 1])) == pytest.approx(expected)
    assert silhouette_100(x, np.array([[1, 0], [1, 0], [0, 1], [0, 1]])) == pytest.approx(expected)
    assert silhouette_100(torch.tensor(x), torch.tensor([3, 3, 7, 7])) == pytest.approx(expected)


def test_silhouette_separated_clusters_near_100_and_metric_passes_through():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 1000
    x = np.concatenate([c + rng.normal(size=(20, 3)) for c in centres])
    y = np.repeat(np.arange(3), 20)
    assert silhouette_100(x, y) > 99
    mixed = rng.normal(size=(60, 3))
    assert 30 < silhouette_100(mixed, y) < 60  # random labels: silhouette near 0
    x2 = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    assert silhouette_100(x2, [0, 0, 1, 1], metric="cosine") > silhouette_100(x2, [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (np.zeros((4, 2)), np.array([[1, 1], [1, 0], [0, 1], [0, 1]]), "one label per item"),
        (np.zeros((4, 2)), np.array([[0, 0], [1, 0], [0, 1], [0, 1]]), "one label per item"),
        (np.zeros((4, 2)), np.array([[2, 0], [1, 0], [0, 1], [0, 1]]), "one-hot 0/1"),
        (np.zeros((4, 2)), np.zeros(4), "at least 2 classes"),
        (np.zeros((4, 2)), np.arange(4), "fewer classes than items"),
        (np.zeros(4), np.array([0, 0, 1, 1]), "features must be a 2-D"),
        (np.zeros((4, 2)), np.array([0, 1, 1]), "4 rows but labels has 3"),
        (np.zeros((4, 2)), np.zeros((4, 2, 1)), "1-D class ids or 2-D one-hot"),
    ],
)
def test_silhouette_bad_input(features, labels, match):
    with pytest.raises(ValueError, match=match):
        silhouette_100(features, labels)


# ------------------------------------------------------------------------------------------------
# Input types and validation
# ------------------------------------------------------------------------------------------------


def test_torch_and_numpy_inputs_agree():
    qc, ql, dc, dl = random_case(4, n_query=8, n_db=40, bits=16)
    expected = mean_average_precision(qc, ql, dc, dl, topk=10)
    tq = torch.tensor(qc, dtype=torch.float32, requires_grad=True)
    assert (
        mean_average_precision(tq, torch.tensor(ql), torch.tensor(dc), torch.tensor(dl).bool(), 10)
        == expected
    )
    assert (
        mean_average_precision(qc.astype(np.float64), ql.astype(bool), dc.astype(np.int64), dl, 10)
        == expected
    )
    assert mean_average_precision(torch.tensor(qc).to(torch.bfloat16), ql, dc, dl, topk=10) == expected
    avg = mean_average_precision(qc, ql, dc, dl, topk=10, ties="average")
    assert mean_average_precision(tq, ql, dc, torch.tensor(dl, dtype=torch.float16), 10, "average") == avg
    assert precision_at_k(tq, ql, dc, dl, 5) == precision_at_k(qc, ql, dc, dl, 5)
    np.testing.assert_array_equal(
        precision_recall_curve(tq, ql, dc, dl)[0], precision_recall_curve(qc, ql, dc, dl)[0]
    )


def test_popcount_table_matches_numpy():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        words = rng.integers(0, np.iinfo(dtype).max, size=(3, 50), dtype=dtype, endpoint=True)
        out = np.empty(words.shape, dtype=np.uint8)
        np.testing.assert_array_equal(hamming._popcount_table(words, out), np.bitwise_count(words))


_Q, _QL, _D, _DL = random_case(0, n_query=3, n_db=10, bits=8, classes=4)


def _with(**changes):
    args = {"query_codes": _Q, "query_labels": _QL, "db_codes": _D, "db_labels": _DL}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("args", "extra", "match"),
    [
        (_with(query_codes=_Q > 0), {}, r"query_codes must hold ±1 values, got a bool array"),
        (_with(db_codes=np.where(_D > 0, 1, 0)), {}, r"db_codes must hold only -1 and \+1.*found 0"),
        (_with(db_codes=np.where(_D > 0, 1.0, np.nan)), {}, r"db_codes must hold only -1 and \+1.*nan"),
        (_with(query_codes=_Q[0]), {}, r"query_codes must be a 2-D array .*got shape \(8,\)"),
        (_with(query_codes=_Q[:0]), {}, r"query_codes must have at least one row"),
        (_with(db_codes=_D.astype(complex)), {}, r"db_codes must hold real numbers, got dtype complex128"),
        (_with(db_codes=_D.astype(str)), {}, r"db_codes must hold real numbers"),
        (_with(query_labels=_QL * 2), {}, r"query_labels must be a 0/1 matrix.*found 2"),
        (_with(db_labels=_DL[..., None]), {}, r"db_labels must be a 2-D array"),
        (_with(query_labels=_QL[:2]), {}, r"query_codes has 3 rows but query_labels has 2"),
        (_with(db_labels=_DL[:9]), {}, r"db_codes has 10 rows but db_labels has 9"),
        (_with(db_codes=_D[:, :6]), {}, r"query_codes has 8 bits but db_codes has 6"),
        (_with(db_labels=_DL[:, :3]), {}, r"query_labels has 4 classes but db_labels has 3"),
        (_with(), {"topk": 0}, r"topk must be a positive integer or None, got 0"),
        (_with(), {"topk": -5}, r"topk must be a positive integer or None, got -5"),
        (_with(), {"topk": 2.5}, r"topk must be a positive integer or None, got 2.5"),
        (_with(), {"topk": True}, r"topk must be a positive integer or None, got True"),
        (_with(), {"ties": "random"}, r"ties must be one of 'index', 'average'; got 'random'"),
        (
            _with(query_codes=np.full((3, 8), None)),
            {},
            r"query_codes must hold real numbers, got dtype object",
        ),
    ],
)
def test_map_bad_input(args, extra, match):
    with pytest.raises(ValueError, match=match):
        mean_average_precision(**args, **extra)


def test_other_entry_points_validate():
    with pytest.raises(ValueError, match=r"k must be a positive integer, got 0"):
        precision_at_k(_Q, _QL, _D, _DL, k=0)
    with pytest.raises(ValueError, match=r"k must be a positive integer, got None"):
        precision_at_k(_Q, _QL, _D, _DL, k=None)
    with pytest.raises(ValueError, match=r"ties must be one of"):
        precision_at_k(_Q, _QL, _D, _DL, k=3, ties="first")
    with pytest.raises(ValueError, match=r"levels must be a positive integer, got 0"):
        precision_recall_curve(_Q, _QL, _D, _DL, levels=0)
    with pytest.raises(ValueError, match=r"db_codes has 10 rows but db_labels has 9"):
        precision_recall_curve(_Q, _QL, _D, _DL[:9])
    with pytest.raises(ValueError, match=r"query_codes must hold only -1 and \+1"):
        precision_at_k(np.zeros((3, 8)), _QL, _D, _DL, k=1)
    assert math.isfinite(precision_at_k(_Q, _QL, _D, _DL, k=np.int64(3)))
