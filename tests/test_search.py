"""Hash and search a folder of one's own images (kalahash.search, `kalahash encode / index / search`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from kalahash import search as search_module
from kalahash.backbones import load_backbone
from kalahash.cli import main
from kalahash.codestore import load_codes, part_files, read_parts
from kalahash.data import ImageList, few_shot_split, load_dataset
from kalahash.hashing import build_hasher
from kalahash.search import build_index, encode_folder, model_identity, search, write_html
from kalahash.train import encode, fit, load_checkpoint, restore_hasher, save_checkpoint

N_IMAGES = 30


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes")


@pytest.fixture(scope="module")
def checkpoints(shapes, tmp_path_factory):
    """A KALAHash checkpoint trained one epoch on the shapes world (tiny-shapes, 16 bits), and an
    untrained one of the same shape: another model."""
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    hasher = build_hasher("kalahash", load_backbone("tiny-shapes"), shapes.classnames, 16)
    fit(hasher, few_shot_split(shapes, 1, seed=0), epochs=1, batch_size=4, progress=False)
    trained = save_checkpoint(tmp / "trained.ckpt", hasher, experiment={"seed": 0})
    torch.manual_seed(1)
    other = build_hasher("kalahash", load_backbone("tiny-shapes"), shapes.classnames, 16)
    return trained, save_checkpoint(tmp / "other.ckpt", other, experiment={"seed": 1})


def _write_images(root, pixels, names):
    for name, image in zip(names, pixels, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name)


@pytest.fixture
def folder(shapes, tmp_path):
    """30 PNGs of the shapes world in nested folders, a corrupt PNG and a text file."""
    root = tmp_path / "images"
    names = [f"c{i % 3}/{'deep/' if i % 2 else ''}{i:02d}.png" for i in range(N_IMAGES)]
    _write_images(root, shapes.database.images[:N_IMAGES], names)
    (root / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_encode_folder_writes_codes_paths_and_meta(checkpoints, folder, tmp_path):
    report = encode_folder(checkpoints[0], folder, tmp_path / "codes", chunk_size=8, progress=False)
    assert (report.count, report.encoded) == (N_IMAGES, N_IMAGES)
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"c1/broken.png", "notes.txt"}
    assert reasons["c1/broken.png"].startswith("unreadable image")
    assert "not an image file" in reasons["notes.txt"]
    store = load_codes(tmp_path / "codes")
    assert store.codes.shape == (N_IMAGES, 2) and store.codes.dtype == np.uint8
    assert store.paths == sorted(store.paths) and "c1/deep/01.png" in store.paths
    payload = load_checkpoint(checkpoints[0])
    assert store.meta["model"] == model_identity(payload)
    assert store.meta["model"]["fingerprint"].startswith(payload["backbone"]["fingerprint"])
    assert store.meta["skipped_count"] == 2 and store.meta["count"] == N_IMAGES
    assert {p.name for p in (tmp_path / "codes").iterdir()} == {
        "codes.npy",
        "meta.json",
        "parts",
        "paths.txt",
    }
    # the same codes as the evaluation path (kalahash.train.encode) gives these images
    hasher = restore_hasher(payload, load_backbone("tiny-shapes"))
    images = ImageList([folder / p for p in store.paths], np.zeros((N_IMAGES, 1), np.uint8))
    np.testing.assert_array_equal(
        store.codes, np.packbits(encode(hasher, images, progress=False) > 0, axis=1)
    )


def test_a_second_call_encodes_only_what_changed(checkpoints, folder, shapes, tmp_path):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    before = load_codes(out)
    _write_images(folder, shapes.database.images[100:103], ["new/a.png", "new/b.png", "c0/zz.png"])
    _write_images(folder, shapes.database.images[200:201], ["c0/00.png"])  # changed in place
    os.utime(folder / "c0" / "00.png", ns=(1, 1))  # and surely with another time stamp
    (folder / "c2" / "02.png").unlink()
    report = encode_folder(checkpoints[0], folder, out, progress=False)
    assert (report.encoded, report.count) == (4, N_IMAGES + 3 - 1)
    after = load_codes(out)
    assert "c2/02.png" not in after.paths and {"new/a.png", "c0/zz.png"} <= set(after.paths)
    for path in set(before.paths) - {"c0/00.png", "c2/02.png"}:  # untouched images keep their codes
        np.testing.assert_array_equal(
            after.codes[after.paths.index(path)], before.codes[before.paths.index(path)]
        )
    assert encode_folder(checkpoints[0], folder, out, progress=False).encoded == 0


def test_an_interrupted_encode_resumes_from_its_last_chunk(checkpoints, folder, tmp_path, monkeypatch):
    reference = encode_folder(checkpoints[0], folder, tmp_path / "whole", progress=False)
    real = search_module._encode_files
    calls = []

    def dies_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "_encode_files", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(checkpoints[0], folder, tmp_path / "codes", chunk_size=8, progress=False)
    assert len(list((tmp_path / "codes" / "parts").glob("*.npz"))) == 2  # two whole chunks, no stray file
    assert not (tmp_path / "codes" / "meta.json").exists()
    done = read_parts(part_files(tmp_path / "codes"), model_identity(load_checkpoint(checkpoints[0])))
    assert len(done.paths) == 16
    monkeypatch.setattr(search_module, "_encode_files", real)
    report = encode_folder(checkpoints[0], folder, tmp_path / "codes", chunk_size=8, progress=False)
    left = N_IMAGES + 1 - 16  # the 31 image files but the first two chunks; the broken one is no code
    assert report.encoded == left - ("c1/broken.png" not in done.paths) and report.count == N_IMAGES
    resumed, whole = load_codes(tmp_path / "codes"), load_codes(tmp_path / "whole")
    assert resumed.paths == whole.paths and resumed.meta["skipped"] == reference.skipped
    np.testing.assert_array_equal(resumed.codes, whole.codes)


def test_search_finds_the_query_and_every_engine_agrees(checkpoints, folder, tmp_path):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    query = folder / "c2" / "deep" / "05.png"
    with pytest.raises(ValueError, match=r"no faiss index in .* run `kalahash index"):
        search(out, query, engine="index")
    hits = search(out, query, k=10)
    assert [h.rank for h in hits] == list(range(1, 11)) and hits[0].distance == 0
    assert query in [h.path for h in hits if h.distance == 0]
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    store = load_codes(out)
    code = store.codes[store.paths.index("c2/deep/05.png")]
    want = np.unpackbits(store.codes ^ code, axis=1).sum(axis=1)
    assert [h.distance for h in hits] == sorted(want.tolist())[:10]
    for kind in ("flat", "hnsw"):
        build_index(out, kind)
        assert load_codes(out).meta["index"]["kind"] == kind
        by_index = search(out, query, k=10, engine="index")
        assert [h.distance for h in by_index] == [h.distance for h in hits]
    assert search(out, query, k=100) == search(out, query, k=100, engine="exact")  # exact serves by default
    assert len(search(out, query, k=100, engine="index")) == N_IMAGES
    with pytest.raises(ValueError, match="engine must be one of exact, index"):
        search(out, query, engine="auto")


def test_codes_of_another_model_are_refused(checkpoints, folder, tmp_path):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    made_by = model_identity(load_checkpoint(checkpoints[0]))["fingerprint"]
    other = model_identity(load_checkpoint(checkpoints[1]))["fingerprint"]
    with pytest.raises(ValueError, match=f"made by model {made_by}.*is model {other}"):
        search(out, folder / "c0" / "00.png", checkpoint=checkpoints[1])
    with pytest.raises(ValueError, match=f"made by model {made_by}, not by this checkpoint's model {other}"):
        encode_folder(checkpoints[1], folder, out, progress=False)


def test_a_half_written_view_is_detected(checkpoints, folder, tmp_path):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    (out / "paths.txt").write_text("".join(f"{p}\n" for p in reversed(load_codes(out).paths)))
    with pytest.raises(
        ValueError, match=r"inconsistent .* run `kalahash encode` with the same folders again"
    ):
        load_codes(out)
    encode_folder(checkpoints[0], folder, out, progress=False)  # rewritten from the record
    assert load_codes(out).paths[0] == "c0/00.png"
    with pytest.raises(FileNotFoundError, match=r"holds no codes .* run `kalahash encode` first"):
        load_codes(tmp_path / "nothing")


def test_cli_encode_index_search(checkpoints, folder, tmp_path, capsys):
    out = folder / "codes"  # inside the image folder: never encoded as images itself
    encode_cmd = ["encode", "--checkpoint", str(checkpoints[0]), "--quiet"]
    encode_cmd += ["--images", str(folder), "--out", str(out)]
    assert main(encode_cmd) == 0
    printed = capsys.readouterr().out
    assert f"{N_IMAGES} images have codes" in printed and "2 files skipped" in printed
    assert "notes.txt: not an image file" in printed
    assert main(encode_cmd) == 0
    assert "(0 encoded by this call)" in capsys.readouterr().out
    assert main(["index", str(out), "--kind", "flat"]) == 0
    assert (out / "index.faiss").is_file()
    query, page = folder / "c0" / "06.png", tmp_path / "hits.html"
    capsys.readouterr()
    ask = ["search", "--codes", str(out), "--query", str(query)]
    assert main([*ask, "--k", "5", "--json", "--html", str(page)]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [set(h) for h in hits] == [{"rank", "distance", "path"}] * 5 and hits[0]["distance"] == 0
    assert str(query) in [h["path"] for h in hits if h["distance"] == 0]
    assert page.read_text().count("<img ") == 6  # the query and five hits
    assert main([*ask, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "distance", "path"] and len(lines) == 4
    assert main(["search", "--codes", str(out), "--query", str(folder / "notes.txt")]) == 2
    assert "query image" in capsys.readouterr().err


def test_write_html_survives_a_missing_image(tmp_path, folder):
    hits = [search_module.Hit(1, 0, folder / "c0" / "00.png"), search_module.Hit(2, 3, tmp_path / "gone.png")]
    text = write_html(hits, tmp_path / "p.html").read_text()
    assert text.count("<img ") == 1 and "(image unavailable)" in text and "distance 3" in text


def _encode_rank(rank, store_path, checkpoint, folder, out):
    """One of two gloo processes: both encode, rank 0 writes."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        report = encode_folder(checkpoint, folder, out, chunk_size=7, progress=False)
        assert report.count == N_IMAGES
    finally:
        dist.destroy_process_group()


def test_two_processes_encode_like_one(checkpoints, folder, tmp_path):
    single = encode_folder(checkpoints[0], folder, tmp_path / "single", progress=False)
    args = (str(tmp_path / "store"), str(checkpoints[0]), str(folder), str(tmp_path / "two"))
    torch.multiprocessing.spawn(_encode_rank, args=args, nprocs=2, join=True)
    one, two = load_codes(tmp_path / "single"), load_codes(tmp_path / "two")
    assert two.paths == one.paths and two.meta["skipped"] == single.skipped
    np.testing.assert_array_equal(two.codes, one.codes)
