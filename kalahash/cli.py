"""The ``kalahash`` command: a face over the Python API with the same names and defaults.

Each command parses its options, calls one function and prints: ``demo`` → ``run_demo``, ``run`` →
``run_experiment``, ``sweep`` → ``run_sweep``, ``eval`` → ``evaluate_checkpoint``, ``export`` →
``export_checkpoint``, ``check-data`` → ``check_dataset`` (all in ``kalahash.experiments``),
``pretrain-tiny`` → ``kalahash.pretrain.pretrain_tiny``, ``reproduce`` → ``kalahash.reproduce.reproduce``;
``encode`` → ``encode_folder``, ``index`` → ``build_index``, ``search`` → ``search`` (in ``kalahash.search``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from .experiments import DEFAULT_CACHE, DEFAULT_RESULTS, LIST_OPTIONS, METHODS, ExperimentConfig
from .hashing.knowledge import KNOWLEDGE_MODES

_DEFAULTS = ExperimentConfig()


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --hp expects KEY=VALUE (e.g. --hp rank=4), got {pair!r}")
        out[key] = _parse_value(value)
    return out


def _add_setting_args(p: argparse.ArgumentParser, many: bool) -> None:
    """Options shared by ``run`` and ``sweep``; with ``many`` the grid options take several values."""
    nargs = "+" if many else None
    p.add_argument(
        "--dataset",
        default=_DEFAULTS.dataset,
        help="data set name: objects10, objects10-multi, shapes, shapes-multi (built-in offline worlds), "
        "cifar10, nuswide, coco, "
        "folder, listfile (default: %(default)s)",
    )
    p.add_argument(
        "--data-root", default=None, help="folder holding the data set (not needed for built-in worlds)"
    )
    _add_list_args(p)
    p.add_argument(
        "--shots",
        type=int,
        nargs=nargs,
        default=[_DEFAULTS.shots] if many else _DEFAULTS.shots,
        help="labelled images per class (default: %(default)s)",
    )
    p.add_argument(
        "--bits",
        type=int,
        nargs=nargs,
        default=[_DEFAULTS.bits] if many else _DEFAULTS.bits,
        help="hash code length (default: %(default)s)",
    )
    if many:
        p.add_argument(
            "--methods",
            nargs="+",
            default=list(METHODS),
            choices=METHODS,
            help="methods to compare (default: all)",
        )
    else:
        p.add_argument(
            "--method",
            default=_DEFAULTS.method,
            choices=METHODS,
            help="lb: lock backbone, fft: full fine-tuning, lora: plain LoRA, clora: CLoRA, "
            "kalahash: CLoRA + KIDDO, zeroshot: no training, the code of each image's zero-shot class "
            "(default: %(default)s)",
        )
    p.add_argument(
        "--knowledge",
        default=_DEFAULTS.knowledge,
        choices=KNOWLEDGE_MODES,
        help="control of the class-text knowledge K for methods that read it: true, permuted (rows dealt "
        "to other classes), random (Gaussian rows of K's norms); seeded by the run's seed (default: %(default)s)",
    )
    p.add_argument(
        "--loss",
        default=_DEFAULTS.loss,
        help="hashing loss: dpsh, hashnet, csq, orthohash, mdsh (default: %(default)s)",
    )
    p.add_argument(
        "--backbone",
        default=_DEFAULTS.backbone,
        help="open_clip model name (ViT-B-32, ...), SLIP-ViT-S-16, or a built-in CLIP: tiny-shapes, "
        "tiny-objects-s/m/l (default: %(default)s)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (e.g. openai) or a local weights file; default: the built-in "
        "weights for the built-in tiny CLIPs, random init otherwise",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[_DEFAULTS.seed],
        help="seeds (few-shot sample and training); several give mean ± std (default: %(default)s)",
    )
    p.add_argument(
        "--epochs", type=int, default=_DEFAULTS.epochs, help="training epochs (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="SGD learning rate (default: %(default)s)")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one method hyperparameter, e.g. --hp rank=4 --hp strength=0.3 (repeatable)",
    )
    _add_scoring_args(p)
    _add_run_options(p)


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """How mAP is scored: ``run``, ``sweep`` and ``eval``."""
    p.add_argument("--topk", type=int, default=None, help="mAP@K cut-off (default: the data set's protocol)")
    p.add_argument(
        "--ties",
        default="index",
        choices=("index", "average"),
        help="tie rule of mAP: database index order, or the exact average over tie orders",
    )


def _add_list_args(p: argparse.ArgumentParser) -> None:
    """The list files of ``--dataset listfile`` (your own data), relative to --data-root or absolute."""
    for name, what in (
        ("train-list", "train pool"),
        ("query-list", "queries"),
        ("database-list", "database"),
    ):
        p.add_argument(f"--{name}", default=None, help=f"--dataset listfile: list file of the {what}")
    p.add_argument(
        "--classnames", default=None, help="--dataset listfile: class names file, one a line, in label order"
    )


def _list_options(args: argparse.Namespace) -> dict[str, str]:
    return {n: getattr(args, n) for n in LIST_OPTIONS if getattr(args, n) is not None}


def _add_results_args(p: argparse.ArgumentParser) -> None:
    """Where runs keep their rows and their cache: ``demo``, ``run`` and ``sweep``."""
    p.add_argument(
        "--results", default=str(DEFAULT_RESULTS), help="results table, CSV (default: %(default)s)"
    )
    p.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help="frozen-prefix token cache folder; 'none' disables it (default: %(default)s)",
    )


def _cache_folder(args: argparse.Namespace) -> str | None:
    return None if args.cache == "none" else args.cache


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_results_args(p)
    p.add_argument(
        "--workdir",
        default=None,
        help="folder for few-shot split lists and remembered data checks (default: the results table's)",
    )
    p.add_argument("--force", action="store_true", help="run even if the results table has this config")
    p.add_argument(
        "--allow-failed-check", action="store_true", help="run on data whose integrity check failed"
    )
    p.add_argument(
        "--strict-shots",
        action="store_true",
        help="refuse a few-shot set in which some class got fewer than --shots images (by default the "
        "run goes on, as the released MS-COCO / NUS-WIDE splits do, and records the shortfall)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "results": args.results,
        "workdir": args.workdir,
        "cache": _cache_folder(args),
        "force": args.force,
        "allow_failed_check": args.allow_failed_check,
        "strict_shots": args.strict_shots,
        "device": args.device,
        "progress": not args.quiet,
    }


def _base_config(args: argparse.Namespace, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        loss=args.loss,
        backbone=args.backbone,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hyperparameters=_hyperparameters(args.hp),
        topk=args.topk,
        ties=args.ties,
        knowledge=args.knowledge,
        **_list_options(args),
        **extra,
    )


def _warn_flags(rows: Any) -> None:
    """A ``WARNING`` line on stderr for each run whose diagnostics raised flags (kalahash.history)."""
    from .history import flag_warnings

    for line in flag_warnings(rows):
        print(line, file=sys.stderr)


def _print_table(table: Any) -> None:
    import pandas as pd

    with pd.option_context(
        "display.max_columns", 20, "display.width", 160, "display.float_format", "{:.4f}".format
    ):
        print(table.to_string(index=False))


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from .experiments import run_experiment, summarize

    if args.checkpoint and len(args.seeds) > 1:
        raise SystemExit("error: --checkpoint takes a single seed")
    if args.resume and not args.checkpoint:
        raise SystemExit("error: --resume needs --checkpoint FILE, the checkpoint to continue")
    base = _base_config(args, shots=args.shots, bits=args.bits, method=args.method)
    rows = []
    for seed in args.seeds:
        row = run_experiment(
            replace(base, seed=seed), checkpoint=args.checkpoint, resume=args.resume, **_run_kwargs(args)
        )
        status = "stored result (use --force to rerun)" if row["skipped"] else "done"
        if not row["skipped"] and row["resumed_from_epoch"] >= row["epochs"]:
            status = f"checkpoint {args.checkpoint} is of a finished run: re-scored, not trained further"
        print(f"seed {seed}: mAP@{row['map_at']} = {row['map']:.4f} ({row['ties_rule']} ties) [{status}]")
        rows.append(row)
    if len(rows) > 1:
        _print_table(summarize(pd.DataFrame(rows)))
    _warn_flags(rows)
    print(f"results table: {args.results}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import run_sweep, summarize

    base = _base_config(args)
    grid = {"shots": args.shots, "bits": args.bits, "method": args.methods, "seed": args.seeds}
    rows = run_sweep(base, grid, **_run_kwargs(args))
    _print_table(summarize(rows))
    _warn_flags(rows)
    print(f"results table: {args.results}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .experiments import UnnamedDatasetError, evaluate_checkpoint

    try:
        scores = evaluate_checkpoint(
            args.checkpoint,
            dataset=args.dataset,
            data_root=args.data_root,
            pretrained=args.pretrained,
            topk=args.topk,
            ties=args.ties,
            device=args.device,
            progress=not args.quiet,
        )
    except UnnamedDatasetError:
        raise SystemExit("error: this checkpoint does not name its data set: pass --dataset") from None
    print(
        f"mAP@{scores['map_topk']} = {scores['map']:.4f} ({args.ties} ties); "
        + ", ".join(f"{k} = {v:.4f}" for k, v in scores.items() if k.startswith("p_at_"))
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments import run_demo

    print(
        f"KALAHash demo on the built-in offline world {args.dataset!r} (synthetic 32x32 images) with "
        f"{args.backbone!r}, a tiny CLIP pre-trained on its captions (kalahash/weights). Its numbers show the "
        "methods at work on this world; they are not comparable to the paper's CIFAR-10 / NUS-WIDE / MS-COCO "
        "results."
    )
    table = run_demo(
        args.out,
        args.results,
        dataset=args.dataset,
        backbone=args.backbone,
        shots=args.shots,
        bits=args.bits,
        epochs=args.epochs,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
        cache=_cache_folder(args),
    )
    _print_table(table)
    _warn_flags(table)
    print(
        f"figures: {args.out}/demo_map.png, .pdf; table: {args.out}/demo_results.csv; all rows: {args.results}"
    )
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .experiments import check_dataset

    check = check_dataset(
        args.dataset,
        args.data_root,
        split_seed=args.split_seed,
        progress=not args.quiet,
        **_list_options(args),
    )
    print(check.report())
    return 0 if check.ok else 1


def cmd_pretrain_tiny(args: argparse.Namespace) -> int:
    from .pretrain import pretrain_tiny

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    info = pretrain_tiny(**options)
    print(json.dumps({k: v for k, v in info.items() if k != "knowledge"}, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .experiments import export_checkpoint

    exported = export_checkpoint(args.checkpoint, args.output, pretrained=args.pretrained)
    print(
        f"wrote {exported.path}: the {exported.method} run's CLIP weights, adapters folded in (open_clip "
        f"layout: use it as --pretrained {exported.path} with the run's --backbone), and its hash head "
        "(kalahash.experiments.load_exported gives the run's codes)"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    done = reproduce(args.profile, args.only, args.dataset, fresh=args.fresh, kernel=args.kernel)
    _print_table(done.table[["notebook", "status", "seconds", "output"]])
    for line in done.table[done.table["error"] != ""].itertuples():
        print(f"{line.notebook} failed: {line.error}")
    print(f"executed notebooks: {done.run_dir}")
    print(f"figures and tables: {done.figures} ({len(done.figures_written)} files written by this call)")
    print(f"results table: {done.results}")
    return 0 if done.ok else 1


def cmd_encode(args: argparse.Namespace) -> int:
    import os

    import torch.distributed as dist

    from .search import encode_folder, init_distributed

    joined = init_distributed()  # under torchrun: every rank encodes a share, rank 0 writes
    try:
        report = encode_folder(
            args.checkpoint,
            args.images,
            args.out,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            workers=args.workers,
            pretrained=args.pretrained,
            device=args.device,
            progress=not args.quiet,
        )
    finally:
        if joined:
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{report.count} images have codes in {report.out} ({report.encoded} encoded by this call)")
        if report.skipped:
            print(f"{len(report.skipped)} files skipped (all listed in {report.out / 'meta.json'}):")
            for entry in report.skipped[:10]:
                print(f"  {entry['path']}: {entry['reason']}")
            if len(report.skipped) > 10:
                print(f"  ... and {len(report.skipped) - 10} more")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .search import build_index

    path = build_index(args.codes, args.kind, neighbors=args.neighbors)
    print(f"wrote {path} ({args.kind})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import search, write_html

    hits = search(
        args.codes,
        args.query,
        args.k,
        checkpoint=args.checkpoint,
        engine=args.engine,
        pretrained=args.pretrained,
        device=args.device,
    )
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2))
    else:
        print(f"{'rank':>4}  {'distance':>8}  path")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.distance:>8}  {hit.path}")
    if args.html:
        print(
            f"thumbnails: {write_html(hits, args.html, args.query)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def _add_search_commands(sub: Any) -> None:
    """``encode``, ``index`` and ``search``: hash a folder of images with a checkpoint and search it."""
    p = sub.add_parser(
        "encode",
        help="encode every image under a folder with a trained checkpoint (resumable, incremental; "
        "several GPUs or machines: torchrun --nproc_per_node N -m kalahash.cli encode ...)",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `kalahash run --checkpoint`")
    p.add_argument("--images", required=True, help="folder of images, searched recursively")
    p.add_argument("--out", required=True, help="codes folder to write (or to bring up to date)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="images per saved chunk: the unit of resuming (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="image-decoding worker processes (default: %(default)s)"
    )
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("index", help="build a faiss binary index beside a codes folder")
    p.add_argument("codes", help="a codes folder written by `kalahash encode`")
    p.add_argument(
        "--kind",
        default="flat",
        choices=("flat", "hnsw"),
        help="flat: exact; hnsw: approximate, for very large sets (default: %(default)s)",
    )
    p.add_argument("--neighbors", type=int, default=32, help="HNSW links per node (default: %(default)s)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the images of a codes folder nearest to a query image")
    p.add_argument("--codes", required=True, help="a codes folder written by `kalahash encode`")
    p.add_argument("--query", required=True, help="query image file")
    p.add_argument("--k", type=int, default=20, help="number of hits (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {rank, distance, path}")
    p.add_argument("--html", default=None, metavar="OUT.html", help="also write a page of thumbnails")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint that made the codes")
    p.add_argument(
        "--engine",
        default="exact",
        choices=("exact", "index"),
        help="exact: kalahash's Hamming engine (faster than faiss's exact index); index: the faiss index "
        "built by `kalahash index` (default: %(default)s)",
    )
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the ones the codes used")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    from .pretrain import add_pretrain_tiny_arguments

    parser = argparse.ArgumentParser(
        prog="kalahash",
        description="Knowledge-anchored low-resource adaptation of CLIP for deep hashing (KALAHash, AAAI 2025).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo", help="LB, FFT, LoRA and KALAHash on the built-in offline world (minutes on a CPU)"
    )
    p.add_argument("--out", default="figures", help="folder for figures and the table (default: %(default)s)")
    _add_results_args(p)
    p.add_argument(
        "--dataset", default="objects10", help="a built-in world: objects10, shapes (default: %(default)s)"
    )
    p.add_argument(
        "--backbone",
        default="tiny-objects-m",
        help="a built-in CLIP: tiny-objects-s/m/l (objects10), tiny-shapes (shapes) (default: %(default)s)",
    )
    p.add_argument("--shots", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--bits", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=100, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rerun even if the results table has these runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="train and evaluate one setting (one or several seeds)")
    _add_setting_args(p, many=False)
    p.add_argument("--checkpoint", default=None, help="write the trained parts here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep", help="a grid over shots x bits x methods x seeds; prints mean ± std per setting"
    )
    _add_setting_args(p, many=True)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a checkpoint written by `kalahash run --checkpoint`")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `kalahash run --checkpoint`")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's data set")
    p.add_argument("--data-root", default=None, help="default: the checkpoint's data root")
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    _add_scoring_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("check-data", help="verify a data set's files, splits, duplicates and overlaps")
    p.add_argument("--dataset", required=True, help="data set name (cifar10, nuswide, coco, folder, ...)")
    p.add_argument(
        "--data-root", default=None, help="its folder (default: data/<name> or $KALAHASH_DATA/<name>)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the query/database split (default: 0)")
    _add_list_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser(
        "pretrain-tiny",
        help="re-create a built-in tiny CLIP's weights (--config tiny-shapes, the default, about 12 min on 2 "
        "idle cores; tiny-objects-s/m/l with --world objects10, 6 to 33 CPU-minutes each)",
    )
    add_pretrain_tiny_arguments(p)
    p.set_defaults(func=cmd_pretrain_tiny)

    p = sub.add_parser(
        "export", help="write a checkpoint's model as CLIP weights (plain LoRA folded in) plus its hash head"
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a lb, fft or plain-LoRA run")
    p.add_argument(
        "--output", required=True, help="the file to write, loadable with --pretrained (open_clip layout)"
    )
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "reproduce",
        help="run the notebooks in order through papermill into runs/<timestamp>/ (continues the latest "
        "unfinished call; finished notebooks and runs are reused)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        choices=("auto", "smoke", "paper"),
        help="smoke: the offline world, minutes on a CPU; paper: CLIP ViT-B/32 on the real data sets; "
        "auto: smoke for the built-in worlds, paper for real data (default: %(default)s)",
    )
    p.add_argument("--only", nargs="+", default=None, metavar="PREFIX", help="notebooks to run, e.g. 03 06")
    p.add_argument("--dataset", default=None, help="passed to every notebook (default: the profile's)")
    p.add_argument("--fresh", action="store_true", help="a new runs folder: rerun every notebook")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own)")
    p.set_defaults(func=cmd_reproduce)

    _add_search_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("shots", "bits", "epochs", "batch_size"):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value <= 0:
                print(
                    f"error: --{name.replace('_', '-')} must be a positive integer, got {value}",
                    file=sys.stderr,
                )
                return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
