"""What each method costs, measured on the device at hand: trainable parameters, training seconds per
epoch, images encoded per second (CLoRA's inference overhead against the frozen tower and plain LoRA),
peak memory while training, and the time the mAP evaluation takes.

Every method is built as a run builds it (:mod:`kalahash.experiments.runner`'s pieces: the data loaded and
checked, the few-shot set drawn, the hasher built; the lists and the check kept in a temporary folder).
Timings are noisy, so every method is built once in this process and warmed up (an untimed epoch and
encode: compilation, the prefix cache, the allocator), then the methods are timed *alternately*, one
after the other in each of several rounds. A ratio (a method's time over the frozen tower's) is taken
within each round and reported as the median over rounds with its spread (their standard deviation),
so the load of the machine at one moment weighs on every method alike; :func:`noise_reading` says when a
ratio is within that spread. Peak memory is the tensor memory torch allocates during one training epoch
above what was allocated when it began, for every method the same way: CUDA's allocator statistics on a
GPU, the profiler's allocation events on the CPU (not the process's resident memory, which depends on
what ran before). Every table names its device.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from .experiments import DEFAULT_BACKBONE, DEFAULT_DATASET, ExperimentConfig
from .machine import provenance, resolve_device

EFFICIENCY_METHODS = ("lb", "fft", "lora", "clora", "kalahash")
# The references the encode time of each method is divided by, and the column names they give.
_REFERENCES = (("lb", "frozen"), ("lora", "lora"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """The wall time of one call of ``fn`` (the device synchronised before and after)."""
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def median_spread(values: Sequence[float]) -> tuple[float, float]:
    """(median, standard deviation) of ``values``; the spread is NaN from one value."""
    values = [float(v) for v in values]
    return statistics.median(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def noise_reading(ratio: float, spread: float) -> str:
    """How a time ratio reads against its spread over rounds: "within noise" when it is within one
    spread of 1, else "slower" or "faster"; "one round, no spread" without a spread."""
    if np.isnan(ratio):
        return "not measured"
    if np.isnan(spread):
        return "one round, no spread"
    if abs(ratio - 1) <= spread:
        return "within noise"
    return "slower" if ratio > 1 else "faster"


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native library logs its start and stop (and allocations older than the measurement)
    straight to the process's stderr, file descriptor 2: that noise is sent to the null device meanwhile, so
    a notebook's output shows only what kalahash says."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_mib(fn: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    """The peak of tensor memory torch allocates while ``fn`` runs, above what was allocated when it
    began, in MiB, and how it was measured: CUDA's allocator on a GPU; on the CPU the running sum of the
    profiler's allocation and release events in time order (what ran before does not count)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (
            torch.cuda.max_memory_allocated(device) - start
        ) / 2**20, "CUDA allocator peak above the start"
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20, "torch CPU allocations (profiler) peak above the start"


@dataclass
class _Subject:
    """One method, built and warmed up, with what it takes to time a training epoch and an encode."""

    method: str
    params: int
    epoch: Callable[[], Any]
    encode: Callable[[], Any]


def _subject(
    config: ExperimentConfig, data: Any, check: Any, workdir: str, device: torch.device, encode_images: int,
    cache: Any,
) -> _Subject:  # fmt: skip
    """Build ``config``'s hasher as a run builds it (:func:`kalahash.experiments.runner.build_run`: its
    few-shot set, hyperparameters and hasher on its own backbone), ready to train on that set through the
    prefix cache (as runs train) and to encode ``encode_images`` database images through the tower."""
    from .experiments.runner import build_run
    from .train import TrainConfig, TrainResult, batch_source, finish_epoch, make_optimizer, train_epoch

    train_set, _, _, backbone, hasher = build_run(config, data, check, workdir, device=device)
    view = data.database.with_transform(backbone.preprocess)
    batch = torch.stack([view[i][0] for i in range(min(encode_images, len(view)))]).to(device)
    train_config = TrainConfig(batch_size=min(config.batch_size, len(train_set)), seed=config.seed)
    hasher.begin_training(train_set.labels)
    optimizer, scaler = make_optimizer(hasher, train_config)
    source = batch_source(hasher, train_set, cache, progress=False)
    result, epochs = TrainResult(), iter(range(10**9))

    def epoch() -> None:
        hasher.train()
        number = next(epochs)
        finish_epoch(
            hasher, result, number, train_epoch(hasher, source, optimizer, scaler, train_config, number)
        )

    return _Subject(
        config.method, hasher.parameter_counts()["total_trainable"], epoch, lambda: hasher.encode(batch)
    )


def measure_efficiency(
    dataset: str = DEFAULT_DATASET,
    *,
    data_root: str | None = None,
    backbone: str = DEFAULT_BACKBONE,
    pretrained: str | None = None,
    methods: Sequence[str] = EFFICIENCY_METHODS,
    shots: int = 8,
    bits: int = 16,
    rounds: int = 5,
    encode_images: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """One line per method: trainable parameters; the median over ``rounds`` of the seconds of one
    training epoch (a ``shots``-shot set through the frozen-prefix cache, as runs train) and of the
    images encoded per second (``encode_images`` database images through the whole tower); the peak
    tensor memory of one training epoch (:func:`peak_tensor_mib`); and the ``device``.

    The methods are timed alternately in each round after an untimed warm-up (module docstring).
    ``encode_overhead_vs_frozen`` (``_vs_lora``) is the median over rounds of a method's encode time over
    that of ``lb`` (``lora``) in the same round, ``…_spread`` its spread and ``…_reading`` what it says
    (:func:`noise_reading`); ``train_ratio_vs_frozen`` likewise for the training epoch.
    """
    from .cache import PrefixCache
    from .experiments.runner import check_run_data, load_run_data

    if not methods:
        raise ValueError("methods is empty: give at least one of " + ", ".join(EFFICIENCY_METHODS))
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    device = resolve_device(device)
    torch.set_flush_denormal(True)
    base = ExperimentConfig(dataset=dataset, data_root=data_root, backbone=backbone, pretrained=pretrained,
                            shots=shots, bits=bits, seed=seed)  # fmt: skip
    data = load_run_data(base)
    with tempfile.TemporaryDirectory(prefix="kalahash-efficiency-") as workdir:
        check = check_run_data(base, data, workdir, progress=False)  # as a run checks it; kept with the run
        cache = PrefixCache(f"{workdir}/cache")
        subjects = [
            _subject(replace(base, method=m), data, check, workdir, device, encode_images, cache)
            for m in methods
        ]
        for subject in subjects:  # warm-up: compilation, the cache's tokens, the allocator
            subject.epoch()
            subject.encode()
        memory = [peak_tensor_mib(s.epoch, device) for s in subjects]
        train = {s.method: [] for s in subjects}
        encode = {s.method: [] for s in subjects}
        for r in range(rounds):
            for subject in subjects[r % len(subjects) :] + subjects[: r % len(subjects)]:  # rotate the order
                train[subject.method].append(timed(subject.epoch, device))
                encode[subject.method].append(timed(subject.encode, device))
    lines = []
    for subject, (mib, measure) in zip(subjects, memory, strict=True):
        line = {
            "method": subject.method,
            "trainable_params": subject.params,
            "train_seconds_per_epoch": median_spread(train[subject.method])[0],
            "encode_images_per_second": min(encode_images, len(data.database))
            / median_spread(encode[subject.method])[0],
            "peak_memory_mib": mib,
            "memory_measure": measure,
            "rounds": rounds,
        }
        line.update(_ratios("train_ratio", train, subject.method, [("lb", "frozen")]))
        line.update(_ratios("encode_overhead", encode, subject.method, _REFERENCES))
        lines.append(line)
    table = pd.DataFrame(lines)
    table["device"] = provenance(device)["device"]
    return table


def _ratios(
    prefix: str, times: dict[str, list[float]], method: str, references: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Per-round ratios of ``method``'s times over each reference's, as median, spread and reading."""
    out: dict[str, Any] = {}
    for reference, name in references:
        key = f"{prefix}_vs_{name}"
        if reference in times:
            ratio, spread = median_spread(
                [a / b for a, b in zip(times[method], times[reference], strict=True)]
            )
        else:
            ratio, spread = float("nan"), float("nan")
        out.update({key: ratio, f"{key}_spread": spread, f"{key}_reading": noise_reading(ratio, spread)})
    return out


def time_map(
    data: Any, bits: int = 16, *, topk: int | None = None, rounds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Seconds to score the query set against the database by mAP@K under each tie rule, with random
    ±1 codes of ``bits`` bits and the data set's own labels (the time depends on the sizes and the
    ties, not on who made the codes): each rule called once untimed (compilation), then the rules timed
    alternately over ``rounds``; median and spread. mAP runs on the CPU, whatever device encodes."""
    from .metrics import TIES, mean_average_precision

    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    rng = np.random.default_rng(seed)
    query = rng.choice(np.array([-1, 1], np.int8), size=(len(data.query), bits))
    database = rng.choice(np.array([-1, 1], np.int8), size=(len(data.database), bits))
    topk = data.topk if topk is None else topk
    cpu = torch.device("cpu")
    args = (query, data.query.labels, database, data.database.labels)
    calls = {rule: (lambda r=rule: mean_average_precision(*args, topk=topk, ties=r)) for rule in TIES}
    for call in calls.values():
        call()  # compilation and caches: not timed
    seconds: dict[str, list[float]] = {rule: [] for rule in TIES}
    for _ in range(rounds):
        for rule, call in calls.items():
            seconds[rule].append(timed(call, cpu))
    lines = []
    for rule in TIES:
        median, spread = median_spread(seconds[rule])
        lines.append({"ties": rule, "queries": len(query), "database": len(database), "topk": topk or len(database),
                      "bits": bits, "seconds": median, "seconds_spread": spread, "rounds": rounds})  # fmt: skip
    table = pd.DataFrame(lines)
    table["device"] = provenance(cpu)["device"]
    return table
