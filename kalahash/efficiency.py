"""What each method costs, measured on the device at hand: trainable parameters, training seconds per
epoch, images encoded per second (CLoRA's inference overhead against the frozen tower and plain LoRA),
peak memory, and the time the mAP evaluation takes.

Timings depend on the machine and its load: every table names its device, and the notebook that shows
them (08_efficiency) prints them without comparing them to stored values. Peak memory is CUDA's
``max_memory_allocated`` above what was allocated before, on a GPU; on the CPU it is how far the
process's resident memory rose above its level at the start (Linux ``VmHWM``, reset before each
measurement: memory the allocator reuses does not count again), or, where that cannot be reset, the
process's peak since it started (``ru_maxrss``); the ``memory_measure`` column says which. Each
method is measured in a fresh process, so that memory freed by what ran before cannot hide its peak.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .experiments import ExperimentConfig
from .machine import provenance, resolve_device

EFFICIENCY_METHODS = ("lb", "fft", "lora", "clora", "kalahash")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Measure the peak memory of the block it wraps: the yielded dict gets ``mib`` (above the memory
    in use when it began) and ``measure`` (how it was measured) when the block ends."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        _sync(device)
        out["mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        out["measure"] = "CUDA max_memory_allocated above the start"
        return
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size (Linux)
        start = _status_kib("VmRSS")
    except OSError:
        start = None
    yield out
    if start is not None:
        out["mib"] = (_status_kib("VmHWM") - start) / 1024
        out["measure"] = "process peak RSS (VmHWM) above the start"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        out["mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        out["measure"] = "process peak RSS since it started (ru_maxrss)"


def _measure_method(
    config: ExperimentConfig, device: str, encode_images: int, repeats: int, cache_root: str, threads: int
) -> dict[str, Any]:
    """Load the data, build ``config``'s hasher, train it for ``config.epochs`` epochs (peak memory)
    and time the encoding of ``encode_images`` database images: one line of the table."""
    from .backbones import load_backbone
    from .data import few_shot_split, load_dataset
    from .hashing import build_hasher
    from .train import PrefixCache, TrainConfig, fit

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    device = torch.device(device)
    data = load_dataset(config.dataset, config.data_root)
    train_set = few_shot_split(data, config.shots, seed=config.seed)
    hparams, _ = config.resolved_hparams()
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone, config.pretrained, device=device)
    hasher = build_hasher(config.method, backbone, data.classnames, config.bits, **hparams)
    view = data.database.with_transform(backbone.preprocess)
    batch = torch.stack([view[i][0] for i in range(min(encode_images, len(view)))]).to(device)
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=min(config.batch_size, len(train_set)), seed=config.seed
    )
    with peak_memory(device) as memory:
        trained = fit(hasher, train_set, train_config, cache=PrefixCache(cache_root), progress=False)
    seconds = median_seconds(lambda: hasher.encode(batch), device, repeats)
    return {
        "method": config.method,
        "trainable_params": hasher.parameter_counts()["total_trainable"],
        "train_seconds_per_epoch": trained.seconds / config.epochs,
        "encode_images_per_second": len(batch) / seconds,
        "peak_memory_mib": memory["mib"],
        "memory_measure": memory["measure"],
    }


def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new Python process: its memory starts clean of what this one freed."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def measure_efficiency(
    dataset: str = "shapes",
    *,
    data_root: str | None = None,
    backbone: str = "tiny-shapes",
    pretrained: str | None = None,
    methods: Sequence[str] = EFFICIENCY_METHODS,
    shots: int = 8,
    bits: int = 16,
    epochs: int = 3,
    encode_images: int = 256,
    repeats: int = 3,
    seed: int = 0,
    device: str | torch.device | None = None,
    isolate: bool = True,
) -> pd.DataFrame:
    """One line per method: trainable parameters, training seconds per epoch (``epochs`` epochs on a
    ``shots``-shot set, through the frozen-prefix cache as real runs train), images encoded per second
    (``encode_images`` database images through the whole tower, the median of ``repeats``), peak
    memory while training, and the ``device``.

    With ``isolate`` each method is measured in a fresh process (a few seconds more each): in a
    long-lived one, memory freed earlier is reused and a CPU peak reads too low. Without it, the
    ``memory_measure`` column says so. ``encode_overhead_vs_frozen`` and ``encode_overhead_vs_lora``
    divide a method's encoding time by that of the frozen tower (``lb``) and of plain LoRA (``lora``),
    when those are measured.
    """
    if not methods:
        raise ValueError("methods is empty: give at least one of " + ", ".join(EFFICIENCY_METHODS))
    device = resolve_device(device)
    base = ExperimentConfig(
        dataset=dataset,
        data_root=data_root,
        backbone=backbone,
        pretrained=pretrained,
        shots=shots,
        bits=bits,
        epochs=epochs,
        seed=seed,
    )
    lines = []
    with tempfile.TemporaryDirectory(prefix="kalahash-efficiency-") as cache_root:
        for method in methods:
            args = (replace(base, method=method), str(device), encode_images, repeats, cache_root)
            if isolate:
                lines.append(_in_fresh_process(_measure_method, *args, torch.get_num_threads()))
            else:
                line = _measure_method(*args, torch.get_num_threads())
                lines.append({**line, "memory_measure": line["memory_measure"] + ", in a reused process"})
    table = pd.DataFrame(lines)
    speed = table["encode_images_per_second"]
    for reference, name in (("lb", "frozen"), ("lora", "lora")):
        found = speed[table["method"] == reference]
        table[f"encode_overhead_vs_{name}"] = found.iloc[0] / speed if len(found) else np.nan
    table["device"] = provenance(device)["device"]
    return table


def time_map(
    data: Any, bits: int = 16, *, topk: int | None = None, repeats: int = 1, seed: int = 0
) -> pd.DataFrame:
    """Seconds to score the query set against the database by mAP@K under each tie rule, with random
    ±1 codes of ``bits`` bits and the data set's own labels (the time depends on the sizes and the
    ties, not on who made the codes). mAP runs on the CPU (numpy), whatever device encodes."""
    from .metrics import TIES, mean_average_precision

    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    rng = np.random.default_rng(seed)
    query = rng.choice(np.array([-1, 1], np.int8), size=(len(data.query), bits))
    database = rng.choice(np.array([-1, 1], np.int8), size=(len(data.database), bits))
    topk = data.topk if topk is None else topk
    cpu = torch.device("cpu")
    lines = []
    args = (query, data.query.labels, database, data.database.labels)
    for rule in TIES:
        seconds = median_seconds(
            lambda r=rule: mean_average_precision(*args, topk=topk, ties=r), cpu, repeats
        )
        lines.append(
            {
                "ties": rule,
                "queries": len(query),
                "database": len(database),
                "topk": topk or len(database),
                "bits": bits,
                "seconds": seconds,
            }
        )
    table = pd.DataFrame(lines)
    table["device"] = provenance(cpu)["device"]
    return table
