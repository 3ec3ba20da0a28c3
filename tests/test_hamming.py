"""The Hamming engine (kalahash.hamming) against brute force, in both of its implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kalahash import hamming, metrics
from kalahash.hamming import distances, pack_words, topk


def _case(seed: int, n_query: int, n_db: int, bits: int, p: float = 0.5):
    """Packed random codes, the engine's word layouts, and the plain 0/1 bit matrices."""
    rng = np.random.default_rng(seed)
    q_bits = rng.random((n_query, bits)) < p
    db_bits = rng.random((n_db, bits)) < p
    q = pack_words(np.packbits(q_bits, axis=1))
    db = np.ascontiguousarray(pack_words(np.packbits(db_bits, axis=1)).T)
    return q, db, q_bits, db_bits


def _brute(q_bits, db_bits, k):
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties by database index
    return order, np.take_along_axis(dist, order, axis=1), dist


@pytest.mark.parametrize("bits", [3, 16, 64, 70, 130])
def test_topk_matches_bruteforce_in_both_engines(bits):
    """Word widths 1, 2 and 8 bytes, several words, full tiles plus a partial one."""
    q, db, q_bits, db_bits = _case(bits, n_query=21, n_db=2500, bits=bits)
    assert db.dtype == {3: np.uint8, 16: np.uint16}.get(bits, np.uint64)
    for k in (1, 7, 300, 2500):
        want_index, want_dist, _ = _brute(q_bits, db_bits, k)
        for engine in hamming.ENGINES:
            index, dist = topk(q, db, k, engine=engine)
            np.testing.assert_array_equal(index, want_index, err_msg=f"{engine}, k={k}")
            np.testing.assert_array_equal(dist, want_dist, err_msg=f"{engine}, k={k}")


@pytest.mark.parametrize("k", [1, 3, 250, 1500])
def test_heavy_ties_keep_index_order_through_every_cut(k):
    """2-bit codes: only 3 distances over 6,000 items, so the buffer is cut back many times and nearly
    every cut falls inside a tie."""
    q, db, q_bits, db_bits = _case(7, n_query=19, n_db=6000, bits=2)
    want_index, want_dist, _ = _brute(q_bits, db_bits, k)
    index, dist = topk(q, db, k)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(dist, want_dist)


def test_skewed_codes_where_the_nearest_come_last():
    """The nearest items sit at the end of the database: the cut-off must keep falling to the end."""
    q, db, q_bits, db_bits = _case(3, n_query=5, n_db=3000, bits=32, p=0.9)
    q_bits[:] = False
    q = pack_words(np.packbits(q_bits, axis=1))
    weight = db_bits.sum(axis=1)
    order = np.argsort(-weight, kind="stable")  # farthest first
    db_bits = db_bits[order]
    db = np.ascontiguousarray(pack_words(np.packbits(db_bits, axis=1)).T)
    want_index, want_dist, _ = _brute(q_bits, db_bits, 40)
    index, dist = topk(q, db, 40)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(dist, want_dist)
    assert index.min() > 2500


def test_a_sampled_bound_that_is_too_small_is_caught():
    """K a sizeable part of the database: the k-th distance is bounded from a strided sample. Here the
    sampled items mislead (a few at 0, the rest at 10; every other item at 5), so the bound admits
    fewer than K items and the query must be streamed again without it."""
    n_db, k, bits = 4 * hamming._SAMPLE, 200, 16
    stride = n_db // hamming._SAMPLE
    db_bits = np.zeros((n_db, bits), dtype=bool)
    db_bits[:, :5] = True  # distance 5 from the all-zero query
    sampled = np.arange(hamming._SAMPLE) * stride
    db_bits[sampled[100:], :10] = True  # distance 10
    db_bits[sampled[:100]] = False  # distance 0
    q_bits = np.zeros((3, bits), dtype=bool)
    q_bits[2, 0] = True  # a second kind of query: its bound is fine
    q = pack_words(np.packbits(q_bits, axis=1))
    db = np.ascontiguousarray(pack_words(np.packbits(db_bits, axis=1)).T)
    want_index, want_dist, _ = _brute(q_bits, db_bits, k)
    index, dist = topk(q, db, k)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(dist, want_dist)
    assert (dist[0] == 0).sum() == 100 and (dist[0] == 5).sum() == 100


def test_many_queries_run_on_threads_with_the_same_result(monkeypatch):
    q, db, q_bits, db_bits = _case(11, n_query=50, n_db=1500, bits=24)
    serial = topk(q, db, 30)
    monkeypatch.setattr(hamming, "_PARALLEL_PAIRS", 1)
    parallel = topk(q, db, 30)
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[0], _brute(q_bits, db_bits, 30)[0])


@pytest.mark.parametrize("bits", [8, 70, 300])
def test_distances_match_bruteforce_in_both_engines(bits):
    q, db, q_bits, db_bits = _case(bits, n_query=6, n_db=333, bits=bits)
    want = _brute(q_bits, db_bits, 1)[2]
    for engine in hamming.ENGINES:
        got = distances(q, db, engine=engine)
        assert got.dtype == (np.uint8 if bits <= 255 else np.uint16)
        np.testing.assert_array_equal(got, want)


def test_without_numba_numpy_serves_with_one_warning(monkeypatch):
    q, db, _, _ = _case(1, n_query=4, n_db=100, bits=16)
    with_numba = topk(q, db, 9)
    monkeypatch.setattr(hamming, "numba", None)
    monkeypatch.setattr(hamming, "_warned", False)
    with pytest.warns(RuntimeWarning, match="numba is not installed.*falls back to numpy"):
        fallback = topk(q, db, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call stays quiet
        again = topk(q, db, 9)
    for got in (fallback, again):
        np.testing.assert_array_equal(got[0], with_numba[0])
    with pytest.raises(ValueError, match="engine='numba' needs numba"):
        topk(q, db, 9, engine="numba")


def test_map_ranks_with_the_engine(monkeypatch):
    """mAP with index ties is the same number whichever engine ranks, and equals the engine's ranking
    scored by hand."""
    rng = np.random.default_rng(5)
    qc = rng.choice(np.array([-1, 1], dtype=np.int8), size=(8, 16))
    dc = rng.choice(np.array([-1, 1], dtype=np.int8), size=(90, 16))
    ql = (rng.random((8, 3)) < 0.4).astype(np.uint8)
    dl = (rng.random((90, 3)) < 0.4).astype(np.uint8)
    compiled = metrics.mean_average_precision(qc, ql, dc, dl, topk=20)
    index, _ = topk(
        pack_words(np.packbits(qc > 0, axis=1)), pack_words(np.packbits(dc > 0, axis=1)).T.copy(), 20
    )
    rel = (ql[:, None, :] & dl[index]).any(axis=2)
    hits = np.cumsum(rel, axis=1)
    by_hand = np.where(
        hits[:, -1] > 0, (rel * hits / np.arange(1, 21)).sum(1) / np.maximum(hits[:, -1], 1), 0
    )
    assert compiled == pytest.approx(by_hand.mean(), abs=1e-12)
    monkeypatch.setattr(hamming, "numba", None)
    monkeypatch.setattr(hamming, "_warned", True)
    assert metrics.mean_average_precision(qc, ql, dc, dl, topk=20) == pytest.approx(compiled, abs=1e-12)


def test_bad_input_is_named():
    q, db, _, _ = _case(0, n_query=2, n_db=10, bits=16)
    for k in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"k must be an integer from 1 to the database size 10"):
            topk(q, db, k)
    with pytest.raises(ValueError, match="share one unsigned dtype"):
        topk(q.astype(np.uint32), db, 3)
    with pytest.raises(ValueError, match="queries have 1 words per code but the database 2"):
        topk(q, np.zeros((2, 10), np.uint16), 3)
    with pytest.raises(ValueError, match=r"database words \(words, n_db\)"):
        distances(q, db[0])
    with pytest.raises(ValueError, match="engine must be one of numba, numpy"):
        topk(q, db, 3, engine="faiss")


def test_order_ties_puts_chosen_items_first_then_the_score_then_the_index():
    rng = np.random.default_rng(3)
    distance = rng.integers(0, 4, size=400).astype(np.uint8)
    score = rng.random(400)
    first = np.array([int(np.flatnonzero(distance == 0)[-1]), int(np.flatnonzero(distance == 1)[-1])])
    for k in (1, 5, 57, 400):
        plain = hamming.order_ties(distance, k)
        np.testing.assert_array_equal(plain, np.argsort(distance, kind="stable")[:k])  # topk's rule
        chosen = hamming.order_ties(distance, k, first=first, score=score)
        want = sorted(range(400), key=lambda i: (distance[i], i not in first, -score[i], i))[:k]
        assert chosen.tolist() == want
    # the score may be a function, asked only about the items at or within the k-th distance
    asked = []

    def by_function(rows):
        asked.append(rows)
        return score[rows]

    np.testing.assert_array_equal(
        hamming.order_ties(distance, 9, score=by_function), hamming.order_ties(distance, 9, score=score)
    )
    assert set(distance[asked[0]].tolist()) == {0} and len(asked[0]) == (distance == 0).sum()
    with pytest.raises(ValueError, match="k must be an integer from 1 to the number of items 400"):
        hamming.order_ties(distance, 401)
