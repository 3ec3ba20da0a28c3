"""A data set's integrity check from Python: afresh (:func:`check_dataset`, the twin of ``kalahash
check-data``) or remembered while its files stay the same (:func:`checked_data`, what runs use)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import atomic_write_text

if TYPE_CHECKING:
    from ..data import DataCheck


def checked_data(data: Any, cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """The integrity check of a data set, remembered while its lists and its images stay the same.

    Opening every file of NUS-WIDE or MS-COCO takes minutes, so a sweep reuses the stored verdict for
    the same lists (ids and labels: the fingerprint) as long as every file keeps its size and
    modification time (or the in-memory pixels their content): repairing or breaking an image makes the
    next run check again. ``kalahash check-data`` always checks afresh.
    """
    from ..data import check_data, content_stamp, data_fingerprint

    path = Path(cache_dir) / f"{data.name}-{data_fingerprint(data)[:20]}.json"
    stamp = content_stamp(data)  # before the check: a file changed during it is checked again next time
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("content_stamp") == stamp:
            return record
    check = check_data(data, progress=progress)
    record = {
        "ok": check.ok,
        "fingerprint": check.fingerprint,
        "content_stamp": stamp,
        "report": check.report(),
    }
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def check_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    download: bool = False,
    progress: bool = True,
    **options: Any,
) -> DataCheck:
    """Check a data set afresh: files, splits, duplicates, overlaps (CLI: ``kalahash check-data``).

    ``download`` fetches a missing data set where a download exists (cifar10); ``options`` go to the
    loader (the list files of ``listfile``). Unlike :func:`checked_data`, which runs remember, nothing
    is stored or reused.
    """
    from ..data import check_data, load_dataset

    data = load_dataset(name, data_root, seed=split_seed, download=download, **options)
    return check_data(data, progress=progress)
