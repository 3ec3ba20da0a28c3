"""``encode``, ``index`` and ``search``: hash a folder of images with a trained checkpoint and search it
(:mod:`kalahash.search`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import positive_int


def cmd_encode(args: argparse.Namespace) -> int:
    import os

    import torch.distributed as dist

    from ..search import encode_folder, init_distributed

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
        if report.index_removed:
            print(
                f"the codes changed: removed {report.out / 'index.faiss'}, built from the earlier codes; "
                f"`kalahash index --codes {report.out}` builds it again (`search` is exact without it)"
            )
    return 0


def interrupted_encode(args: argparse.Namespace) -> str:
    """What a Ctrl-C in ``encode`` leaves, and how to go on."""
    return (
        f"every complete chunk is kept in {args.out}/parts: the same command goes on from there (and "
        "writes the searchable codes when it finishes)"
    )


def cmd_index(args: argparse.Namespace) -> int:
    from ..search import build_index

    codes = args.codes or args.old_codes
    if codes is None:
        raise ValueError("--codes FOLDER is required: a codes folder written by `kalahash encode`")
    path = build_index(codes, args.kind, neighbors=args.neighbors)
    print(f"wrote {path} ({args.kind})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..search import search, tie_note, write_html

    hits = search(
        args.codes,
        args.query,
        args.k,
        checkpoint=args.checkpoint,
        engine=args.engine,
        rerank=args.rerank,
        pretrained=args.pretrained,
        device=args.device,
    )
    note = tie_note(hits, args.rerank)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2))
    else:
        print(f"{'rank':>4}  {'distance':>8}  {'tied':>5}  path")
        for hit in hits:
            same = "  (the query's image)" if hit.identical else ""
            print(f"{hit.rank:>4}  {hit.distance:>8}  {hit.tied:>5}  {hit.path}{same}")
    if note:
        print(note, file=sys.stderr if args.json else sys.stdout)
    if args.html:
        print(
            f"thumbnails: {write_html(hits, args.html, args.query, args.rerank)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def add_search_commands(sub: Any) -> None:
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
        "--batch-size", type=positive_int, default=64, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=1024,
        help="images per saved chunk: the unit of resuming (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-decoding worker processes (default: the spare cores, at most 8, on CUDA; 0 on the CPU)",
    )
    p.add_argument("--pretrained", default=None, help="backbone weights, if not the checkpoint's")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode, interrupted=interrupted_encode)

    p = sub.add_parser("index", help="build a faiss binary index beside a codes folder")
    p.add_argument("--codes", metavar="FOLDER", help="a codes folder written by `kalahash encode`; required")
    p.add_argument("old_codes", nargs="?", help=argparse.SUPPRESS)  # the old spelling: index CODES
    p.add_argument(
        "--kind",
        default="flat",
        choices=("flat", "hnsw"),
        help="flat: exact; hnsw: approximate, for very large sets (default: %(default)s)",
    )
    p.add_argument(
        "--neighbors", type=positive_int, default=32, help="HNSW links per node (default: %(default)s)"
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the images of a codes folder nearest to a query image")
    p.add_argument("--codes", required=True, help="a codes folder written by `kalahash encode`")
    p.add_argument("--query", required=True, help="query image file")
    p.add_argument("--k", type=positive_int, default=20, help="number of hits (default: %(default)s)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {rank, distance, path, tied, identical} (tied: images at that distance)",
    )
    p.add_argument(
        "--rerank",
        action="store_true",
        help="order images at equal distance by the query's real-valued code (asymmetric distance) "
        "instead of collection order; the query's own image still comes first",
    )
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
