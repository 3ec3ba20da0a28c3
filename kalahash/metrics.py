"""Retrieval metrics for hash codes: mAP@K, precision@k, the PR curve, and the Figure 1 silhouette.

The protocol is the DeepHash-pytorch one (notes: Protocol): a database item is relevant to a query when
they share at least one label, and the database is ranked by Hamming distance ``(bits - q.d) / 2``.

Why the machinery below: the per-query loop of the released code (matmul, full sort, cumsum) costs
~40 ms per query at NUS-WIDE scale. Here codes are packed into machine words, distances come from
XOR + popcount (exact small integers), and queries are processed in chunks sized from a memory budget.
The top-K ranking with index ties is the Hamming engine's (:func:`kalahash.hamming.topk`, the one image
search uses); the averaged-ties expectation counts the distance buckets up to the K-th distance, so only
the items at or below it are ever sorted.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["TIES", "mean_average_precision", "precision_at_k", "precision_recall_curve", "silhouette_100"]

# The tie rules of mAP (mean_average_precision): ties broken by database index, or the exact average over
# the orders within tied groups. The one definition: runs, tables, the CLI and efficiency read it here.
# This module imports the Hamming engine (numba) and scipy where they are used, so reading TIES is light.
TIES = ("index", "average")

# Working memory per chunk of queries. The estimate is rough (numpy temporaries), so the real peak is a
# small multiple of it; small chunks also stay closer to the caches and cost nothing in Python overhead.
_CHUNK_BYTES = 64 * 2**20
# Bytes per query and top-K slot of the engine's ranking: its buffers (2K ids and distances), the ranked
# ids and distances, and the relevance of each ranked item.
_TOPK_BYTES = 60
# Above this fraction of the database, selecting candidates first costs more than sorting every row.
_DENSE_FRACTION = 0.25
# Database columns sampled to guess each query's K-th smallest distance (the guess is then verified).
_SAMPLE_COLUMNS = 4096


# ----------------------------------------------------------------------------------------------------
# Validation (the boundary: everything after it trusts its inputs)
# ----------------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Array-like or torch tensor (any device) -> numpy array, without importing torch."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # dtypes numpy lacks (bfloat16): exact for ±1 and 0/1 values
            return x.float().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc
    return arr


def _check_2d(arr: np.ndarray, name: str, what: str) -> None:
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array ({what}), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if arr.dtype != np.bool_ and not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")


def _offending(arr: np.ndarray, ok: np.ndarray) -> str:
    bad = np.unique(arr[~ok])[:5]
    return ", ".join(repr(v.item()) for v in bad)


def _check_codes(x: Any, name: str) -> np.ndarray:
    """±1 codes of any real dtype -> bool matrix (True = +1)."""
    arr = _to_numpy(x, name)
    _check_2d(arr, name, "n_items x n_bits")
    if arr.dtype == np.bool_:
        raise ValueError(
            f"{name} must hold ±1 values, got a bool array; map 0/1 bits to ±1 first (2 * b - 1)"
        )
    pos = arr == 1
    ok = pos | (arr == -1)
    if not ok.all():
        raise ValueError(
            f"{name} must hold only -1 and +1 (sign of the hash layer, 0 mapped to +1), "
            f"found {_offending(arr, ok)}"
        )
    return pos


def _check_labels(x: Any, name: str) -> np.ndarray:
    """0/1 label matrix (one-hot or multi-hot) of any real or bool dtype -> bool matrix."""
    arr = _to_numpy(x, name)
    _check_2d(arr, name, "n_items x n_classes, one-hot or multi-hot 0/1")
    if arr.dtype == np.bool_:
        return arr
    one = arr == 1
    ok = one | (arr == 0)
    if not ok.all():
        raise ValueError(f"{name} must be a 0/1 matrix (one-hot or multi-hot), found {_offending(arr, ok)}")
    return one


def _check_positive_int(value: Any, name: str, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_ties(ties: Any) -> str:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in TIES)}; got {ties!r}")
    return ties


class _Retrieval:
    """Validated, bit-packed query and database sides, shared by the mAP / P@k / PR entry points."""

    def __init__(self, query_codes: Any, query_labels: Any, db_codes: Any, db_labels: Any) -> None:
        qc = _check_codes(query_codes, "query_codes")
        ql = _check_labels(query_labels, "query_labels")
        dc = _check_codes(db_codes, "db_codes")
        dl = _check_labels(db_labels, "db_labels")
        if qc.shape[0] != ql.shape[0]:
            raise ValueError(f"query_codes has {qc.shape[0]} rows but query_labels has {ql.shape[0]}")
        if dc.shape[0] != dl.shape[0]:
            raise ValueError(f"db_codes has {dc.shape[0]} rows but db_labels has {dl.shape[0]}")
        if qc.shape[1] != dc.shape[1]:
            raise ValueError(
                f"query_codes has {qc.shape[1]} bits but db_codes has {dc.shape[1]}; both must use one code length"
            )
        if ql.shape[1] != dl.shape[1]:
            raise ValueError(
                f"query_labels has {ql.shape[1]} classes but db_labels has {dl.shape[1]}; "
                "both must use one label space"
            )
        self.bits = qc.shape[1]
        self.n_query = qc.shape[0]
        self.n_db = dc.shape[0]
        self.q_words = _pack(qc)
        self.db_words = np.ascontiguousarray(_pack(dc).T)  # (words, n_db): each word row contiguous
        self.q_labels = _pack(ql)
        self.db_labels = _pack(dl)
        self.dist_dtype = np.uint8 if self.bits <= 255 else np.uint16

    # -- distances and relevance ---------------------------------------------------------------------

    def chunks(self, bytes_per_row: int, full_rows: bool = True) -> Iterator[slice]:
        """Query slices sized from the memory budget.

        With ``full_rows`` (every distance of a chunk is computed) the per-chunk buffers are allocated
        once and reused: fresh multi-megabyte arrays on every chunk cost as much in page faults as the
        popcount itself. The engine's top-K needs none.
        """
        size = min(max(1, _CHUNK_BYTES // max(bytes_per_row, 1)), self.n_query)
        if full_rows:
            self._dist = np.empty((size, self.n_db), dtype=self.dist_dtype)
            self._mask = np.empty((size, self.n_db), dtype=np.bool_)
        for start in range(0, self.n_query, size):
            yield slice(start, min(start + size, self.n_query))

    def hamming(self, rows: slice) -> np.ndarray:
        """Exact Hamming distances (chunk, n_db) by XOR + popcount over packed words (a reused buffer)."""
        from .hamming import distances

        q = self.q_words[rows]
        return distances(q, self.db_words, out=self._dist[: q.shape[0]])

    def relevant(self, query_rows: np.ndarray, db_items: np.ndarray) -> np.ndarray:
        """Relevance (share >= 1 label) for broadcastable arrays of query and database indices."""
        both = self.q_labels[query_rows] & self.db_labels[db_items]
        return (both != 0).any(axis=-1)

    # -- the top-K ranking with index tie-break ------------------------------------------------------

    def topk_relevance(self, rows: slice, k: int) -> np.ndarray:
        """(chunk, k) relevance of the ranked top-k items (k <= n_db), ties broken by database index."""
        from .hamming import topk

        top, _ = topk(self.q_words[rows], self.db_words, k)
        return self.relevant(np.arange(rows.start, rows.stop)[:, None], top)

    def _candidates(self, dist: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        """All items at or below a per-query distance threshold that keeps at least k of them.

        Returns flat (row, item, distance) arrays in (row, item) order and the count per row. Every
        distance bucket up to the threshold is complete, so the top k and the bucket counts up to the
        K-th item are exact. The threshold is guessed from a column sample and then verified.
        """
        n_rows, n_db = dist.shape
        nb = self.bits + 1
        stride = max(1, n_db // _SAMPLE_COLUMNS)
        sample = dist[:, ::stride]
        hist = np.bincount(
            (sample + (np.arange(n_rows) * nb)[:, None]).ravel(), minlength=n_rows * nb
        ).reshape(n_rows, nb)
        expected = k / n_db * sample.shape[1]
        reached = np.cumsum(hist, axis=1) >= expected + 2.0 * np.sqrt(expected)
        thresh = np.where(reached.any(axis=1), reached.argmax(axis=1), self.bits).astype(dist.dtype)
        mask = self._mask[:n_rows]
        np.less_equal(dist, thresh[:, None], out=mask)
        while True:
            flat = np.flatnonzero(mask)
            counts = np.diff(np.searchsorted(flat, np.arange(n_rows + 1) * n_db))
            short = np.flatnonzero(counts < k)
            if not short.size:
                row = np.repeat(np.arange(n_rows), counts)
                return row, flat - row * n_db, dist.ravel()[flat], counts
            # the guess was too low for a few rows: widen those rows and collect again
            thresh[short] += 1
            mask[short] = dist[short] <= thresh[short, None]

    # -- distance-bucket counts (for ties="average") -------------------------------------------------

    def bucket_counts(self, rows: slice, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query and distance d: (items at d, relevant items at d), exact for every d that can
        hold one of the top k (k <= n_db; later buckets may read 0)."""
        dist = self.hamming(rows)
        n_rows = dist.shape[0]
        nb = self.bits + 1
        if k >= _DENSE_FRACTION * self.n_db:
            rel = self.relevant(np.arange(rows.start, rows.stop)[:, None], np.arange(self.n_db)[None, :])
            key = dist.astype(np.int64)
            key += (np.arange(n_rows) * nb)[:, None]
        else:
            row, item, d, _ = self._candidates(dist, k)
            rel = self.relevant(row + rows.start, item)
            key = row * nb + d
        key *= 2
        key += rel
        both = np.bincount(key.ravel(), minlength=n_rows * nb * 2).reshape(n_rows, nb, 2)
        return both.sum(axis=2), both[:, :, 1]


def _pack(flags: np.ndarray) -> np.ndarray:
    """Bool matrix -> (n, words) unsigned ints, one bit per column (zero padding never counts)."""
    from .hamming import pack_words

    return pack_words(np.packbits(flags, axis=1))


# ----------------------------------------------------------------------------------------------------
# Exact expectations over random orderings inside tied groups (ties="average")
# ----------------------------------------------------------------------------------------------------


def _group_precision_sum(t: np.ndarray, m: np.ndarray, s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Expected sum of precisions at the relevant slots of a tied group (float64, elementwise).

    The group fills ranks s+1..s+m, holds t relevant items at uniformly random slots, and c relevant
    items precede it. Slot p is relevant with probability t/m and then has c + 1 + (p-1)(t-1)/(m-1)
    relevant items up to it, so the sum is (t/m) [(c+1) H1 + (t-1)/(m-1) H2] with
    H1 = sum_p 1/(s+p) = digamma(s+m+1) - digamma(s+1) and H2 = sum_p (p-1)/(s+p) = m - (s+1) H1.
    Entries with m == 0 give 0.
    """
    from scipy.special import digamma

    t, m, s, c = (np.asarray(a, dtype=np.float64) for a in (t, m, s, c))
    safe_m = np.maximum(m, 1.0)
    h1 = digamma(s + safe_m + 1.0) - digamma(s + 1.0)
    h2 = safe_m - (s + 1.0) * h1
    spread = np.where(m > 1, (t - 1.0) / np.maximum(m - 1.0, 1.0), 0.0)
    return np.where(m > 0, t / safe_m * ((c + 1.0) * h1 + spread * h2), 0.0)


def _log_comb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0)


def _split_buckets(n: np.ndarray, r: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Buckets fully inside the top k, and the one (if any) that straddles the cut-off."""
    n = n.astype(np.int64)
    r = r.astype(np.int64)
    s = np.cumsum(n, axis=1) - n  # items ranked before each bucket
    c = np.cumsum(r, axis=1) - r  # relevant items ranked before each bucket
    m = np.clip(k - s, 0, n)  # slots of the bucket that fall inside the top k
    full = (m == n) & (n > 0)
    rows, cols = np.nonzero((m > 0) & (m < n))  # at most one per query
    return {
        "s": s, "c": c, "full": full, "rows": rows,
        "n_g": n[rows, cols], "r_g": r[rows, cols], "m_g": m[rows, cols],
        "s_g": s[rows, cols], "c_g": c[rows, cols],
        "r_full": np.where(full, r, 0).sum(axis=1),
    }  # fmt: skip


def _expected_ap(n: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """Exact E[AP@k] per query when each tied group is in uniformly random order."""
    b = _split_buckets(n, r, k)
    s_full = np.where(b["full"], _group_precision_sum(r, n, b["s"], b["c"]), 0.0).sum(axis=1)
    r_full = b["r_full"]
    ap = np.where(r_full > 0, s_full / np.maximum(r_full, 1), 0.0)
    rows = b["rows"]
    if rows.size:
        # The straddling group: h relevant items land in its m top-k slots, h ~ Hypergeometric(n, r, m),
        # and the AP denominator R_before + h depends on h, so take E_h[(S_before + S_h) / (R_before + h)].
        n_g, r_g, m_g = b["n_g"], b["r_g"], b["m_g"]
        lo = np.maximum(0, m_g - (n_g - r_g))
        length = np.minimum(r_g, m_g) - lo + 1
        seg = np.repeat(np.arange(rows.size), length)
        h = np.repeat(lo, length) + np.arange(seg.size) - np.repeat(np.cumsum(length) - length, length)
        n_s, r_s, m_s = n_g[seg], r_g[seg], m_g[seg]
        log_p = _log_comb(r_s, h) + _log_comb(n_s - r_s, m_s - h) - _log_comb(n_s, m_s)
        p = np.exp(log_p)
        p /= np.bincount(seg, weights=p)[seg]  # absorb rounding so the pmf sums to 1
        s_h = _group_precision_sum(h, m_s, b["s_g"][seg], b["c_g"][seg])
        den = r_full[rows][seg] + h
        value = np.where(den > 0, (s_full[rows][seg] + s_h) / np.maximum(den, 1), 0.0)
        ap[rows] = np.bincount(seg, weights=p * value, minlength=rows.size)
    return ap


def _expected_hits(n: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """Exact E[relevant items in the top k] per query (hypergeometric mean r m / n for the straddler)."""
    b = _split_buckets(n, r, k)
    hits = b["r_full"].astype(np.float64)
    hits[b["rows"]] += b["r_g"] * b["m_g"] / b["n_g"]
    return hits


# ----------------------------------------------------------------------------------------------------
# Public metrics
# ----------------------------------------------------------------------------------------------------


def mean_average_precision(
    query_codes: Any,
    query_labels: Any,
    db_codes: Any,
    db_labels: Any,
    topk: int | None = None,
    ties: str = "index",
) -> float:
    """mAP@K of Hamming ranking (notes: Protocol, the DeepHash-pytorch convention).

    A database item is relevant to a query when they share at least one label. The database is
    ranked by Hamming distance ``(bits - q.d) / 2``; the top ``topk`` items are kept. The AP of a query
    is the mean, over the relevant items within the top K, of the precision at their rank; a query with
    no relevant item in its top K has AP 0 and still counts in the mean.

    Ties matter: with short codes many items share a distance. The released code sorted with an
    unstable sort, so its mAP depends on an arbitrary tie order and is not reproducible to the digit.
    Ours is deterministic: ``ties="index"`` breaks ties by database index (a stable sort), and
    ``ties="average"`` returns the exact expected mAP when every order inside each group of equal
    distance is equally likely (closed form, no sampling) - the value an unstable sort gives on average.

    Parameters
    ----------
    query_codes, db_codes : array-like or torch.Tensor, shape (n_query, bits) and (n_db, bits)
        ±1 codes of any real dtype, on any device (moved to CPU). Bool 0/1 codes are rejected.
    query_labels, db_labels : array-like or torch.Tensor, shape (n_query, C) and (n_db, C)
        0/1 label matrices, one-hot or multi-hot, any real or bool dtype.
    topk : int or None
        K of mAP@K. None, or K larger than the database, keeps the whole ranking.
    ties : {"index", "average"}
        How items at equal distance are ordered (see above).

    Returns
    -------
    float
        The mean AP over all queries, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.array([[1, 1], [1, -1], [-1, -1]])
    >>> labels = np.array([[1, 0], [1, 0], [0, 1]])
    >>> mean_average_precision(codes[:1], labels[:1], codes, labels)
    1.0
    """
    ret = _Retrieval(query_codes, query_labels, db_codes, db_labels)
    k = _check_positive_int(topk, "topk", allow_none=True)
    ties = _check_ties(ties)
    k = ret.n_db if k is None else min(k, ret.n_db)
    ap = np.empty(ret.n_query, dtype=np.float64)
    if ties == "index":
        for rows in ret.chunks(k * _TOPK_BYTES, full_rows=False):
            rel = ret.topk_relevance(rows, k)
            hits = np.cumsum(rel, axis=1, dtype=np.int32)
            # AP = (1/R_K) sum over relevant ranks j of (relevant up to j) / j
            prec_sum = np.where(rel, hits / np.arange(1, k + 1), 0.0).sum(axis=1)
            total = hits[:, -1]
            ap[rows] = np.where(total > 0, prec_sum / np.maximum(total, 1), 0.0)
    else:
        for rows in ret.chunks(_bytes_per_row(ret, k, per_topk=80)):
            ap[rows] = _expected_ap(*ret.bucket_counts(rows, k), k)
    return float(ap.mean())


def precision_at_k(
    query_codes: Any,
    query_labels: Any,
    db_codes: Any,
    db_labels: Any,
    k: int,
    ties: str = "index",
) -> float:
    """Mean over queries of (relevant items among the top k of the Hamming ranking) / k.

    Relevance, ranking and ``ties`` are as in :func:`mean_average_precision` (``"average"`` gives the
    exact expectation over orders within tied groups). If k exceeds the database size, the whole
    database is the top k but the divisor stays k.

    Parameters
    ----------
    query_codes, query_labels, db_codes, db_labels
        As in :func:`mean_average_precision`.
    k : int
        Number of top-ranked items, positive.
    ties : {"index", "average"}

    Returns
    -------
    float
        Mean precision@k in [0, 1].
    """
    ret = _Retrieval(query_codes, query_labels, db_codes, db_labels)
    k = _check_positive_int(k, "k", allow_none=False)
    ties = _check_ties(ties)
    kk = min(k, ret.n_db)
    hits = np.empty(ret.n_query, dtype=np.float64)
    by_index = ties == "index"
    budget = kk * _TOPK_BYTES if by_index else _bytes_per_row(ret, kk, per_topk=20)
    for rows in ret.chunks(budget, full_rows=not by_index):
        if by_index:
            hits[rows] = ret.topk_relevance(rows, kk).sum(axis=1)
        else:
            hits[rows] = _expected_hits(*ret.bucket_counts(rows, kk), kk)
    return float((hits / k).mean())


def precision_recall_curve(
    query_codes: Any,
    query_labels: Any,
    db_codes: Any,
    db_labels: Any,
    levels: int = 15,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision at fixed recall levels, the released code's PR-curve protocol (notes: Protocol).

    Recall levels are ``np.linspace(0.01, 1, levels)``. For each query and level rho, the precision
    is taken at the shortest prefix of the ranking (Hamming distance, ties by database index) whose
    recall over the whole database reaches rho (compared in floating point, ``hits / R >= rho``).
    Precisions are averaged over the queries that have at least one relevant database item; queries
    with none have an undefined recall and are left out (if no query has one, ValueError).

    Parameters
    ----------
    query_codes, query_labels, db_codes, db_labels
        As in :func:`mean_average_precision`.
    levels : int
        Number of recall levels, positive.

    Returns
    -------
    precision : np.ndarray, shape (levels,)
        Mean precision at each recall level.
    recall : np.ndarray, shape (levels,)
        The recall levels themselves (increasing).
    """
    ret = _Retrieval(query_codes, query_labels, db_codes, db_labels)
    levels = _check_positive_int(levels, "levels", allow_none=False)
    recall = np.linspace(0.01, 1.0, levels)
    total = np.zeros(levels, dtype=np.float64)
    used = 0
    for rows in ret.chunks(_bytes_per_row(ret, ret.n_db, per_topk=24)):
        dist = ret.hamming(rows)
        order = np.argsort(dist, axis=1, kind="stable")
        rel = ret.relevant(np.arange(rows.start, rows.stop)[:, None], order)
        n_rel = np.count_nonzero(rel, axis=1)
        keep = n_rel > 0
        rel, n_rel = rel[keep], n_rel[keep]
        if not n_rel.size:
            continue
        big_r = n_rel[:, None].astype(np.float64)
        # fewest hits j with j / R >= rho, exactly as the float comparison decides it
        j = np.ceil(recall * big_r)
        j = np.where((j - 1) / big_r >= recall, j - 1, j)
        j = np.where(j / big_r < recall, j + 1, j)
        j = np.clip(j, 1, big_r).astype(np.int64)
        flat = np.flatnonzero(rel)  # ranks of relevant items, row by row
        starts = np.cumsum(n_rel) - n_rel
        rank = flat[starts[:, None] + j - 1] - np.arange(n_rel.size)[:, None] * ret.n_db + 1
        total += (j / rank).sum(axis=0)
        used += n_rel.size
    if used == 0:
        raise ValueError("no query has a relevant database item (shared label); the PR curve is undefined")
    return total / used, recall


def silhouette_100(features: Any, labels: Any, metric: str = "euclidean") -> float:
    """Silhouette score mapped from [-1, 1] to [0, 100], as plotted in Figure 1 of the paper.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (n, dim)
    labels : array-like or torch.Tensor
        Either 1-D class ids (n,) or one-hot rows (n, C). Silhouette needs exactly one label per item,
        so multi-hot rows (or rows without a label) are rejected.
    metric : str
        Any metric accepted by ``sklearn.metrics.silhouette_score``.

    Returns
    -------
    float
        ``50 * (silhouette + 1)``.
    """
    from sklearn.metrics import silhouette_score

    x = _to_numpy(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_items x dim), got shape {x.shape}")
    y = _to_numpy(labels, "labels")
    if y.ndim == 2:
        binary = (y == 0) | (y == 1)
        if not binary.all():
            raise ValueError(f"labels as a 2-D array must be one-hot 0/1 rows, found {_offending(y, binary)}")
        per_row = (y != 0).sum(axis=1)
        if (per_row != 1).any():
            raise ValueError(
                "labels must give one class per item (1-D class ids or one-hot rows); silhouette needs "
                f"one label per item, but {int((per_row > 1).sum())} rows are multi-hot and "
                f"{int((per_row == 0).sum())} rows have no label"
            )
        y = y.argmax(axis=1)
    elif y.ndim != 1:
        raise ValueError(f"labels must be 1-D class ids or 2-D one-hot rows, got shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"features has {x.shape[0]} rows but labels has {y.shape[0]}")
    n_classes = np.unique(y).size
    if n_classes < 2:
        raise ValueError(f"silhouette needs at least 2 classes, labels has {n_classes}")
    if n_classes >= x.shape[0]:
        raise ValueError(
            f"silhouette needs fewer classes than items, got {n_classes} classes for {x.shape[0]} items"
        )
    return float(50.0 * (silhouette_score(x, y, metric=metric) + 1.0))


def _bytes_per_row(ret: _Retrieval, k: int, per_topk: int) -> int:
    """Rough working bytes per query: distance buffers over the database plus top-k arrays."""
    word = ret.db_words.dtype.itemsize
    per_item = word + 2 * np.dtype(ret.dist_dtype).itemsize + 1  # XOR buffer, distances, mask/count
    if k >= _DENSE_FRACTION * ret.n_db:
        per_item += 40  # full-row argsort indices / flat (row, item, key) arrays and relevance
    return ret.n_db * per_item + k * per_topk
