"""The Hamming engine: exact top-K ranking over bit-packed codes, shared by mAP and image search.

Codes are packed into unsigned words (:func:`pack_words`); a query block is laid out ``(n, words)`` and
a database ``(words, n)`` so that each word row is contiguous. :func:`topk` returns, per query, the K
nearest database items ordered by (distance, database index): the ``ties="index"`` rule of
:mod:`kalahash.metrics`. :func:`distances` is the bare XOR + popcount pass. :func:`order_ties` ranks
one query's distances with ties broken on purpose (the query's own image first, then by a score), as
image search does.

Why a compiled kernel: distances are small integers, so a top-K needs no sort, and numpy must write
every distance to memory and then histogram or sort it (several passes over a query x database matrix).
The numba kernel streams each database tile (1,024 items, kept in L1) once per block of 16 queries,
computes the tile's distances with vectorised popcounts, and skips the tile when none is closer than the
query's current k-th distance: the usual case once a few thousand items have been seen. The few that
are closer go, in database order, into a small buffer; each lowers the k-th distance as soon as k are
closer (a running histogram of the buffered distances), and a full buffer is compacted to the exact
top K so far. When K is a sizeable part of the database (mAP@5000), a bound on the k-th distance from a
strided sample spares most of that buffering; a query it misleads is streamed again. The whole ranking
costs about one bare XOR + popcount pass (benchmarks/bench_search.py). Big calls run their query blocks
on numba's threads (``NUMBA_NUM_THREADS``). Without numba the same results come from numpy (a stable argsort of the distances), several times
slower, with a one-time warning. The kernels are untyped: numba compiles one per word width, on first
use, and caches it on disk.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; the fallback keeps results exact
    numba = None

__all__ = ["ENGINES", "default_engine", "distances", "order_ties", "pack_words", "topk"]

ENGINES = ("numba", "numpy")
# Database items per tile: a tile of codes and its distances stay in L1 while a block of queries uses it.
_TILE = 1024
# Queries sharing one pass over the database (one numba task each).
_QUERY_BLOCK = 16
# Query x database pairs from which a top-K call runs its query blocks on several threads.
_PARALLEL_PAIRS = 2**26
# Database items sampled to bound the k-th distance when K is a sizeable part of the database.
_SAMPLE = 4096
# Distance-matrix bytes per chunk of queries in the numpy path.
_NUMPY_CHUNK_BYTES = 64 * 2**20
_warned = False


def default_engine() -> str:
    """``"numba"`` when it imports, else ``"numpy"`` (warning once that the exact fallback is slower)."""
    global _warned
    if numba is not None:
        return "numba"
    if not _warned:
        warnings.warn(
            "numba is not installed: kalahash's Hamming ranking (mAP, search) falls back to numpy, exact "
            "but several times slower; `pip install numba` to restore the compiled kernel",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return "numpy"


def pack_words(packed: np.ndarray) -> np.ndarray:
    """Bytes of packed bits (n, nbytes) -> (n, words) unsigned words of the narrowest fitting width (1, 2,
    4 or 8 bytes; longer codes use several 8-byte words). Zero padding never counts in a distance."""
    packed = np.asarray(packed, dtype=np.uint8)
    nbytes = packed.shape[1]
    width = next((w for w in (1, 2, 4) if nbytes <= w), 8)
    padded = -(-nbytes // width) * width
    if padded != nbytes:
        packed = np.pad(packed, ((0, 0), (0, padded - nbytes)))
    return np.ascontiguousarray(packed).view(np.dtype(f"u{width}"))


def _check(query_words: np.ndarray, db_words: np.ndarray) -> None:
    if query_words.ndim != 2 or db_words.ndim != 2:
        raise ValueError(
            f"query words must be (n_query, words) and database words (words, n_db); got shapes "
            f"{query_words.shape} and {db_words.shape}"
        )
    if query_words.dtype != db_words.dtype or query_words.dtype.kind != "u":
        raise ValueError(
            f"query and database words must share one unsigned dtype (pack_words), got {query_words.dtype} "
            f"and {db_words.dtype}"
        )
    if query_words.shape[1] != db_words.shape[0]:
        raise ValueError(
            f"queries have {query_words.shape[1]} words per code but the database {db_words.shape[0]}; "
            "both must come from codes of one length"
        )


def topk(
    query_words: np.ndarray, db_words: np.ndarray, k: int, engine: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database items of every query, by (Hamming distance, database index).

    Parameters
    ----------
    query_words : (n_query, words) unsigned words from :func:`pack_words`.
    db_words : (words, n_db) the database's words, transposed (each word row contiguous).
    k : 1 <= k <= n_db.
    engine : "numba", "numpy", or None for :func:`default_engine`.

    Returns
    -------
    index : (n_query, k) int64 database indices, nearest first; equal distances in index order.
    distance : (n_query, k) int32 Hamming distances, non-decreasing along each row.
    """
    _check(query_words, db_words)
    n_db = db_words.shape[1]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n_db:
        raise ValueError(f"k must be an integer from 1 to the database size {n_db}, got {k!r}")
    engine = _engine(engine)
    q = np.ascontiguousarray(query_words)
    db = np.ascontiguousarray(db_words)
    index = np.empty((q.shape[0], int(k)), dtype=np.int64)
    distance = np.empty((q.shape[0], int(k)), dtype=np.int32)
    if engine == "numba":
        # threads pay off on big calls only: a parallel region waits for its slowest thread
        parallel = q.shape[0] > _QUERY_BLOCK and q.shape[0] * n_db >= _PARALLEL_PAIRS
        kernel = _topk_parallel if parallel else _topk_serial
        kernel(q, db, int(k), db.shape[0] * db.dtype.itemsize * 8, index, distance)
        return index, distance
    step = max(1, _NUMPY_CHUNK_BYTES // (2 * n_db * db.dtype.itemsize + 1))
    for lo in range(0, q.shape[0], step):
        dist = distances(q[lo : lo + step], db, engine="numpy")
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # radix sort: linear, keeps index order
        index[lo : lo + step] = order
        distance[lo : lo + step] = np.take_along_axis(dist, order, axis=1)
    return index, distance


def distances(
    query_words: np.ndarray, db_words: np.ndarray, out: np.ndarray | None = None, engine: str | None = None
) -> np.ndarray:
    """Every query's Hamming distance to every database item, (n_query, n_db): the bare XOR + popcount
    pass. ``out`` (uint8 for codes of up to 255 bits, else uint16 by default) is filled and returned."""
    _check(query_words, db_words)
    n_words, n_db = db_words.shape
    max_distance = n_words * db_words.dtype.itemsize * 8
    if out is None:
        out = np.empty((query_words.shape[0], n_db), dtype=np.uint8 if max_distance <= 255 else np.uint16)
    if _engine(engine) == "numba":
        _distance_kernel(np.ascontiguousarray(query_words), np.ascontiguousarray(db_words), out)
        return out
    buf = np.empty(out.shape, dtype=db_words.dtype)
    count = np.empty(out.shape, dtype=np.uint8)
    for w in range(n_words):
        np.bitwise_xor(query_words[:, w, None], db_words[w][None, :], out=buf)
        if w == 0:
            _popcount(buf, out=out)
        else:
            _popcount(buf, out=count)
            np.add(out, count, out=out)
    return out


def order_ties(
    distance: np.ndarray,
    k: int,
    *,
    first: np.ndarray | None = None,
    score: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The ``k`` nearest items of one query with its ties broken on purpose, not by index alone.

    Order: distance; then the items of ``first`` (e.g. the query's own image); then higher ``score``
    (e.g. the query's real-valued code against each item's ±1 code: asymmetric re-ranking); then index.
    ``distance`` holds the query's distance to every item; ``score`` is an array of the same length, or
    a function of an index array (called only on the items at or within the k-th distance).
    """
    distance = np.asarray(distance)
    if distance.ndim != 1:
        raise ValueError(f"distance must be one query's distances (1-D), got shape {distance.shape}")
    n = distance.shape[0]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer from 1 to the number of items {n}, got {k!r}")
    kth = np.partition(distance, k - 1)[k - 1]
    candidates = np.flatnonzero(distance <= kth)
    keys = [candidates]
    if score is not None:
        values = score(candidates) if callable(score) else np.asarray(score)[candidates]
        keys.append(-np.asarray(values, dtype=np.float64))
    if first is not None and len(first):
        keys.append(~np.isin(candidates, np.asarray(first)))
    keys.append(distance[candidates])
    return candidates[np.lexsort(keys)[:k]]


def _engine(engine: str | None) -> str:
    if engine is None:
        return default_engine()
    if engine not in ENGINES:
        raise ValueError(
            f"engine must be one of {', '.join(ENGINES)} (or None for the default), got {engine!r}"
        )
    if engine == "numba" and numba is None:
        raise ValueError("engine='numba' needs numba, which is not installed: pip install numba")
    return engine


def _popcount(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bits set per word into ``out`` (np.bitwise_count needs numpy >= 2; a byte table otherwise)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    return _popcount_table(words, out)


def _popcount_table(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    as_bytes = table[words.view(np.uint8)].reshape(*words.shape, words.dtype.itemsize)
    return np.sum(as_bytes, axis=-1, dtype=out.dtype, out=out)


# ----------------------------------------------------------------------------------------------------
# The compiled kernels
# ----------------------------------------------------------------------------------------------------

if numba is not None:

    @intrinsic
    def _popcnt(typingctx, x):
        """LLVM's ctpop as an int32: one instruction, and the loop vectoriser knows it."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            count = builder.ctpop(args[0])
            target = context.get_value_type(types.int32)
            if x.bitwidth > 32:
                return builder.trunc(count, target)
            return builder.zext(count, target) if x.bitwidth < 32 else count

        return types.int32(x), codegen

    @intrinsic
    def _lowest_bit(typingctx, x):
        """Position of the lowest set bit of a non-zero word (LLVM's cttz: one instruction)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

        return x(x), codegen

    @numba.njit(cache=True, inline="always")
    def _tile_distances(q_row, db, start, stop, out):
        """Distances of one query to database items start..stop into ``out``; returns their minimum.

        Each word row is sliced first: a contiguous 1-D slice is what lets LLVM vectorise the loops.
        """
        row = db[0, start:stop]
        word = q_row[0]
        low = np.int32(2**31 - 1)
        if db.shape[0] == 1:
            for i in range(row.shape[0]):
                d = _popcnt(word ^ row[i])
                out[i] = d
                low = min(low, d)
            return low
        for i in range(row.shape[0]):
            out[i] = _popcnt(word ^ row[i])
        for w in range(1, db.shape[0]):
            row = db[w, start:stop]
            word = q_row[w]
            for i in range(row.shape[0]):
                out[i] += _popcnt(word ^ row[i])
        for i in range(row.shape[0]):
            low = min(low, out[i])
        return low

    @numba.njit(cache=True, inline="always")
    def _under(group, limit):
        """Bit i set where group[i] <= limit (at most 64 items): a vectorised compare, not a branch each."""
        mask = np.uint64(0)
        for i in range(group.shape[0]):
            mask |= np.uint64(group[i] <= limit) << np.uint64(i)
        return mask

    @numba.njit(cache=True)
    def _compact(index, dist, count, k, kth, below, hist):
        """Drop the buffered items that left the top k; returns the new count, k.

        The buffer is in database order, so the top k are the ``below`` items closer than the k-th
        distance ``kth`` and the first ``k - below`` at it. ``hist`` follows the kept items.
        """
        room = k - below
        kept = 0
        for i in range(count):
            d = dist[i]
            if d > kth or (d == kth and room == 0):
                continue
            room -= d == kth
            index[kept] = index[i]
            dist[kept] = d
            kept += 1
        hist[kth + 1 :] = 0
        hist[kth] = k - below
        return kept

    @numba.njit(cache=True)
    def _rank(index, dist, k, hist, out_index, out_dist):
        """Counting sort of k buffered items by distance; stable, so ties stay in index order."""
        hist[:] = 0
        for i in range(k):
            hist[dist[i]] += 1
        start = 0
        for d in range(hist.shape[0]):
            n = hist[d]
            hist[d] = start
            start += n
        for i in range(k):
            p = hist[dist[i]]
            out_index[p] = index[i]
            out_dist[p] = dist[i]
            hist[dist[i]] += 1

    @numba.njit(cache=True, inline="always")
    def _take_tile(q, db, q0, start, stop, tile, k, index, dist, hists, state):
        """One database tile against a block of queries: buffer, in database order, every item that
        enters a query's top k so far.

        Per query, ``state`` holds (buffered count, k-th distance so far, items closer than it) and
        ``hists`` the distances of the buffered items. The k-th distance kth only falls; an item is
        taken only if closer than it (at kth it would follow k others in database order), and each one
        taken moves kth down once k items are closer. Before k items are seen kth is past the largest
        distance, so all are taken.
        """
        cap = index.shape[1]
        for j in range(index.shape[0]):
            c, kth, below = state[j, 0], state[j, 1], state[j, 2]
            if _tile_distances(q[q0 + j], db, start, stop, tile) >= kth:
                continue  # the usual case once kth has settled
            hist = hists[j]
            for lo in range(0, stop - start, 64):
                mask = _under(tile[lo : min(lo + 64, stop - start)], kth - 1)
                while mask:
                    i = lo + _lowest_bit(mask)
                    mask &= mask - np.uint64(1)
                    d = tile[i]
                    if d >= kth:
                        continue  # kth fell since this mask was taken
                    if c == cap:
                        c = _compact(index[j], dist[j], c, k, kth, below, hist)
                    index[j, c] = start + i
                    dist[j, c] = d
                    c += 1
                    hist[d] += 1
                    below += 1
                    while below >= k:
                        kth -= 1
                        below -= hist[kth]
            state[j, 0], state[j, 1], state[j, 2] = c, kth, below

    @numba.njit(cache=True)
    def _guess_kth(q_row, db, k, max_distance, hist):
        """A k-th distance bound from a strided sample, set with a margin so that it is almost never
        too small (the caller notices when it is, and streams that query again without it)."""
        stride = db.shape[1] // _SAMPLE
        hist[:] = 0
        for s in range(_SAMPLE):
            d = 0
            for w in range(db.shape[0]):
                d += _popcnt(q_row[w] ^ db[w, s * stride])
            hist[d] += 1
        expected = k * _SAMPLE / db.shape[1]
        need = expected + 3.0 * np.sqrt(expected) + 1.0
        seen = 0
        for t in range(max_distance + 1):
            seen += hist[t]
            if seen >= need:
                return t + 1
        return max_distance + 1

    @numba.njit(cache=True)
    def _stream(q, db, q0, k, index, dist, hists, state, tile):
        """Every database tile against the queries q0, q0 + 1, ... of the buffers."""
        n_db = db.shape[1]
        n_full = n_db // _TILE
        for t in range(n_full):  # full tiles: a constant length the compiler can plan for
            start = t * _TILE
            _take_tile(q, db, q0, start, start + _TILE, tile, k, index, dist, hists, state)
        if n_full * _TILE < n_db:
            _take_tile(q, db, q0, n_full * _TILE, n_db, tile, k, index, dist, hists, state)

    @numba.njit(cache=True)
    def _topk_block(q, db, k, max_distance, out_index, out_dist, q0):
        """The top k of the block of queries starting at q0.

        When k is a sizeable part of the database, a sampled bound on the k-th distance spares most
        of the early buffering; a query it fails (fewer than k items within it) is streamed again.
        """
        n_db = db.shape[1]
        nb = min(_QUERY_BLOCK, q.shape[0] - q0)
        cap = min(max(2 * k, k + 256), n_db)
        index = np.empty((nb, cap), np.int64)
        dist = np.empty((nb, cap), np.int32)
        hists = np.zeros((nb, max_distance + 1), np.int64)
        state = np.zeros((nb, 3), np.int64)  # buffered, k-th distance so far, items closer than it
        state[:, 1] = max_distance + 1
        tile = np.empty(_TILE, np.int32)
        if n_db >= 4 * _SAMPLE and k * _SAMPLE >= 32 * n_db:
            for j in range(nb):
                state[j, 1] = _guess_kth(q[q0 + j], db, k, max_distance, hists[j])
                hists[j] = 0
        _stream(q, db, q0, k, index, dist, hists, state, tile)
        for j in range(nb):
            if state[j, 0] < k:  # the sampled bound was too small for this query
                hists[j] = 0
                state[j, 0], state[j, 1], state[j, 2] = 0, max_distance + 1, 0
                _stream(
                    q,
                    db,
                    q0 + j,
                    k,
                    index[j : j + 1],
                    dist[j : j + 1],
                    hists[j : j + 1],
                    state[j : j + 1],
                    tile,
                )
            c, kth, below = state[j, 0], state[j, 1], state[j, 2]
            if c > k:
                _compact(index[j], dist[j], c, k, kth, below, hists[j])
            _rank(index[j], dist[j], k, hists[j], out_index[q0 + j], out_dist[q0 + j])

    @numba.njit(cache=True)
    def _topk_serial(q, db, k, max_distance, out_index, out_dist):
        for q0 in range(0, q.shape[0], _QUERY_BLOCK):
            _topk_block(q, db, k, max_distance, out_index, out_dist, q0)

    @numba.njit(cache=True, parallel=True)
    def _topk_parallel(q, db, k, max_distance, out_index, out_dist):
        for b in numba.prange((q.shape[0] + _QUERY_BLOCK - 1) // _QUERY_BLOCK):
            _topk_block(q, db, k, max_distance, out_index, out_dist, b * _QUERY_BLOCK)

    @numba.njit(cache=True)
    def _distance_kernel(q, db, out):
        for j in range(q.shape[0]):
            row = db[0]
            word = q[j, 0]
            for i in range(row.shape[0]):
                out[j, i] = _popcnt(word ^ row[i])
            for w in range(1, db.shape[0]):
                row = db[w]
                word = q[j, w]
                for i in range(row.shape[0]):
                    out[j, i] += _popcnt(word ^ row[i])
