"""The commands of runs and notebooks: ``run``, ``sweep``, ``eval``, ``demo``, ``check-data``,
``pretrain-tiny``, ``export``, ``convert-checkpoint`` and ``reproduce``; each calls its Python twin and
prints."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from .launch import checked_launcher, launched_sweep
from .options import (
    base_config,
    cache_folder,
    list_options,
    print_diverged,
    print_table,
    run_kwargs,
    warn_flags,
)


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..experiments import run_experiment, summarize

    if args.checkpoint and len(args.seeds) > 1:
        raise ValueError("--checkpoint takes a single seed")
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint FILE, the checkpoint to continue")
    base = base_config(args, shots=args.shots, bits=args.bits, method=args.method)
    rows = []
    for seed in args.seeds:
        row = run_experiment(
            replace(base, seed=seed), checkpoint=args.checkpoint, resume=args.resume, **run_kwargs(args)
        )
        status = "stored result (use --force to rerun)" if row["skipped"] else "done"
        if not row["skipped"] and row["resumed_from_epoch"] >= row["epochs"]:
            status = f"checkpoint {args.checkpoint} is of a finished run: re-scored, not trained further"
        print(f"seed {seed}: mAP@{row['map_at']} = {row['map']:.4f} ({row['ties_rule']} ties) [{status}]")
        rows.append(row)
    if len(rows) > 1:
        print_table(summarize(pd.DataFrame(rows)))
    warn_flags(rows)
    print(f"results table: {args.results}")
    return 0


def interrupted_run(args: argparse.Namespace) -> str:
    """What a Ctrl-C in ``run`` leaves, and how to go on."""
    done = f"rows of finished seeds are in {args.results}"
    if args.checkpoint and Path(args.checkpoint).is_file():
        return (
            f"{args.checkpoint} holds the last finished epoch ({done}): run the same command with --resume "
            "to continue"
        )
    if args.checkpoint:
        return f"no epoch had finished, nothing of this run was kept ({done}): run the same command again"
    return (
        f"nothing of the unfinished run was kept ({done}); --checkpoint FILE saves every epoch, so that "
        "--resume can continue"
    )


def interrupted_grid(args: argparse.Namespace) -> str:
    """What a Ctrl-C in ``sweep`` or ``demo`` leaves, and how to go on."""
    return (
        f"finished runs are in {args.results}: the same command runs the rest (runs in the table are skipped)"
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments import expand_grid, run_sweep, summarize

    base = base_config(args)
    grid = {"shots": args.shots, "bits": args.bits, "method": args.methods, "seed": args.seeds}
    launcher = checked_launcher(args)
    if launcher is not None:
        return launched_sweep(launcher, expand_grid(base, grid), run_kwargs(args))
    rows = run_sweep(base, grid, **run_kwargs(args))
    print_diverged(rows)
    print_table(summarize(rows))
    warn_flags(rows)
    print(f"results table: {args.results}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..experiments import UnnamedDatasetError, evaluate_checkpoint

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
            workers=args.workers,
            device_preprocess=args.device_preprocess,
        )
    except UnnamedDatasetError:
        raise ValueError("this checkpoint does not name its data set: pass --dataset") from None
    print(
        f"mAP@{scores['map_topk']} = {scores['map']:.4f} ({args.ties} ties); "
        + ", ".join(f"{k} = {v:.4f}" for k, v in scores.items() if k.startswith("p_at_"))
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..experiments import run_demo

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
        batch_size=args.batch_size,
        seeds=args.seeds,
        force=args.force,
        progress=not args.quiet,
        cache=cache_folder(args),
    )
    print_table(table)
    if len(args.seeds) > 1:
        by_method = table.groupby("method", sort=False)["map"].agg(["mean", "std"]).reset_index()
        print_table(by_method.rename(columns={"mean": "map mean", "std": "map std (over seeds)"}))
    warn_flags(table)
    print(
        f"figures: {args.out}/demo_map.png, .pdf; table: {args.out}/demo_results.csv; all rows: {args.results}"
    )
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..experiments import check_dataset

    check = check_dataset(
        args.dataset,
        args.data_root,
        split_seed=args.split_seed,
        download=args.download,
        progress=not args.quiet,
        **list_options(args),
    )
    print(check.report())
    return 0 if check.ok else 1


def cmd_pretrain_tiny(args: argparse.Namespace) -> int:
    from ..worlds.pretrain import pretrain_tiny

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    info = pretrain_tiny(**options)
    print(json.dumps({k: v for k, v in info.items() if k != "knowledge"}, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..experiments import export_checkpoint

    if args.out is None:
        raise ValueError("--out FILE is required: the file to write")
    exported = export_checkpoint(args.checkpoint, args.out, pretrained=args.pretrained)
    print(
        f"wrote {exported.path}: the {exported.method} run's CLIP weights, adapters folded in (open_clip "
        f"layout: use it as --pretrained {exported.path} with the run's --backbone), and its hash head "
        "(kalahash.experiments.load_exported gives the run's codes)"
    )
    return 0


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from ..experiments import UntrustedCheckpointError, convert_checkpoint

    try:
        done = convert_checkpoint(args.checkpoint, trust=args.trust, output=args.out, force=args.force)
    except UntrustedCheckpointError as err:
        imports = f" (it would import {', '.join(err.imports)})" if err.imports else ""
        print(
            f"error: {args.checkpoint} is not in the safe format{imports}. Converting it unpickles it in full, "
            "which runs any code the file holds: if you trust where it comes from, run "
            f"`kalahash convert-checkpoint --trust {shlex.quote(args.checkpoint)}`",
            file=sys.stderr,
        )
        return 2
    except FileExistsError:
        print(f"error: {args.out} exists: pass --force to replace it, or another --out", file=sys.stderr)
        return 2
    if not done.converted:
        print(
            f"{done.path} already loads with the safe (weights-only) reader: nothing to convert, nothing written"
        )
        return 0
    imported = f" (it imported {', '.join(done.imports)})" if done.imports else ""
    print(
        f"unpickled {args.checkpoint} in full{imported}, stored its values as plain types and wrote "
        f"{done.path}: it now loads with the safe (weights-only) reader"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    done = reproduce(
        args.profile,
        args.only,
        args.dataset,
        fresh=args.fresh,
        kernel=args.kernel,
        update_figures=args.update_figures,
        launcher=checked_launcher(args),
    )
    print_table(done.table[["notebook", "status", "seconds", "output"]])
    for line in done.table[done.table["error"] != ""].itertuples():
        print(f"{line.notebook} failed: {line.error}")
    print(f"executed notebooks: {done.run_dir}")
    print(f"figures and tables: {done.figures} ({len(done.figures_written)} files written by this call)")
    if args.update_figures:
        print(f"copied {len(done.figures_updated)} of them into the project's figures/")
    print(f"results table: {done.results}")
    return 0 if done.ok else 1
