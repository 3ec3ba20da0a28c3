"""Small checks and message pieces shared by the loaders and the protocol."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np


def examples(items: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` items for an error message, and how many more there are."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def class_label(c: int, classnames: Sequence[str] | None) -> str:
    """``class 3 ('cat')`` when the name is known, else ``class 3``."""
    return (
        f"class {c} ({classnames[c]!r})" if classnames is not None and c < len(classnames) else f"class {c}"
    )


def check_count(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` as an int if it is a positive int (or None when allowed), else ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def safe_name(name: str) -> str:
    """``name`` reduced to characters safe in a file name (for split-file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"
