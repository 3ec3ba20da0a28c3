"""nbval_sanitize.cfg: what varies between executions reads the same after it, what matters does not."""

import re
from pathlib import Path

import pytest

nbval_plugin = pytest.importorskip("nbval.plugin")

CFG = Path(__file__).resolve().parent.parent / "nbval_sanitize.cfg"


def sanitize(text: str) -> str:
    """As nbval does: every (regex, replace) pair of the file, in order."""
    for regex, replace in nbval_plugin.get_sanitize_patterns(CFG.read_text()):
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("<Figure at 0x7f3a2c1d90>", "<Figure at 0x55d0aa01b2>"),
        (
            "commit 0123456789abcdef0123456789abcdef01234567+dirty",
            "commit fedcba9876543210fedcba9876543210fedcba98",
        ),
        ("finished_at 2025-03-01T12:00:01+0000", "finished_at 2026-11-28T09:41:59+0100"),
        ("runs/20250301-120001/02_main_results.ipynb", "runs/20261128-094159-2/02_main_results.ipynb"),
        ("took 12.5 s", "took 9 s"),
        ("torch 2.5.1+cpu, open_clip 3.1.0", "torch 2.6.0+cu124, open_clip 3.2.1"),
        ("data_root /work/main/data/cifar10", "data_root /home/ci/kalahash/data/cifar10"),
        ("device cpu (x86_64, 2 threads)", "device cpu (arm, 8 threads)"),
        ("mAP 0.45512 ± 0.00707", "mAP 0.45549 ± 0.00701"),
        ("std 4.807407e-17", "std 6.798700e-17"),
        ("   lb  0.182\n  fft  0.188", " lb 0.182\n fft 0.188"),
    ],
)
def test_what_varies_reads_the_same(first, second):
    assert sanitize(first) == sanitize(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("mAP 0.455 ± 0.007", "mAP 0.456 ± 0.007"),  # the third decimal counts
        ("16 bits, 1-shot", "32 bits, 1-shot"),
        ("results/results.csv", "results/other.csv"),  # project-relative paths are the project's
        ("method lb", "method fft"),
        ("trainable_params 2064", "trainable_params 2065"),
        ("shots 1, 4", "shots 1, 2"),
    ],
)
def test_what_matters_still_differs(first, second):
    assert sanitize(first) != sanitize(second)


NOTEBOOKS = sorted((CFG.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_spelled_as_nbval_reads_them(path):
    """nbval honours a marker only as a whole comment line ("# NBVAL_IGNORE_OUTPUT"); a reason after it
    on the same line silently turns the marker off, and the cell's volatile output is compared."""
    import json

    for cell in json.loads(path.read_text())["cells"]:
        for line in "".join(cell["source"]).splitlines():
            comment = line.strip().lstrip("#").strip()
            if line.strip().startswith("#") and comment.startswith("NBVAL"):
                assert comment in nbval_plugin.comment_markers, f"{path.name}: {line.strip()!r}"
