"""The ``kalahash`` command: a face over the Python API with the same names and defaults.

Each command parses its options, calls one function and prints: ``demo`` → ``run_demo``, ``run`` →
``run_experiment``, ``sweep`` → ``run_sweep``, ``eval`` → ``evaluate_checkpoint``, ``export`` →
``export_checkpoint``, ``convert-checkpoint`` → ``convert_checkpoint``, ``check-data`` →
``check_dataset`` (all in ``kalahash.experiments``),
``pretrain-tiny`` → ``kalahash.worlds.pretrain.pretrain_tiny``, ``reproduce`` → ``kalahash.reproduce.reproduce``;
``encode`` → ``encode_folder``, ``index`` → ``build_index``, ``search`` → ``search`` (in ``kalahash.search``).

A user error (a ``ValueError`` or ``OSError`` of the Python twin) prints one line ``kalahash <command>:
error: ...`` and exits 2, as argparse's own errors do; a warning prints one line without its source; both
in the CLI's spelling (messages write ``results= (CLI: --results)`` and the CLI keeps ``--results``:
:func:`~kalahash.cli.main.for_cli`). Ctrl-C prints what was kept and how to go on, exit 130. Heavy
imports (torch, open_clip, pandas) happen inside the commands, so ``--help`` answers at once.

Modules: ``options`` (options shared by commands), ``commands`` (runs and notebooks), ``own_images``
(``encode``, ``index``, ``search``: your own images), ``launch`` (the launcher options, ``collect``),
``cache_size``, ``main`` (the parser). ``python -m kalahash.cli`` runs it too (as torchrun needs).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
