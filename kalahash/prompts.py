"""The text prompt that turns a class name into the text CLIP encodes (notes: Model).

One place for it: the backbones' class-text knowledge K (``Backbone.text_knowledge``), the hasher's
``template`` default (``kalahash.hashing.HPARAMS``), zero-shot evaluation and the vocabulary the
offline worlds' tiny CLIPs are pre-trained on (the prompt is one of their captions' templates) all
read it here.
"""

from __future__ import annotations

# CLIP's prompt for a class name, as the release uses it: "a photo of a cat."
CLASS_PROMPT = "a photo of a {}."
