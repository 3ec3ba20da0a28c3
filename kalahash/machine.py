"""Where a run runs and what it ran with: the device it asks for, and the provenance every result row
and figure carries (code version, library versions, machine)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from . import __version__


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, or CUDA when there is one, else the CPU. A CUDA device the machine does not
    have is refused here, before it surfaces as a misleading error (e.g. about a weights file)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from err
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {str(device)!r}: this machine has no CUDA device (torch.cuda.is_available() is "
                "False): use device='cpu' (CLI: --device cpu) or leave it unset"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(device)!r}: this machine has {count} CUDA device(s), cuda:0..{count - 1}"
            )
    return resolved


# What a run writes, not what makes its numbers: changes here do not make the tree "dirty".
_OUTPUTS = ("figures",)


def git_commit() -> str:
    """The commit of the code that runs, with ``+dirty`` when tracked files other than the outputs
    (:data:`_OUTPUTS`: figures a run of the notebooks rewrites) differ from it; "unknown" outside git."""
    here = Path(__file__).resolve().parent
    outputs = [f":(exclude,top){name}" for name in _OUTPUTS]
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", ":/", *outputs],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """Where a number came from: code version, library versions, machine."""
    import open_clip

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "git_commit": git_commit(),
        "kalahash_version": __version__,
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
        "python_version": platform.python_version(),
        "device": device_name,
    }
