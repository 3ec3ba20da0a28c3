"""mAP@K at NUS-WIDE scale: kalahash.metrics against the plain per-query loop of the released code.

Default size: 2,100 queries x 193,734 database items x 64 bits, 21 classes (multi-hot), mAP@5000,
random seeded codes and labels. ``--quick``: 200 x 20,000, mAP@1000.

Prints both mAP values (they must agree to 1e-6), both times, the speed-up, the time of
``ties="average"``, and the peak memory of ours (tracemalloc: numpy and Python allocations made during
the call, inputs excluded). Timings on a shared machine are noisy; the ratio is measured in one run.

    python benchmarks/bench_map.py [--quick] [--baseline-queries N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np

from kalahash.metrics import mean_average_precision


def make_data(n_query: int, n_db: int, bits: int, classes: int, seed: int = 0):
    """Random ±1 float32 codes and multi-hot labels with at least one label per item."""
    rng = np.random.default_rng(seed)

    def codes(n: int) -> np.ndarray:
        return np.where(rng.random((n, bits)) < 0.5, -1.0, 1.0).astype(np.float32)

    def labels(n: int) -> np.ndarray:
        y = (rng.random((n, classes)) < 0.08).astype(np.float32)
        y[np.arange(n), rng.integers(0, classes, n)] = 1.0
        return y

    return codes(n_query), labels(n_query), codes(n_db), labels(n_db)


def baseline_map(qc: np.ndarray, ql: np.ndarray, dc: np.ndarray, dl: np.ndarray, topk: int) -> float:
    """The released code's loop: per query, Hamming by matmul, a full sort, the top K, the AP."""
    bits = qc.shape[1]
    aps = []
    for i in range(qc.shape[0]):
        hamming = 0.5 * (bits - dc @ qc[i])
        relevant = (dl @ ql[i]) > 0
        ranked = relevant[np.argsort(hamming, kind="stable")][:topk]
        hits = np.cumsum(ranked)
        if hits[-1] == 0:
            aps.append(0.0)
            continue
        aps.append(float((hits / np.arange(1, len(ranked) + 1))[ranked].sum() / hits[-1]))
    return float(np.mean(aps))


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 queries x 20,000 database items, mAP@1000")
    parser.add_argument(
        "--baseline-queries",
        type=int,
        default=None,
        help="run the slow loop on only the first N queries and extrapolate its time (printed as such)",
    )
    args = parser.parse_args()
    n_query, n_db, topk = (200, 20_000, 1000) if args.quick else (2100, 193_734, 5000)
    bits, classes = 64, 21

    qc, ql, dc, dl = make_data(n_query, n_db, bits, classes)
    print(
        f"{n_query} queries x {n_db} database items x {bits} bits, {classes} classes, mAP@{topk}; "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        "shared machine: timings are noisy"
    )

    runs = [timed(mean_average_precision, qc, ql, dc, dl, topk=topk) for _ in range(3)]
    ours, ours_t = runs[0][0], min(t for _, t in runs)
    print(f"ours     ties='index'  : mAP = {ours:.10f}  time {ours_t:8.3f} s (best of 3)")

    n_base = n_query if args.baseline_queries is None else min(args.baseline_queries, n_query)
    base, base_t = timed(baseline_map, qc[:n_base], ql[:n_base], dc, dl, topk)
    if n_base == n_query:
        reference = ours
        print(f"baseline per-query loop: mAP = {base:.10f}  time {base_t:8.3f} s (one run, all queries)")
    else:
        reference = mean_average_precision(qc[:n_base], ql[:n_base], dc, dl, topk=topk)
        base_t = base_t * n_query / n_base
        print(
            f"baseline per-query loop: mAP = {base:.10f} on the first {n_base} of {n_query} queries "
            f"(ours on the same queries: {reference:.10f}); time EXTRAPOLATED linearly to all queries: "
            f"{base_t:8.3f} s"
        )
    diff = abs(reference - base)
    print(f"|ours - baseline| = {diff:.2e} ({'identical within 1e-6' if diff <= 1e-6 else 'MISMATCH'})")
    print(f"speed-up: {base_t / ours_t:.1f}x (target >= 50x)")

    average, average_t = timed(mean_average_precision, qc, ql, dc, dl, topk=topk, ties="average")
    print(
        f"ours     ties='average': mAP = {average:.10f}  time {average_t:8.3f} s (one run; "
        f"exact expectation over tie orders, differs from 'index' by {average - ours:+.2e})"
    )

    tracemalloc.start()
    mean_average_precision(qc, ql, dc, dl, topk=topk)
    peak_index = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    mean_average_precision(qc, ql, dc, dl, topk=topk, ties="average")
    peak_average = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    inputs = sum(a.nbytes for a in (qc, ql, dc, dl))
    print(
        f"peak memory of ours (tracemalloc, allocations during the call, inputs of {inputs / 2**20:.0f} MiB "
        f"excluded): ties='index' {peak_index / 2**20:.0f} MiB, ties='average' {peak_average / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
