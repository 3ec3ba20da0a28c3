"""Frozen-prefix cache: a sweep of 8 configurations over one gallery, cached against naive, in one run.

Naive runs every image through the whole image tower for every configuration (and every training
epoch); cached runs the frozen blocks once per image and only the adapted last block afterwards.
Target: >= 5x on the whole sweep, with the same mAP.

    python benchmarks/bench_sweep.py                      # objects10 world, tiny-objects-m, 8 configs, 100 epochs
    python benchmarks/bench_sweep.py --dataset shapes --backbone tiny-shapes   # the 4-block model
    python benchmarks/bench_sweep.py --quick              # 20 epochs
    python benchmarks/bench_sweep.py --backbone ViT-B-32  # 12 blocks (random init; the world resized to 224)

How much the cache can save depends on the share of the image tower that is frozen: tiny-objects-m has
12 blocks with the adapters in the last (as a ViT-B/32), tiny-shapes 4.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from kalahash.cache import PrefixCache
from kalahash.experiments import (
    DEFAULT_BACKBONE,
    DEFAULT_DATASET,
    ExperimentConfig,
    expand_grid,
    run_experiment,
)


def sweep(
    configs: list[ExperimentConfig], cache: PrefixCache | None, workdir: str, device: str
) -> tuple[float, list]:
    began = time.perf_counter()
    maps = [
        run_experiment(c, results=None, cache=cache, workdir=workdir, device=device, progress=False)["map"]
        for c in configs
    ]
    return time.perf_counter() - began, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 epochs instead of 100")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="a built-in tiny CLIP (tiny-objects-m, tiny-shapes, ...) or an open_clip name (random init)",
    )
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="a built-in world: objects10 or shapes")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    epochs = 20 if args.quick else 100
    base = ExperimentConfig(dataset=args.dataset, backbone=args.backbone, epochs=epochs)
    configs = expand_grid(base, {"method": ["kalahash", "lora"], "shots": [1, 2], "bits": [16, 32]})
    print(
        f"{len(configs)} configs (kalahash, lora x 1, 2 shots x 16, 32 bits), {args.dataset} world, "
        f"{args.backbone}, {epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), device {args.device}; shared machine: timings are noisy"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(configs[0], results=None, cache=None, workdir=tmp, device=args.device, progress=False)
        naive_s, naive_maps = sweep(configs, None, tmp, args.device)
        cache = PrefixCache(os.path.join(tmp, "cache"))
        cached_s, cached_maps = sweep(configs, cache, tmp, args.device)
        fills = cache.misses
        warm_s, _ = sweep(configs, cache, tmp, args.device)
    gap = max(abs(a - b) for a, b in zip(naive_maps, cached_maps, strict=True))
    n = len(configs)
    print(f"naive        : {naive_s:7.1f} s for the sweep ({naive_s / n:.1f} s a config)")
    print(
        f"cached, cold : {cached_s:7.1f} s ({cached_s / n:.1f} s a config; the cache filled {fills}x in this sweep)"
    )
    print(f"cached, warm : {warm_s:7.1f} s ({warm_s / n:.1f} s a config; a later sweep over the same images)")
    print(
        f"speed-up: cold {naive_s / cached_s:.1f}x, warm {naive_s / warm_s:.1f}x (target >= 5x); "
        f"largest mAP difference cached vs naive: {gap:.2e}"
    )


if __name__ == "__main__":
    main()
