"""``cache-size``: how big the frozen-prefix cache gets for a backbone and a data set, and what a cache
folder holds."""

from __future__ import annotations

import argparse
from typing import Any

from .options import print_table


def cmd_cache_size(args: argparse.Namespace) -> int:
    from ..cache_size import cache_contents, expected_sizes, human_bytes

    table = expected_sizes(args.backbone, args.dataset, args.data_root)
    sizes = [c for c in table.columns if c.startswith(("adapted", "frozen"))]
    print("expected cache of query + database (adapted: tokens before the last block; frozen: pooled)")
    print_table(table.assign(**{c: table[c].map(human_bytes) for c in sizes}))
    if args.cache is not None:
        entries = cache_contents(args.cache)
        print(f"\n{args.cache}: {len(entries)} entries, {human_bytes(entries['bytes'].sum())} on disk")
        if len(entries):
            print_table(entries.assign(bytes=entries["bytes"].map(human_bytes)))
    return 0


def add_cache_size_command(sub: Any) -> None:
    p = sub.add_parser(
        "cache-size",
        help="expected size of the frozen-prefix cache per backbone and data set (and what --cache holds)",
    )
    p.add_argument(
        "--backbone", nargs="+", default=["ViT-B-32"], help="backbone names (default: %(default)s)"
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        default=["cifar10"],
        help="data sets: cifar10, nuswide, coco use the paper's protocol sizes; others are loaded and "
        "counted (default: %(default)s)",
    )
    p.add_argument("--data-root", default=None, help="count the images of the data set in this folder")
    p.add_argument("--cache", default=None, help="a cache folder: list its entries and their size on disk")
    p.set_defaults(func=cmd_cache_size)
