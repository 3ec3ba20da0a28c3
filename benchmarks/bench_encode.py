"""Feeding the device: preprocessing, encoding and the full-protocol run, split into phases, in one run.

(a) preprocessing: 32x32 uint8 images to 224² model input on the device, images/s: the PIL path by
    worker count (0, 2, 4, 8, 15, capped at the cores) and the device path (``device_preprocess``),
    with the largest pixel difference between the two.
(b) encoding: images/s of the image tower on preprocessed batches of 256, frozen (LB) and CLoRA
    (KALAHash), fp32 and under the library's autocast (CUDA only).
(c) the full protocol: ``run_experiment`` on a generated CIFAR-10-layout archive (60,000 32x32 images:
    59,000 database, 1,000 queries, mAP@all), 1 shot, 16 bits, LB and KALAHash, the PIL path (default
    workers) and the device path, each with its cache cold then warm, and KALAHash without a cache;
    each run split into its phases (load, data check, build, fit, encode, mAP); last, if the budget
    allows, LB with main's loader (PIL in one process) as the side-by-side baseline.

Targets (issue #24; on one H100/H200-class GPU): the full 1-shot run within 20 s with a cold cache and
5 s warm (main: 99 s LB, 109 s KALAHash). The images are random with a class tint (nothing to
download), the backbone ViT-B-32 with random weights (``pretrained=None``): times are what matter.

    python benchmarks/bench_encode.py --device cuda --out bench_encode.json    # the GPU run (~3-5 min)
    python benchmarks/bench_encode.py --quick --out bench_encode_quick.json    # CPU, tiny sizes (~1-2 min)

Tables are printed as each section ends, and ``--out`` is rewritten after every section and every run
of (c), so an interrupted run keeps what it measured. ``--budget`` skips the rest of (c) once that many
seconds have passed (saying so).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch
from PIL import Image

from kalahash.backbones import load_backbone
from kalahash.cache import device_autocast
from kalahash.data import ImageList
from kalahash.experiments import ExperimentConfig, run_experiment
from kalahash.hashing import build_hasher
from kalahash.loader import DevicePreprocess, LoaderOptions, available_cpus, default_workers, image_batches
from kalahash.machine import provenance

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
PHASES = ("load", "check", "build", "fit", "encode", "map")


def say(text: str) -> None:
    print(text, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tinted_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 32x32 RGB images, balanced over 10 classes, each class with its own colour tint."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    tints = rng.integers(0, 96, (10, 3), dtype=np.uint8)
    pixels = rng.integers(0, 160, (n, 32, 32, 3), dtype=np.uint8)
    pixels += tints[labels][:, None, None, :]
    return pixels, labels


def write_cifar_archive(root: Path, n: int) -> Path:
    """A cifar-10-python.tar.gz of ``n`` tinted images in the real pickle layout (as the tests build it)."""
    pixels, labels = tinted_images(n)
    folder = root / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, rows in zip(CIFAR_BATCHES, np.array_split(np.arange(n), 6), strict=True):
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels[rows].tolist(),
            b"data": pixels[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072),  # R, G, B planes
            b"filenames": [f"img_{i:05d}.png".encode() for i in rows],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    data_root = root / "cifar10"
    data_root.mkdir()
    archive = data_root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return data_root


# ----------------------------------------------------------------------------------------------------------
# (a) preprocessing


def section_preprocess(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    preprocess = open_clip.image_transform(224, is_train=False)  # ViT-B/32's: resize 32 -> 224, normalise
    pixels, labels = tinted_images(args.preprocess_images)
    images = ImageList(pixels, np.eye(10, dtype=np.uint8)[labels])
    counts = sorted({min(w, available_cpus()) for w in (0, 2, 4, 8, 15)})
    rows = []
    for workers in counts:
        n = args.preprocess_images if workers else args.preprocess_images // 2  # one process is slow
        subset = images.subset(np.arange(n))
        rows.append(
            _time_batches(f"PIL, {workers} workers", subset, preprocess, device, LoaderOptions(workers))
        )
    rows.append(_time_batches("device", images, preprocess, device, LoaderOptions(device_preprocess=True)))
    check = images.images[:256]
    on_device = DevicePreprocess.from_transform(preprocess)(torch.from_numpy(check.copy()).to(device))
    pil = torch.stack([preprocess(Image.fromarray(image)) for image in check]).to(device)
    rows[-1]["max_abs_pixel_difference_vs_pil"] = float((on_device - pil).abs().max())
    return rows


def _time_batches(
    path: str, images: ImageList, preprocess: Any, device: torch.device, options: LoaderOptions
) -> dict[str, Any]:
    synchronize(device)
    began = time.perf_counter()
    try:
        for _ in image_batches([images], preprocess, device, batch_size=256, options=options):
            pass
    except Exception as err:  # recorded, and the benchmark goes on: it runs once on the GPU
        say(f"  (a) {path}: FAILED ({type(err).__name__}: {err})")
        return {"path": path, "images": len(images), "error": f"{type(err).__name__}: {err}"}
    synchronize(device)
    seconds = time.perf_counter() - began
    row = {"path": path, "images": len(images), "seconds": round(seconds, 3)}
    row["images_per_s"] = round(len(images) / seconds, 1)
    say(f"  (a) {path}: {row['images_per_s']:,.0f} images/s")
    return row


# ----------------------------------------------------------------------------------------------------------
# (b) encoding


@torch.no_grad()
def section_encode(
    args: argparse.Namespace, device: torch.device, backbone_name: str
) -> list[dict[str, Any]]:
    rows = []
    for method, label in (("lb", "frozen"), ("kalahash", "CLoRA")):
        torch.manual_seed(0)
        backbone = load_backbone(backbone_name, device=device)  # a hasher adapts its backbone: one each
        hasher = build_hasher(method, backbone, CIFAR_CLASSES, 16).eval()
        size = backbone.image_size
        batch = torch.randn(args.encode_batch, 3, *size, device=device)
        precisions = ("fp32", "autocast") if device.type == "cuda" else ("fp32",)
        for precision in precisions:
            context = (
                device_autocast(device)
                if precision == "autocast"
                else torch.autocast(device.type, enabled=False)
            )
            with context:
                for _ in range(2):  # warm-up: kernels, autotuning
                    hasher(batch)
                synchronize(device)
                began = time.perf_counter()
                for _ in range(args.encode_batches):
                    hasher(batch)
                synchronize(device)
            seconds = time.perf_counter() - began
            images = args.encode_batch * args.encode_batches
            row = {"tower": label, "method": method, "precision": precision, "images": images}
            row["images_per_s"] = round(images / seconds, 1)
            say(f"  (b) {label}, {precision}: {row['images_per_s']:,.0f} images/s")
            rows.append(row)
        del hasher, backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------
# (c) the full protocol


def protocol_runs(device: torch.device) -> list[dict[str, Any]]:
    """The runs of (c) in order: (method, path, cache state)."""
    pil = {"path": "PIL", "workers": None, "device_preprocess": False}
    on_device = {"path": "device", "workers": None, "device_preprocess": True}
    runs = []
    for loader in (on_device, pil):
        for method in ("lb", "kalahash"):
            runs += [{"method": method, **loader, "cache": state} for state in ("cold", "warm")]
    runs.append({"method": "kalahash", **on_device, "cache": "none"})
    # main's loader (PIL in one process), last and only if the budget allows: the side-by-side baseline
    runs.append({"method": "lb", "path": "PIL", "workers": 0, "device_preprocess": False, "cache": "cold"})
    return runs


def section_protocol(
    args: argparse.Namespace, device: torch.device, backbone: str, work: Path, began: float, report: Any
) -> list[dict[str, Any]]:
    made = time.perf_counter()
    data_root = write_cifar_archive(work, args.protocol_images)
    say(
        f"  (c) wrote a CIFAR-10-layout archive of {args.protocol_images:,} images in {time.perf_counter() - made:.1f} s"
    )
    rows: list[dict[str, Any]] = []
    for run in protocol_runs(device):
        workers = "auto" if run["workers"] is None else run["workers"]
        label = f"{run['method']}, {run['path']}, workers {workers}, cache {run['cache']}"
        if time.perf_counter() - began > args.budget:
            say(f"  (c) {label}: skipped, the budget of {args.budget} s is spent")
            rows.append({**run, "skipped": "budget"})
            continue
        folder = work / f"{run['method']}-{run['path']}-{workers}"  # a warm run reuses its cold run's
        cache = None if run["cache"] == "none" else folder / "cache"
        cfg = ExperimentConfig(
            dataset="cifar10", data_root=str(data_root), backbone=backbone, method=run["method"],
            shots=1, bits=16, epochs=args.epochs,
        )  # fmt: skip
        synchronize(device)
        start = time.perf_counter()
        try:
            row = run_experiment(
                cfg, results=None, cache=cache, workdir=folder, device=device, progress=False,
                workers=run["workers"], device_preprocess=run["device_preprocess"],
            )  # fmt: skip
        except Exception as err:  # recorded, and the next run goes on: it runs once on the GPU
            say(f"  (c) {label}: FAILED ({type(err).__name__}: {err})")
            rows.append({**run, "error": f"{type(err).__name__}: {err}"})
            report(rows)
            continue
        synchronize(device)
        wall = time.perf_counter() - start
        out = {**run, "workers": row["workers"], "wall_seconds": round(wall, 2)}
        out.update({f"{p}_seconds": row[f"{p}_seconds"] for p in PHASES})
        out.update(
            train_seconds=row["train_seconds"], map=row["map"], map_ties_average=row["map_ties_average"]
        )
        out["cache_bytes"] = sum(f.stat().st_size for f in cache.glob("*.npy")) if cache is not None else 0
        rows.append(out)
        say(f"  (c) {label}: {wall:.1f} s (mAP {row['map']:.4f})")
        report(rows)
    return rows


# ----------------------------------------------------------------------------------------------------------


def guarded(section: Any, *args: Any) -> list[dict[str, Any]]:
    """A section's rows, or one row with its error: the benchmark runs once on the GPU, so a section
    that breaks is recorded and the next one runs."""
    try:
        return section(*args)
    except Exception as err:
        say(f"  FAILED ({type(err).__name__}: {err})")
        return [{"error": f"{type(err).__name__}: {err}"}]


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    say(f"\n{title}")
    table = pd.DataFrame(rows)
    columns = [c for c in [*columns, "skipped", "error"] if c in table]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        say(table[columns].to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CPU-sized: tiny backbone, 6,000 images")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda if available; --quick: cpu)"
    )
    parser.add_argument(
        "--out", default="bench_encode.json", help="the JSON of the results (default: %(default)s)"
    )
    parser.add_argument("--backbone", default=None, help="default ViT-B-32 (random weights); --quick: tiny")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs of (c) (default 100; --quick 20)"
    )
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds after which (c) stops (default: %(default)s)"
    )
    parser.add_argument(
        "--workdir", default=None, help="folder for the archive and caches (default: a temp folder)"
    )
    parser.add_argument("--sections", default="abc", help="which sections to run (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda"))
    backbone = args.backbone or ("tiny" if args.quick else "ViT-B-32")
    args.epochs = args.epochs or (20 if args.quick else 100)
    args.preprocess_images = 512 if args.quick else 8192
    args.encode_batch, args.encode_batches = (64, 4) if args.quick else (256, 20)
    args.protocol_images = 6_000 if args.quick else 60_000
    torch.set_flush_denormal(True)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights": random is the point
    began = time.perf_counter()
    info = {
        "command": "python benchmarks/bench_encode.py " + " ".join(sys.argv[1:]),
        "backbone": backbone,
        "epochs": args.epochs,
        "cpus": available_cpus(),
        "default_workers": default_workers(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        **provenance(device),
    }
    results: dict[str, Any] = {"info": info, "preprocess": [], "encode": [], "protocol": []}

    def report(protocol: list[dict[str, Any]] | None = None) -> None:
        if protocol is not None:
            results["protocol"] = protocol
        results["elapsed_seconds"] = round(time.perf_counter() - began, 1)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))

    say(
        f"bench_encode on {info['device']} ({device}), {info['cpus']} CPUs, torch {torch.__version__}, "
        f"backbone {backbone} (random weights), default workers {info['default_workers']}"
    )
    if "a" in args.sections:
        say("(a) preprocessing 32x32 -> 224x224 ...")
        results["preprocess"] = guarded(section_preprocess, args, device)
        report()
        print_table(
            "(a) preprocessing, images/s", results["preprocess"],
            ["path", "images", "seconds", "images_per_s", "max_abs_pixel_difference_vs_pil"],
        )  # fmt: skip
    if "b" in args.sections:
        say(f"\n(b) encoding, batch {args.encode_batch} ...")
        results["encode"] = guarded(section_encode, args, device, backbone)
        report()
        print_table(
            "(b) encoding, images/s", results["encode"], ["tower", "precision", "images", "images_per_s"]
        )
    if "c" in args.sections:
        say(
            f"\n(c) the full protocol ({args.protocol_images:,} images, 1 shot, 16 bits, {args.epochs} epochs) ..."
        )
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_encode-") as tmp:
            rows = section_protocol(args, device, backbone, Path(tmp), began, report)
        report(rows)
        columns = ["method", "path", "workers", "cache", "wall_seconds", *(f"{p}_seconds" for p in PHASES)]
        print_table("(c) the full protocol, seconds", rows, [*columns, "train_seconds", "map", "cache_bytes"])
    report()
    say(f"\nwrote {args.out} ({results['elapsed_seconds']} s in all)")


if __name__ == "__main__":
    main()
