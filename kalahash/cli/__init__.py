"""The ``kalahash`` command: a face over the Python API with the same names and defaults.

Each command parses its options, calls one function and prints: ``demo`` → ``run_demo``, ``run`` →
``run_experiment``, ``sweep`` → ``run_sweep``, ``eval`` → ``evaluate_checkpoint``, ``export`` →
``export_checkpoint``, ``convert-checkpoint`` → ``convert_checkpoint``, ``check-data`` →
``check_dataset`` (all in ``kalahash.experiments``),
``pretrain-tiny`` → ``kalahash.pretrain.pretrain_tiny``, ``reproduce`` → ``kalahash.reproduce.reproduce``;
``encode`` → ``encode_folder``, ``index`` → ``build_index``, ``search`` → ``search`` (in ``kalahash.search``).

Modules: ``options`` (options shared by commands), ``commands`` (runs and notebooks), ``search`` (own
images), ``main`` (the parser). ``python -m kalahash.cli`` runs it too (as torchrun needs).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
