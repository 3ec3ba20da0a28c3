"""kalahash: knowledge-anchored low-resource adaptation of CLIP for deep hashing.

What lives where, by layer: a module imports only from layers before its own (or from inside its own
package); tests/test_layout.py holds the table and checks it, README's "How the pieces fit" has a row
for each module.

0. ``fileio`` (atomic writes), ``hamming`` (the Hamming ranking engine), ``machine`` (device, provenance),
   ``prompts`` (the class prompt);
1. ``metrics``, ``results_table``, ``data/`` (data sets, loaders, few-shot protocol, checks),
   ``history`` (run histories and flags), ``slip`` (SLIP models);
2. ``worlds/`` (the offline worlds ``shapes`` and ``objects10``, registered with data), ``backbones``,
   ``codestore`` (codes folders), ``loader`` (images to the device: workers, pinned memory, preprocessing
   on the device);
3. ``worlds.pretrain`` (the tiny CLIPs' pre-training), ``worlds.evaluation`` (zero-shot, probes),
   ``lora`` (adapters);
4. ``hashing/`` (heads, losses, KIDDO, the hasher and its factory);
5. ``cache`` (the frozen-prefix cache), ``checkpoints``, ``plots``, ``presets`` (hyperparameters: the
   released ones, what the worlds' sets borrow of them, and the release's defaults);
6. ``train``, ``embeddings``, ``cache_size`` (the cache's expected and actual size);
7. ``experiments/`` (runs, sweeps, notebook settings), ``search``;
8. ``studies``, ``efficiency``, ``reproduce``, ``views`` (what the notebooks run);
9. ``cli`` (and the notebooks).
"""

__version__ = "0.1.0"

# The worlds register themselves with the data-set registry on import; importing them here, after
# the rest, makes load_dataset("shapes") or ("objects10") work whatever the caller imported first.
from . import data, worlds

__all__ = ["__version__", "data", "worlds"]
