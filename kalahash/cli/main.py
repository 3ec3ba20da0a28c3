"""The parser of the ``kalahash`` command and its entry point."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..experiments.config import DEFAULT_BACKBONE, DEFAULT_DATASET, DEFAULT_FIGURES
from ..experiments.notebook import PROFILES
from ..extras import MissingExtraError
from ..worlds import WORLDS, family_text
from . import commands
from .cache_size import add_cache_size_command
from .launch import add_collect_command, add_launcher_args, interrupted_sweep
from .options import (
    add_list_args,
    add_loader_args,
    add_results_args,
    add_run_shape_args,
    add_scoring_args,
    add_setting_args,
)
from .own_images import add_search_commands


class _Parser(argparse.ArgumentParser):
    """A parser whose arguments may be added when it is first used (``later``): a sub-command whose
    options live in a module that imports torch keeps ``kalahash --help`` quick."""

    later: Callable[[argparse.ArgumentParser], object] | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self.later is not None:
            add, self.later = self.later, None
            add(self)
        return super().parse_known_args(args, namespace)


def _add_pretrain_tiny_arguments(p: argparse.ArgumentParser) -> None:
    from ..worlds.pretrain import add_pretrain_tiny_arguments

    add_pretrain_tiny_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kalahash",
        description="Knowledge-anchored low-resource adaptation of CLIP for deep hashing (KALAHash, AAAI 2025).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "demo", help="LB, FFT, LoRA and KALAHash on the built-in offline world (minutes on a CPU)"
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_FIGURES),
        help="folder for the figure (demo_map.png, .pdf) and the table (demo_results.csv) (default: "
        "%(default)s)",
    )
    add_results_args(p)
    p.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help=f"a built-in world: {', '.join(WORLDS)} (default: %(default)s)",
    )
    p.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="a built-in CLIP: "
        + ", ".join(f"{family_text(spec.backbones)} ({name})" for name, spec in WORLDS.items())
        + " (default: %(default)s)",
    )
    add_run_shape_args(p)
    p.add_argument("--force", action="store_true", help="rerun even if the results table has these runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_demo, interrupted=commands.interrupted_grid)

    p = sub.add_parser("run", help="train and evaluate one setting (one or several seeds)")
    add_setting_args(p, many=False)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="write the trained parts here after every epoch (an existing file is refused unless --resume "
        "or --force)",
    )
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.set_defaults(func=commands.cmd_run, interrupted=commands.interrupted_run)

    p = sub.add_parser(
        "sweep", help="a grid over shots x bits x methods x seeds; prints mean ± std per setting"
    )
    add_setting_args(p, many=True)
    add_launcher_args(p)
    p.set_defaults(func=commands.cmd_sweep, interrupted=interrupted_sweep)

    p = sub.add_parser("eval", help="evaluate a checkpoint written by `kalahash run --checkpoint`")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `kalahash run --checkpoint`")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's data set")
    p.add_argument("--data-root", default=None, help="default: the checkpoint's data root")
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    add_scoring_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    add_loader_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser("check-data", help="verify a data set's files, splits, duplicates and overlaps")
    p.add_argument("--dataset", required=True, help="data set name (cifar10, nuswide, coco, folder, ...)")
    p.add_argument(
        "--data-root", default=None, help="its folder (default: data/<name> or $KALAHASH_DATA/<name>)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the query/database split (default: 0)")
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch the data set if it is missing (cifar10 only; needs network)",
    )
    add_list_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_check_data)

    p = sub.add_parser(
        "pretrain-tiny",
        help="re-create a built-in tiny CLIP's weights (--config tiny-shapes, the default, about 12 min on 2 "
        "idle cores; tiny-objects-s/m/l with --world objects10, 6 to 33 CPU-minutes each)",
    )
    p.later = _add_pretrain_tiny_arguments  # pretrain imports torch: only for this command
    p.set_defaults(func=commands.cmd_pretrain_tiny)

    p = sub.add_parser(
        "export", help="write a checkpoint's model as CLIP weights (plain LoRA folded in) plus its hash head"
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a lb, fft or plain-LoRA run")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the file to write, loadable with --pretrained (open_clip layout); required",
    )
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite a checkpoint of an older kalahash that the safe reader refuses: unpickles it in full, "
        "which runs any code it holds, so only with --trust, for a file you trust",
        description="kalahash reads checkpoints with torch's weights-only unpickler, which runs nothing a file "
        "holds. A checkpoint of an older kalahash may hold objects that reader refuses; this command loads it "
        "with torch.load(weights_only=False) (which runs whatever code the file holds, so only with --trust), "
        "stores its values as plain types and writes it back (atomically) in the safe format. A file the safe "
        "reader accepts already is left as it is.",
    )
    p.add_argument("checkpoint", help="the checkpoint file to convert")
    p.add_argument(
        "--trust",
        action="store_true",
        help="you trust this file (you wrote it, or someone you trust did): unpickle it in full",
    )
    p.add_argument(
        "--out", default=None, help="write the converted checkpoint here (default: replace CHECKPOINT)"
    )
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)  # the spelling --out replaced
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=commands.cmd_convert_checkpoint)

    p = sub.add_parser(
        "reproduce",
        help="run the notebooks in order through papermill into runs/<timestamp>/, their figures into "
        "runs/<timestamp>/figures/ (continues the latest unfinished call; finished notebooks and runs are "
        "reused)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        choices=("auto", *PROFILES),
        help="smoke: the offline world, minutes on a CPU; paper: CLIP ViT-B/32 on the real data sets; "
        "auto: smoke for the built-in worlds, paper for real data (default: %(default)s)",
    )
    p.add_argument("--only", nargs="+", default=None, metavar="PREFIX", help="notebooks to run, e.g. 03 06")
    p.add_argument("--dataset", default=None, help="passed to every notebook (default: the profile's)")
    p.add_argument("--fresh", action="store_true", help="a new runs folder: rerun every notebook")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own)")
    p.add_argument(
        "--update-figures",
        action="store_true",
        help="also copy the figures and tables into the project's figures/ (the committed gallery); by "
        "default they stay in the runs folder, and the repository's files are left as they are",
    )
    add_launcher_args(p)
    p.set_defaults(
        func=commands.cmd_reproduce,
        interrupted=lambda _: (
            "the same command continues in the same runs folder (finished notebooks are reused)"
        ),
    )

    add_search_commands(sub)
    add_cache_size_command(sub)
    add_collect_command(sub)
    return parser


def for_cli(message: str) -> str:
    """A message in the CLI's spelling. Messages name an argument the Python way with the option in
    brackets, ``results= (CLI: --results)``, and mark Python-only advice ``(from Python, ...)``; a CLI
    user reads ``--results`` and no Python."""
    message = re.sub(r"\b[A-Za-z_]\w*=\S* \(CLI: ([^()]*)\)", r"\1", message)
    return re.sub(r" ?\(from Python, [^()]*\)", "", message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.formatwarning

    def one_line(message: Any, category: type, *_: Any, **__: Any) -> str:
        return f"kalahash {args.command}: warning: {for_cli(str(message))}\n"

    warnings.formatwarning = one_line  # no source line under a warning
    try:
        return args.func(args)
    except (ValueError, OSError, MissingExtraError) as err:
        print(f"kalahash {args.command}: error: {for_cli(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = (
            args.interrupted(args)
            if hasattr(args, "interrupted")
            else "files are written whole or not at all"
        )
        print(f"\nkalahash {args.command}: interrupted: {kept}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown
