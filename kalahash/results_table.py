"""The results table: one CSV line per run, read with validation so that a damaged row is never trusted.

A row is damaged when its line was cut (no line end at the end of the file, fewer columns than the
header, an unclosed quote), when a number a result needs does not parse or is not finite, or when a
caller's ``check`` rejects it (``kalahash.experiments`` checks that its config_id is the id of the
config it records). Reading skips a damaged row with a :class:`DamagedRowWarning` naming file:line, so
its config runs again; appending moves it, byte for byte, to ``<table>.damaged`` beside the table and
says so. No intact line is ever rewritten: an append adds one line (and, for a new column, empty cells).

The low-level layer: :func:`read_table` and :func:`append_row` take any ``check``; the runs' table
(rows checked against their config, flags read) is ``kalahash.experiments.read_results`` /
``append_result``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fileio import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_RESULTS = Path("results/results.csv")
# Numbers a result row must have, finite; other numeric columns must be finite where they are filled.
REQUIRED_NUMBERS = ("map", "map_at")
NUMBERS = (
    "map_ties_index", "map_ties_average", "train_seconds", "eval_seconds", "trainable_params", "train_images",
    "train_batch_size", "shots", "bits", "seed", "epochs", "batch_size", "lr", "split_seed",
)  # fmt: skip
RowCheck = Callable[[Mapping[str, str]], "str | None"]


class DamagedRowWarning(UserWarning):
    """A row of a results table is damaged (cut, unparsable or inconsistent) and is not used."""


class RowNotWrittenWarning(UserWarning):
    """A finished run's row could not be appended to its results table; it was printed and kept elsewhere."""


@dataclass(frozen=True)
class DamagedRow:
    line: int
    reason: str
    text: str


@dataclass(frozen=True)
class _Scan:
    header: list[str]
    header_text: str
    rows: list[tuple[int, str, dict[str, str]]]  # (line number, raw line, cells) of intact rows
    damaged: list[DamagedRow]


class Locked:
    """An exclusive lock on ``<path>.lock`` so that concurrent writers take turns."""

    def __init__(self, path: Path):
        self.lock_path = path.with_name(path.name + ".lock")

    def __enter__(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.lock_path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _number_problem(cells: Mapping[str, str], name: str, required: bool) -> str | None:
    text = cells.get(name, "")
    if text == "":
        return f"{name} is empty" if required else None
    try:
        value = float(text)
    except ValueError:
        return f"{name} {text!r} is not a number"
    return None if math.isfinite(value) else f"{name} is {text}, not a finite number"


def _row_problem(header: list[str], values: list[str], check: RowCheck | None) -> str | None:
    if len(values) != len(header):
        return f"it has {len(values)} of the header's {len(header)} columns (the line was cut or edited)"
    cells = dict(zip(header, values, strict=True))
    for name in (*REQUIRED_NUMBERS, *NUMBERS, *(h for h in header if h.startswith("p_at_"))):
        if name in cells:
            problem = _number_problem(cells, name, name in REQUIRED_NUMBERS)
            if problem:
                return problem
    return check(cells) if check is not None else None


def _scan(path: Path, check: RowCheck | None) -> _Scan | None:
    """The table's header, intact rows and damaged rows; None for a missing or empty file."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    if not text.strip():
        return None
    lines = text.split("\n")
    cut = lines[-1] != ""  # every row we write ends with a line end: without one the last row was cut
    lines = lines if cut else lines[:-1]
    if len(lines) == 1 and cut:
        raise ValueError(
            f"results table {path} ends inside its header (line 1): the file was cut. Move it away (it "
            "holds no rows) and run again"
        )
    header = next(csv.reader([lines[0].rstrip("\r")]))
    rows, damaged = [], []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            values = next(csv.reader([raw.rstrip("\r")], strict=True))
        except csv.Error as err:
            damaged.append(
                DamagedRow(number, f"it does not parse as CSV ({err}; a quoted field was cut)", raw)
            )
            continue
        problem = _row_problem(header, values, check)
        if problem is None and cut and number == len(lines):
            problem = "the file ends inside it (no line end): it was cut"
        if problem is None:
            rows.append((number, raw, dict(zip(header, values, strict=True))))
        else:
            damaged.append(DamagedRow(number, problem, raw))
    return _Scan(header, lines[0], rows, damaged)


def _warn(path: Path, damaged: list[DamagedRow], what: str) -> None:
    for row in damaged:
        warnings.warn(f"{path}:{row.line}: damaged row {what}: {row.reason}", DamagedRowWarning, stacklevel=3)


def read_table(
    path: str | os.PathLike = DEFAULT_RESULTS, check: RowCheck | None = None, text: Iterable[str] = ()
) -> pd.DataFrame:
    """The intact rows of a results table (empty if there is none); damaged rows are skipped with a
    :class:`DamagedRowWarning` naming file:line. ``check(cells)`` returns why a row is damaged, or None.

    Columns named in ``text`` stay strings: left to pandas, a column holding only ``true`` reads as
    booleans and a commit ``1234e56`` as a float, so rows read back would not equal the rows written."""
    import pandas as pd

    path = Path(path)
    scan = _scan(path, check)
    if scan is None:
        return pd.DataFrame()
    _warn(path, scan.damaged, "skipped (its config runs again)")
    body = "\n".join([scan.header_text, *(raw for _, raw, _ in scan.rows)]) + "\n"
    dtype = {name: str for name in text if name in scan.header}
    return pd.read_csv(io.StringIO(body), keep_default_na=False, na_values=[""], dtype=dtype)


def _cell(name: str, value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        raise ValueError(f"results column {name!r} holds a line break ({value!r}): one row must be one line")
    return value


def _line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def _set_aside(path: Path, damaged: list[DamagedRow]) -> None:
    """Append damaged rows, verbatim, to ``<path>.damaged`` with where they came from."""
    aside = path.with_name(path.name + ".damaged")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    notes = "".join(
        f"# {path.name} line {d.line}, set aside {stamp}: {d.reason}\n{d.text}\n" for d in damaged
    )
    previous = aside.read_text(encoding="utf-8") if aside.exists() else ""
    atomic_write_text(aside, previous + notes)


def append_row(
    row: Mapping[str, Any], path: str | os.PathLike = DEFAULT_RESULTS, check: RowCheck | None = None
) -> None:
    """Append one row atomically; two processes appending at once both land, the file stays whole.

    Intact lines stay as they are (a new column only adds empty cells to them); damaged rows move to
    ``<path>.damaged`` first, with a :class:`DamagedRowWarning` each.
    """
    path = Path(path)
    with Locked(path):
        scan = _scan(path, check)
        header = list(scan.header) if scan else []
        new = [k for k in row if k not in header]
        header += new
        lines = [] if scan is None else [raw.rstrip("\r") + "," * len(new) for _, raw, _ in scan.rows]
        if scan is not None and scan.damaged:
            _set_aside(path, scan.damaged)
            _warn(path, scan.damaged, f"moved to {path.name}.damaged")
        head = _line(header) if (scan is None or new) else scan.header_text.rstrip("\r") + "\n"
        body = "".join(line + "\n" for line in lines)
        atomic_write_text(path, head + body + _line([_cell(k, row.get(k, "")) for k in header]))


def check_writable(folder: str | os.PathLike, what: str, option: str) -> None:
    """Refuse a folder that cannot be written before a run spends its time: make it, then create and
    remove a file in it. ``what`` names its use and ``option`` the argument that chooses it, for the
    message (e.g. "results table results/results.csv", "results= (CLI: --results)")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kalahash-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = (
            f"{str(blocked)!r} is a file, not a folder"
            if blocked is not None
            else f"folder {str(folder)!r} is not writable ({type(err).__name__}: {err.strerror or err})"
        )
        raise PermissionError(
            f"the {what} cannot be written: {why}; make it writable or choose another with {option}"
        ) from err


def keep_unwritten_row(row: Mapping[str, Any], path: str | os.PathLike, error: OSError) -> None:
    """The row of a run whose results table could not be written: saved as a one-row table in the
    working directory (else the temporary folder) and shown in a :class:`RowNotWrittenWarning`, so the
    run is not lost."""
    text = _line(list(row)) + _line([_cell(k, v) for k, v in row.items()])
    name = f"kalahash-unsaved-row-{row.get('config_id', 'run')}.csv"
    saved = None
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            saved = atomic_write_text(folder / name, text)
            break
        except OSError:
            continue
    where = f"saved as a one-row table in {saved}" if saved else "it could not be saved anywhere either"
    warnings.warn(
        f"could not append this run's row to {path} ({type(error).__name__}: {error}); {where}. The row:\n"
        f"{text.rstrip()}",
        RowNotWrittenWarning,
        stacklevel=3,
    )


def find_row(config_id: str, table: pd.DataFrame) -> dict[str, Any] | None:
    """The last row of ``table`` (as :func:`read_table` gives it) with this ``config_id``, or None."""
    if table.empty or "config_id" not in table:
        return None
    hits = table[table["config_id"] == config_id]
    return None if hits.empty else hits.iloc[-1].to_dict()


def _parse(text: str, hint: Any) -> Any:
    """A CSV cell as the value of a field with type ``hint`` (``str | None``, ``int``, a Mapping ...)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if text == "" and type(None) in options:
        return None
    kind = next((o for o in options if o is not type(None)), str)
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return text == "True"
    if origin is int:
        number = float(text)  # tables once rewritten by pandas may hold 5 as "5.0"
        return int(number) if number.is_integer() else number
    if origin is float:
        return float(text)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return json.dumps(json.loads(text), sort_keys=True)
    return text


def recorded_fields(cells: Mapping[str, str], config_class: type) -> dict[str, Any] | None:
    """The fields of dataclass ``config_class`` that a row records, typed (mappings as sorted JSON, as
    rows hold them). A field the row lacks, or leaves empty, predates the row's field set: it takes its
    default; None when such a field has no default (the row cannot be told). A cell that does not parse
    raises ValueError naming the field."""
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in fields(config_class):
        if cells.get(f.name, "") == "" and f.default is not MISSING:
            out[f.name] = f.default
            continue
        if f.name not in cells:
            return None
        try:
            out[f.name] = _parse(cells[f.name], hints[f.name])
        except ValueError:
            raise ValueError(f"{f.name} {cells[f.name]!r} does not parse as {hints[f.name]}") from None
    return out
