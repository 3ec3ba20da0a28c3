"""``python -m kalahash.cli ...``: the ``kalahash`` command, as ``torchrun -m kalahash.cli encode`` starts it."""

import sys

from .main import main

sys.exit(main())
