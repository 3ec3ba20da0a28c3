"""Files a user receives from someone else are read without running anything they hold: checkpoints
(eval, run --resume, encode, search, export), a codes folder naming a checkpoint, weights files
(--pretrained), exported models, image files; and the knowing conversion of an older kalahash's
checkpoint."""

from __future__ import annotations

import json
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
from helpers import cli_run_args, fresh_tiny
from PIL import EpsImagePlugin, Image

from kalahash.backbones import load_backbone
from kalahash.checkpoints import (
    CHECKPOINT_FORMAT,
    UnsafeCheckpointError,
    UntrustedCheckpointError,
    convert_checkpoint,
    load_checkpoint,
    load_exported,
    plain_values,
    save_checkpoint,
)
from kalahash.cli import main
from kalahash.codestore import CODES_FORMAT, codes_digest
from kalahash.data import ImageList, RetrievalData, check_data
from kalahash.hashing import build_hasher
from kalahash.search import Hit, write_html


class _Touch:
    """Unpickled in full, this creates ``marker``: the stand-in for any code a crafted file runs."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _crafted(tmp_path, kind: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A crafted checkpoint ``x.ckpt`` (a plain pickle, or a torch.save zip with a kalahash header) and
    the marker file that unpickling it would create."""
    marker = tmp_path / "marker"
    path = tmp_path / "x.ckpt"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Touch(marker)))
    else:
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": _Touch(marker)}, path)
    return path, marker


def _codes_folder(folder: pathlib.Path, checkpoint: pathlib.Path) -> pathlib.Path:
    """An empty codes folder, as someone could share it, whose meta.json names ``checkpoint``."""
    folder.mkdir()
    codes = np.zeros((0, 2), np.uint8)
    np.save(folder / "codes.npy", codes)
    (folder / "paths.txt").write_text("")
    meta = {
        "format": CODES_FORMAT, "version": 1, "model": {"bits": 16, "fingerprint": "f"}, "count": 0,
        "digest": codes_digest(codes, []), "checkpoint": str(checkpoint), "images": str(folder),
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


COMMANDS = {
    "eval": lambda ckpt, tmp: ["eval", "--checkpoint", ckpt, "--quiet"],
    "resume": lambda ckpt, tmp: cli_run_args(tmp, "--checkpoint", ckpt, "--resume", epochs=1),
    "encode": lambda ckpt, tmp: ["encode", "--checkpoint", ckpt, "--images", str(tmp), "--out", str(tmp / "c")],
    "search": lambda ckpt, tmp: [
        "search", "--codes", str(_codes_folder(tmp / "codes", tmp / "none.ckpt")), "--query", str(tmp / "q.png"),
        "--checkpoint", ckpt,
    ],
    "search-shared-codes": lambda ckpt, tmp: [
        "search", "--codes", str(_codes_folder(tmp / "codes", pathlib.Path(ckpt))), "--query", str(tmp / "q.png"),
    ],
    "export": lambda ckpt, tmp: ["export", "--checkpoint", ckpt, "--out", str(tmp / "out.pt")],
}  # fmt: skip


@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_crafted_checkpoint_runs_nothing(tmp_path, capsys, monkeypatch, kind, command):
    monkeypatch.chdir(tmp_path)
    path, marker = _crafted(tmp_path, kind)
    assert main(COMMANDS[command](str(path), tmp_path)) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "unpickling the crafted checkpoint ran its code"
    assert f"checkpoint {str(path)!r} is not a kalahash checkpoint" in err
    assert "convert-checkpoint" not in err  # not offered for a file that imports what no checkpoint does
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "out.pt").exists()


def test_converting_a_crafted_checkpoint_needs_trust(tmp_path, capsys):
    path, marker = _crafted(tmp_path, "torch-zip")
    assert main(["convert-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "runs any code the file holds" in err and f"--trust {path}" in err and "pathlib.Path" in err
    assert not marker.exists()
    with pytest.raises(UntrustedCheckpointError, match="pass trust=True only for a file you trust"):
        convert_checkpoint(path)
    assert not marker.exists()


@pytest.fixture
def format_1(tmp_path):
    """A checkpoint as kalahash wrote it before the safe format: torch's version string (a TorchVersion
    object) in the run's row, a numpy float in the history and a tuple in its hparams."""
    hasher = build_hasher("lb", fresh_tiny(0), ["cat", "dog"], 16)
    save_checkpoint(tmp_path / "new.ckpt", hasher, epoch=1, history=[{"epoch": 1, "loss": 0.5}])
    payload = torch.load(tmp_path / "new.ckpt", weights_only=True)
    payload.update(version=1, result_row={"torch_version": torch.__version__, "map": 0.25})
    payload["history"][0]["loss"] = np.float64(0.5)
    payload["hparams"]["targets"] = tuple(payload["hparams"]["targets"])
    torch.save(payload, tmp_path / "old.ckpt")
    return tmp_path / "old.ckpt", hasher


def test_an_older_checkpoint_is_refused_with_the_conversion_to_run(format_1, capsys):
    old, _ = format_1
    with pytest.raises(
        UnsafeCheckpointError, match=r"would import numpy.*torch\.torch_version\.TorchVersion\)"
    ):
        load_checkpoint(old)
    assert main(["eval", "--checkpoint", str(old)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {str(old)!r} is not a kalahash checkpoint that the safe reader accepts" in err
    assert f"`kalahash convert-checkpoint --trust {old}`" in err and "runs any code it holds" in err


def test_convert_checkpoint_rewrites_it_safely(format_1, tmp_path, capsys):
    old, hasher = format_1
    (tmp_path / "taken.ckpt").write_bytes(b"someone's file")
    assert main(["convert-checkpoint", str(old), "--trust", "--out", str(tmp_path / "taken.ckpt")]) == 2
    assert (
        "--force" in capsys.readouterr().err and (tmp_path / "taken.ckpt").read_bytes() == b"someone's file"
    )
    assert main(["convert-checkpoint", str(old), "--trust"]) == 0  # in place
    imported = "(it imported numpy._core.multiarray.scalar, numpy.dtype, torch.torch_version.TorchVersion)"
    assert imported in capsys.readouterr().out
    payload = load_checkpoint(old)
    assert payload["version"] == 2 and payload["result_row"] == {
        "torch_version": str(torch.__version__),
        "map": 0.25,
    }
    assert (
        type(payload["result_row"]["torch_version"]) is str and type(payload["history"][0]["loss"]) is float
    )
    assert payload["hparams"]["targets"] == list(hasher.hparams["targets"])
    for key, value in hasher.trained_state().items():
        torch.testing.assert_close(payload["trained_state"][key], value.detach())
    assert main(["convert-checkpoint", str(old)]) == 0  # safe already: no trust needed, nothing written
    assert "nothing to convert" in capsys.readouterr().out


def test_plain_values_refuses_objects_at_save_time(tmp_path):
    plain = plain_values(
        {"a": (np.int64(3), np.float32(0.5), np.bool_(True)), "p": tmp_path, 0: np.arange(2)}
    )
    assert plain == {"a": [3, 0.5, True], "p": str(tmp_path), 0: [0, 1]}
    assert [type(v) for v in plain["a"]] == [int, float, bool]
    hasher = build_hasher("lb", fresh_tiny(0), ["cat", "dog"], 16)
    with pytest.raises(TypeError, match=r"checkpoint\['result_row'\]\['when'\] is a builtins.object"):
        save_checkpoint(tmp_path / "h.ckpt", hasher, result_row={"when": object()})
    assert not (tmp_path / "h.ckpt").exists()


def _differential_pickle(marker: pathlib.Path) -> bytes:
    """A pickle on which torch's weights-only reader raises TypeError (BUILD of a bare Tensor with a
    state that ``Tensor.set_`` rejects) while a full unpickle goes on and runs ``Path(marker).touch()``."""
    name = str(marker).encode()
    return (
        b"\x80\x02ctorch\nTensor\n)R\x89NN\x87b0"  # torch.Tensor(), BUILD (False, None, None), POP
        + b"cbuiltins\ngetattr\ncpathlib\nPath\nX" + len(name).to_bytes(4, "little") + name + b"\x85R"
        + b"X\x05\x00\x00\x00touch\x86R)R."  # getattr(Path(marker), "touch")()
    )  # fmt: skip


def test_a_crafted_weights_file_runs_nothing_even_with_torch_told_not_to_check(tmp_path, monkeypatch):
    """open_clip retries a load that raised TypeError with torch's default reader, which
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (set by users for old files) turns into a full unpickle."""
    marker = tmp_path / "marker"
    weights = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, weights)
    _replace_pickle(weights, _differential_pickle(marker))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError) as refused:
        load_backbone("tiny", pretrained=weights)
    assert not marker.exists(), "unpickling the crafted weights file ran its code"
    assert "weights-only unpickler, which runs nothing a file holds" in str(refused.value)
    with pytest.raises(ValueError, match="not a model written by `kalahash export`"):
        load_exported(weights)
    assert not marker.exists()
    assert pickle.loads(_differential_pickle(marker)) is None and marker.exists()  # it is live


def _replace_pickle(path: pathlib.Path, data: bytes) -> None:
    """Put ``data`` in place of the pickle of a torch.save zip."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, content in members:
            archive.writestr(info, data if info.filename.endswith("/data.pkl") else content)


def test_an_image_file_holding_postscript_is_never_rendered(tmp_path, monkeypatch):
    """Pillow opens a file by its content, and renders EPS by running Ghostscript: a data set's
    ``photo.png`` holding PostScript must be refused by every reader of image files, not rendered."""
    marker = tmp_path / "marker"

    def ghostscript(*args):  # what rendering runs: another program, given the file
        marker.touch()
        return Image.new("RGB", (8, 8)).im

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    fake, real = tmp_path / "photo.png", tmp_path / "real.png"
    Image.new("RGB", (8, 8)).save(fake, format="EPS")
    Image.new("RGB", (8, 8)).save(real)
    listed = ImageList([str(fake)], np.ones((1, 1), np.uint8), ["photo.png"])
    with pytest.raises(ValueError, match=r"photo.png .*cannot be read \(UnidentifiedImageError"):
        listed.load_image(0)
    assert not marker.exists()
    pool = ImageList([str(real)], np.ones((1, 1), np.uint8), ["real.png"])
    data = RetrievalData("mine", ["cat"], query=listed, train=pool, database=pool, topk=None)
    problems = check_data(data, progress=False, full_decode=True).problems
    assert any("photo.png" in p and "not one of JPEG, PNG" in p for p in problems), problems
    assert not marker.exists()
    page = write_html([Hit(1, 0, fake)], tmp_path / "hits.html").read_text()
    assert "(image unavailable)" in page and not marker.exists()
    with Image.open(fake) as img:  # Pillow on its own renders it
        img.load()
    assert marker.exists()
