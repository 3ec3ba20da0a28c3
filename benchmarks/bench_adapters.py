"""Cost of CLoRA: encode throughput against the frozen backbone, train step against plain LoRA.

Default: ViT-B-32 with random weights (``load_backbone("ViT-B-32")``, no download), CPU, 224² random
images, 10 CIFAR-10 class names, 16 bits, rank 4, adapters on the last block's k and v (the release's
placement). ``--quick``: the ``tiny`` test config (32² images).

* encode: ``hasher.encode`` of a ``kalahash`` hasher (CLoRA + KIDDO) against ``backbone.encode_image``
  of an identical frozen backbone, images/s over a few batches (target: ratio ≥ 0.90).
* train step: forward + ``loss_on_batch`` + backward + SGD step, batch 8, CLoRA (``kalahash``) against
  plain LoRA with the same loss (``lora`` with ``kiddo=True``) (target: ratio ≤ 1.2).

Variants alternate inside each round, so both sides see the same machine load; the best (min) and
the median over rounds are reported. On a shared machine other jobs only ever add time, so the best
round is the least disturbed estimate of the intrinsic cost; the median shows the spread. Compare
the ratios, not the absolute times.

    python benchmarks/bench_adapters.py [--quick] [--rounds N] [--batches N] [--encode-batch N] [--threads N]

With ``--quick`` on a loaded 2-core machine, pass ``--threads 1``: tiny tensors spend most of their
time in thread hand-offs otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from kalahash.backbones import load_backbone
from kalahash.hashing import build_hasher

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the tiny test config instead of ViT-B-32")
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    parser.add_argument("--batches", type=int, default=1, help="batches per variant per round")
    parser.add_argument("--encode-batch", type=int, default=16, help="images per encode batch")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    name = "tiny" if args.quick else "ViT-B-32"
    bits, rank, train_batch = 16, 4, 8

    def fresh():
        torch.manual_seed(0)  # identical frozen weights for every variant
        return load_backbone(name, pretrained="random")

    frozen = fresh()
    size = frozen.image_size
    print(
        f"{name} (random init), images {size[0]}x{size[1]}, {bits} bits, rank {rank}, last block k,v; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); shared machine: timings are noisy"
    )
    clora = build_hasher("kalahash", fresh(), CIFAR10, bits, rank=rank)
    lora = build_hasher("lora", fresh(), CIFAR10, bits, rank=rank, kiddo=True)
    train_labels = np.eye(len(CIFAR10), dtype=np.uint8)[np.arange(64) % len(CIFAR10)]
    for hasher in (clora, lora):
        hasher.begin_training(train_labels)

    g = torch.Generator().manual_seed(0)
    enc_images = [torch.randn(args.encode_batch, 3, *size, generator=g) for _ in range(args.batches)]
    train_batches = []
    for _ in range(args.batches):
        idx = torch.randint(0, len(train_labels), (train_batch,), generator=g)
        labels = torch.from_numpy(train_labels[idx.numpy()]).float()
        train_batches.append((torch.randn(train_batch, 3, *size, generator=g), labels, idx))

    def encode_frozen():
        with torch.no_grad():
            for x in enc_images:
                frozen.encode_image(x)

    def encode_clora():
        for x in enc_images:
            clora.encode(x)

    def train_steps(hasher):
        opt = torch.optim.SGD(hasher.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)

        def run():
            hasher.train()
            for x, labels, idx in train_batches:
                loss, _ = hasher.loss_on_batch(hasher(x), labels, idx)
                opt.zero_grad()
                loss.backward()
                opt.step()

        return run

    variants = {
        "encode: frozen backbone": encode_frozen,
        "encode: kalahash (CLoRA)": encode_clora,
        "train step: CLoRA": train_steps(clora),
        "train step: plain LoRA": train_steps(lora),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            times[key].append(timed(fn))
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    n_enc = args.encode_batch * args.batches
    print(f"{'':30s}{'best':>14s}{'median':>14s}   ({args.rounds} rounds)")
    for key in ("encode: frozen backbone", "encode: kalahash (CLoRA)"):
        print(f"{key:30s}{n_enc / best[key]:14.2f}{n_enc / median[key]:14.2f}   images/s")
    for key in ("train step: CLoRA", "train step: plain LoRA"):
        ms = [t[key] / args.batches * 1e3 for t in (best, median)]
        print(f"{key:30s}{ms[0]:14.1f}{ms[1]:14.1f}   ms/step, batch {train_batch}")
    frozen_key, clora_key = "encode: frozen backbone", "encode: kalahash (CLoRA)"
    enc = [t[frozen_key] / t[clora_key] for t in (best, median)]  # throughput ratio = inverse time ratio
    step = [t["train step: CLoRA"] / t["train step: plain LoRA"] for t in (best, median)]
    print(f"encode throughput kalahash / frozen : best {enc[0]:.3f}, median {enc[1]:.3f} (target >= 0.90)")
    print(f"train step time   CLoRA / plain LoRA: best {step[0]:.3f}, median {step[1]:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
