"""Checkpoint files: only a hasher's trained parts, plus what identifies the backbone they belong to.

A checkpoint is a ``torch.save`` zip whose payload holds only tensors and plain values (numbers,
strings, None, lists, dicts): :func:`plain_values` makes it so at save time, and :func:`load_checkpoint`
reads it with torch's weights-only unpickler, so nothing a file says is run, whatever it holds. Files
of an older kalahash (format 1, which could hold other objects) that this reader refuses are rewritten
once, knowingly, by :func:`convert_checkpoint` (CLI: ``kalahash convert-checkpoint --trust FILE``).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import shlex
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .fileio import atomic_write

CHECKPOINT_FORMAT = "kalahash-checkpoint"
# 2: every value a tensor or a plain value, readable by torch's weights-only unpickler (1 could hold
# other objects, e.g. torch's version string; convert_checkpoint rewrites such files).
CHECKPOINT_VERSION = 2
EXPORT_FORMAT = "kalahash-export"
_SCANNED_BYTES = 64 << 20  # a refused file's pickle is read this far to say what it would import
# What a format-1 checkpoint could hold besides plain values (torch's version string in the run's row;
# numpy scalars and arrays; paths): a refused file that imports nothing else is offered the conversion.
_FORMAT_1_IMPORTS = frozenset(
    {
        "torch.torch_version.TorchVersion",
        *(f"numpy.{core}.multiarray.{n}" for core in ("core", "_core") for n in ("scalar", "_reconstruct")),
        "numpy.dtype",
        "numpy.ndarray",
        *(f"pathlib.{kind}" for kind in ("Path", "PosixPath", "WindowsPath")),
    }
)


class UnsafeCheckpointError(ValueError):
    """A file the weights-only reader refuses: loading it would import objects (and could run code)."""


class UntrustedCheckpointError(ValueError):
    """:func:`convert_checkpoint` would have to unpickle a file in full, and was not told to trust it;
    ``imports``: the objects the file would import that the safe reader refuses."""

    def __init__(self, message: str, imports: list[str]) -> None:
        super().__init__(message)
        self.imports = imports


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """What :func:`convert_checkpoint` did: the checkpoint in the safe format, whether it wrote it (False:
    the file was safe already, nothing written) and the objects the old file imported."""

    path: Path
    converted: bool
    imports: list[str]


def plain_values(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with tensors (detached, on the CPU) and plain Python values only: numpy scalars and arrays,
    str/int/float subclasses (torch's version string), tuples and paths become numbers, strings and
    lists; dicts keep str or int keys (an optimizer's state). Any other object is a TypeError naming
    where it sits, so a checkpoint never holds what the weights-only reader refuses."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)  # an exact str, also of a subclass such as torch's version string
    if isinstance(value, os.PathLike):
        return plain_values(os.fspath(value), where)
    if isinstance(value, np.ndarray):
        return plain_values(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(f"{where} has a key {key!r} ({type(key).__name__}); keys must be str or int")
            out[plain_values(key)] = plain_values(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [plain_values(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only tensors, "
        "numbers, strings, None, lists and dicts"
    )


def save_checkpoint(path: str | os.PathLike, hasher: nn.Module, **extra: Any) -> Path:
    """Save only the trained parts plus what identifies the backbone (atomic); every value is made plain
    (:func:`plain_values`) first, so the file loads with the weights-only reader."""
    backbone = hasher.backbone
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": hasher.method,
        "bits": hasher.bits,
        "classnames": list(hasher.classnames),
        "hparams": dict(hasher.hparams),
        "backbone": {
            "name": backbone.name,
            "pretrained": backbone.pretrained,
            "fingerprint": backbone.fingerprint,
        },
        "trained_state": hasher.trained_state(),
        **extra,
    }
    payload = plain_values(payload)
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with torch's weights-only unpickler: a file
    that would import anything (and so could run code) is refused (:class:`UnsafeCheckpointError`) before
    any of it runs, with the conversion to run for an older kalahash's checkpoint that you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: ours is below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the reader refused an import: nothing of the file ran
        raise _refusal(path, err) from err
    except Exception as err:  # re-raised with what to do; the cause stays chained
        raise _unreadable(path, err) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a kalahash checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer kalahash (format {version!r}); upgrade")
    _check_fields(payload, path)
    return payload


# What restoring a hasher reads, and the type it must have: a file with anything else is refused here.
_FIELDS = {
    "method": str,
    "bits": int,
    "classnames": list,
    "hparams": dict,
    "backbone": dict,
    "trained_state": dict,
}


def _check_fields(payload: dict[str, Any], path: Path) -> None:
    wrong = [k for k, kind in _FIELDS.items() if not isinstance(payload.get(k), kind)]
    backbone = payload.get("backbone")
    if isinstance(backbone, dict) and not all(
        isinstance(backbone.get(k), str) for k in ("name", "fingerprint")
    ):
        wrong.append("backbone")
    state = payload.get("trained_state")
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        wrong.append("trained_state")
    if wrong:
        raise ValueError(
            f"{str(path)!r} has a kalahash header but not a checkpoint's fields ({', '.join(wrong)} missing or "
            "of the wrong type): it is damaged or not written by kalahash"
        )


def _pickle_of(path: Path) -> bytes:
    """The pickle bytes of a ``torch.save`` zip (its ``data.pkl``) or of a plain pickle file, unread."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not names:
                return b""
            with archive.open(names[0]) as member:
                return member.read(_SCANNED_BYTES)
    with open(path, "rb") as f:
        return f.read(_SCANNED_BYTES)


@dataclass(frozen=True)
class PickleFacts:
    """What disassembling a pickle tells without unpickling it: the objects it would import, by name;
    its string constants; and whether every import was named and the pickle read to its end."""

    imports: list[str]
    strings: set[str]
    complete: bool

    @property
    def refused(self) -> list[str]:
        """The imports that torch's weights-only reader does not load (all, if torch cannot say)."""
        try:
            from torch._weights_only_unpickler import _get_allowed_globals

            allowed = set(_get_allowed_globals())
        except ImportError:
            allowed = set()
        return [name for name in self.imports if name not in allowed]


def pickle_facts(path: str | os.PathLike) -> PickleFacts:
    """The :class:`PickleFacts` of a pickle file or of a ``torch.save`` zip's pickle, read with
    ``pickletools`` (which only disassembles), never by unpickling: for messages, not for trust."""
    imports: list[str] = []
    strings: set[str] = set()
    pushed: list[Any] = []  # what the last opcodes pushed: STACK_GLOBAL takes the top two strings
    memo: dict[int, Any] = {}
    complete = True
    try:
        for op, arg, _ in pickletools.genops(_pickle_of(Path(path))):
            if op.name in ("GLOBAL", "INST"):
                imports.append(str(arg).replace(" ", "."))
                pushed.append(None)
            elif op.name == "STACK_GLOBAL":
                if len(pushed) >= 2 and all(isinstance(s, str) for s in pushed[-2:]):
                    imports.append(f"{pushed[-2]}.{pushed[-1]}")
                else:
                    complete = False
                pushed.append(None)
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif isinstance(arg, str):  # a string constant
                strings.add(arg)
                pushed.append(arg)
            else:
                pushed.append(None)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):  # not a pickle to its end
        complete = False
    return PickleFacts(list(dict.fromkeys(imports)), strings, complete)


def _unreadable(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {str(path)!r} cannot be read: it is corrupt or truncated, or not a kalahash checkpoint "
        f"({type(err).__name__}); if it is yours, delete it and train again"
    )


def _refusal(path: Path, err: Exception) -> ValueError:
    """Why the weights-only reader refused ``path``: the objects it would import, and for a checkpoint
    of an older kalahash (a header, nothing imported but what format 1 held) the conversion to run."""
    facts = pickle_facts(path)
    refused = facts.refused
    if not refused:  # no import to blame: a damaged file, or not a pickle torch reads
        return _unreadable(path, err)
    shown = ", ".join(refused[:6]) + (", ..." if len(refused) > 6 else "")
    more = "" if facts.complete else ", and what it names indirectly"
    message = (
        f"checkpoint {str(path)!r} is not a kalahash checkpoint that the safe reader accepts (loading it would "
        f"import {shown}{more}). kalahash reads checkpoints with torch's weights-only unpickler and runs "
        "nothing a file holds."
    )
    old_format = facts.complete and set(refused) <= _FORMAT_1_IMPORTS
    if CHECKPOINT_FORMAT in facts.strings and not old_format:
        message += (
            " It carries a kalahash header, but no kalahash checkpoint imports what it does: do not unpickle "
            "it (nor convert it) unless you know what it holds."
        )
    elif CHECKPOINT_FORMAT in facts.strings:
        message += (
            " It looks like a checkpoint of an older kalahash: if you trust where it comes from (you wrote it, "
            "or someone you trust did), convert it once with "
            f"`kalahash convert-checkpoint --trust {shlex.quote(str(path))}` (Python: "
            "kalahash.experiments.convert_checkpoint(path, trust=True)); that unpickles it in full, which runs "
            "any code it holds, and rewrites it in the safe format."
        )
    return UnsafeCheckpointError(message)


def convert_checkpoint(
    path: str | os.PathLike,
    *,
    trust: bool = False,
    output: str | os.PathLike | None = None,
    force: bool = False,
) -> ConvertedCheckpoint:
    """Rewrite a checkpoint of an older kalahash in the safe format (CLI: ``kalahash convert-checkpoint``).

    A file the weights-only reader accepts already is left as it is (``converted=False``). Any other is
    unpickled in full with ``torch.load(weights_only=False)``, which runs whatever code the file holds:
    only with ``trust=True``, for a file you trust (else :class:`UntrustedCheckpointError`). Its values are
    made plain (:func:`plain_values`), its version set to the current one, and it is written atomically
    to ``output`` (default: ``path`` itself); an existing other ``output`` is replaced only with ``force``
    (else FileExistsError, before anything is unpickled).
    """
    path = Path(path)
    out = Path(output) if output is not None else path
    try:
        load_checkpoint(path)
        return ConvertedCheckpoint(path, False, [])
    except UnsafeCheckpointError:
        pass
    imports = pickle_facts(path).refused
    if not trust:
        raise UntrustedCheckpointError(
            f"converting {str(path)!r} unpickles it in full, which runs any code it holds (it would import "
            f"{', '.join(imports) or 'objects the safe reader refuses'}): pass trust=True only for a file you "
            "trust",
            imports,
        )
    if out.exists() and out.resolve() != path.resolve() and not force:
        raise FileExistsError(f"{str(out)!r} exists: pass force=True to replace it, or another output")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)  # the unsafe read, as asked
    except Exception as err:  # re-raised with the file's name; the cause stays chained
        raise ValueError(f"{str(path)!r} cannot be unpickled ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a kalahash checkpoint (no '{CHECKPOINT_FORMAT}' header); nothing written"
        )
    if not isinstance(payload.get("version"), int) or payload["version"] > CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer kalahash (format {payload.get('version')!r}); upgrade"
        )
    try:
        payload = plain_values({**payload, "version": CHECKPOINT_VERSION})
    except TypeError as err:
        raise ValueError(
            f"{str(path)!r} holds what a kalahash checkpoint never does ({err}); nothing written"
        ) from err
    atomic_write(out, lambda tmp: torch.save(payload, tmp))
    load_checkpoint(out)  # the converted file must pass the safe reader
    return ConvertedCheckpoint(out, True, imports)


def check_backbone_matches(payload: dict[str, Any], backbone: Any) -> None:
    """Refuse trained parts meant for other backbone weights: they would load and score silently wrong."""
    want = payload["backbone"]
    if (want["name"], want["fingerprint"]) != (backbone.name, backbone.fingerprint):
        raise ValueError(
            f"checkpoint was trained on backbone {want['name']!r} (pretrained {want['pretrained']!r}, weights "
            f"fingerprint {want['fingerprint']}), but the given backbone is {backbone.name!r} (pretrained "
            f"{backbone.pretrained!r}, fingerprint {backbone.fingerprint}). Load the same backbone weights."
        )


def restore_hasher(payload: dict[str, Any], backbone: Any) -> nn.Module:
    """Rebuild a hasher from a checkpoint on a matching backbone."""
    from .hashing import build_hasher

    check_backbone_matches(payload, backbone)
    hasher = build_hasher(
        payload["method"], backbone, payload["classnames"], payload["bits"], **payload["hparams"]
    )
    hasher.load_trained_state(payload["trained_state"])
    return hasher


def hasher_from_checkpoint(
    payload: dict[str, Any], pretrained: str | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """A checkpoint's hasher on its own backbone: loaded with ``pretrained`` or the run's weights (CPU
    when ``device`` is None) after seeding torch with the run's seed, as ``run_experiment`` did, so that
    a random-init backbone comes back with the same weights (:func:`restore_hasher` checks them)."""
    from .backbones import load_backbone

    experiment = payload.get("experiment", {})
    torch.manual_seed(experiment.get("seed", 0))
    name = payload["backbone"]["name"]
    backbone = load_backbone(name, pretrained or experiment.get("pretrained"), device=device)
    return restore_hasher(payload, backbone)


def data_identity(name: str | None, classnames: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint records of its training data (key ``"data"``): name, class names, label width."""
    return {"dataset": name, "classnames": list(classnames), "label_width": len(classnames)}


def _describe(identity: Mapping[str, Any]) -> str:
    names = list(identity["classnames"])
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    name = repr(identity["dataset"]) if identity.get("dataset") else "a data set"
    return f"{name} ({len(names)} classes: {shown}; labels {identity['label_width']} wide)"


def check_same_data(
    payload: dict[str, Any], given: Mapping[str, Any], path: str | os.PathLike, use: str
) -> None:
    """Refuse data whose classes or label width are not those the checkpoint was trained on: its codes
    would be scored, or its training continued, against labels they do not mean. Checkpoints older than
    the ``"data"`` record are checked by their class names (and their run's data set name, if any)."""
    stored = payload.get("data") or data_identity(
        payload.get("experiment", {}).get("dataset"), payload["classnames"]
    )
    if (list(stored["classnames"]), stored["label_width"]) == (
        list(given["classnames"]),
        given["label_width"],
    ):
        return
    where = f" (dataset={stored['dataset']!r} and its data_root)" if stored.get("dataset") else ""
    raise ValueError(
        f"checkpoint {str(path)!r} was trained on {_describe(stored)}, but the data given is "
        f"{_describe(given)}: {use} it on the data it was trained on{where}"
    )


def check_same_run(payload: dict[str, Any], experiment: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint under another configuration (shots, method, data, seed ...): the
    run would silently continue as something else. A checkpoint written outside a run is not checked."""
    stored = payload.get("experiment")
    if stored is None:
        return
    experiment = plain_values(dict(experiment), "experiment")  # as the checkpoint stored it
    changed = sorted(k for k in {*stored, *experiment} if stored.get(k) != experiment.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {stored.get(k)!r} there, {experiment.get(k)!r} now" for k in changed)
        raise ValueError(
            f"checkpoint {str(path)!r} is of another configuration ({diffs}): resume with its settings, "
            "or start a new run (another checkpoint file, or without resume)"
        )


def export_model(hasher: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``hasher`` as a CLIP weights file with its hash head (atomic), for use without kalahash's
    checkpoints: ``"state_dict"`` holds the whole CLIP model in open_clip's layout with plain LoRA folded
    into the image tower (loadable by open_clip and by ``load_backbone(name, pretrained=path)``);
    ``"kalahash"`` holds the backbone name, classes, bits and the head, which :func:`load_exported`
    puts back on top. CLoRA cannot be folded: ValueError, nothing written."""
    from .towers import open_clip_state_dict

    merged = hasher.merged()
    backbone = hasher.backbone
    whole = backbone.model.state_dict()
    state = {k: v.detach().cpu().clone() for k, v in whole.items() if not k.startswith("visual.")}
    state.update({f"visual.{k}": v for k, v in open_clip_state_dict(merged.visual).items()})
    meta = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "backbone": backbone.name,
        "base_pretrained": backbone.pretrained,
        "method": hasher.method,
        "bits": hasher.bits,
        "classnames": list(hasher.classnames),
        "loss": hasher.hparams["loss"],
        "batch_norm": hasher.hparams["batch_norm"],
        "head": {k: v.detach().cpu().clone() for k, v in merged.head.state_dict().items()},
    }
    path = Path(path)
    payload = {"state_dict": state, "kalahash": plain_values(meta, "kalahash")}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_exported(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """The hasher of a file written by :func:`export_model`: its CLIP weights as a frozen backbone and
    its hash head on top (method ``"lb"``, in eval mode); it gives the codes of the exported model."""
    from .backbones import load_backbone
    from .hashing import build_hasher

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    try:  # weights only, as open_clip reads it: a kalahash checkpoint or other pickle fails here
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file gets the message below
        payload = None
    meta = payload.get("kalahash") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a model written by `kalahash export` (no '{EXPORT_FORMAT}' record)"
        )
    backbone = load_backbone(meta["backbone"], path, device=device)
    hasher = build_hasher(
        "lb", backbone, meta["classnames"], meta["bits"], loss=meta["loss"], batch_norm=meta["batch_norm"]
    )
    hasher.head.load_state_dict(meta["head"])
    return hasher.eval()
