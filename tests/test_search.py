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
from kalahash.checkpoints import load_checkpoint, restore_hasher, save_checkpoint
from kalahash.cli import main
from kalahash.codestore import load_codes, part_files, read_parts
from kalahash.data import ImageList, few_shot_split, load_dataset
from kalahash.hashing import build_hasher
from kalahash.search import build_index, encode_folder, model_identity, search, write_html
from kalahash.train import encode, fit

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


def test_ctrl_c_in_encode_says_what_was_kept_in_one_line(checkpoints, folder, tmp_path, capsys, monkeypatch):
    real = search_module._encode_files
    calls = []

    def interrupted_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "_encode_files", interrupted_on_the_third_chunk)
    out = tmp_path / "codes"
    encode_cmd = ["encode", "--checkpoint", str(checkpoints[0]), "--images", str(folder), "--out", str(out)]
    assert main([*encode_cmd, "--chunk-size", "8", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kalahash encode: interrupted: every complete chunk is kept in {out}/parts: the same command goes on "
        "from there (and writes the searchable codes when it finishes)"
    )
    monkeypatch.setattr(search_module, "_encode_files", real)
    assert main([*encode_cmd, "--chunk-size", "8", "--quiet"]) == 0
    assert f"({N_IMAGES + 1 - 16} encoded by this call)" in capsys.readouterr().out  # 2 chunks were kept


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


@pytest.fixture
def twins(shapes, tmp_path):
    """25 near-copies of one picture (one pixel apart: one code) and 5 other pictures; the query's
    own file, twins/t24.png, comes last of the tied ones in collection order."""
    root = tmp_path / "twins"
    base = shapes.database.images[0]
    copies = []
    for i in range(25):
        image = base.copy()
        image[i % 32, i // 32] = (np.array(image[i % 32, i // 32], dtype=np.int64) + 1) % 256
        copies.append(image)
    _write_images(root, np.stack(copies), [f"twins/t{i:02d}.png" for i in range(25)])
    _write_images(root, shapes.database.images[1:6], [f"other/o{i}.png" for i in range(5)])
    return root


def test_the_query_is_its_own_first_hit_and_the_tie_is_reported(checkpoints, twins, tmp_path, capsys):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], twins, out, progress=False)
    store = load_codes(out)
    own = store.codes[store.paths.index("twins/t24.png")]
    tied = [p for p, c in zip(store.paths, store.codes, strict=True) if (c == own).all()]
    assert len(tied) >= 20 and tied[-1] == "twins/t24.png"  # the case of the issue: a big tie, own last
    query = twins / "twins" / "t24.png"
    hits = search(out, query, k=5)
    assert hits[0].path == query and hits[0].identical and hits[0].distance == 0
    assert [h.identical for h in hits[1:]] == [False] * 4
    assert {h.tied for h in hits} == {len(tied)}
    note = search_module.tie_note(hits)
    assert f"{len(tied)} images are at distance 0, 5 of them shown" in note and f"--k {len(tied)}" in note
    # a byte-identical copy outside the collection finds the collection's copy first
    copy = tmp_path / "elsewhere.png"
    copy.write_bytes(query.read_bytes())
    first = search(out, copy, k=3)[0]
    assert first.path == query and first.identical
    # the CLI says how large the tie is, in text, JSON and HTML
    ask = ["search", "--codes", str(out), "--query", str(query), "--k", "5"]
    assert main(ask) == 0
    text = capsys.readouterr().out
    assert "(the query's image)" in text.splitlines()[1] and f"{len(tied)} images are at distance 0" in text
    assert main([*ask, "--json", "--html", str(tmp_path / "p.html")]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert listed[0]["identical"] and listed[-1]["tied"] == len(tied)
    assert f"{len(tied)} images are at distance 0" in captured.err
    assert f"{len(tied)} images are at distance 0" in (tmp_path / "p.html").read_text()
    assert search_module.tie_note(search(out, query, k=len(tied))) is None  # the whole tie shown
    build_index(out, "flat")  # the faiss index's hits are ordered the same way, the query's image first
    assert search(out, query, k=3, engine="index")[0].path == query


def test_rerank_orders_each_tie_by_the_querys_real_valued_code(checkpoints, folder, tmp_path):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    store = load_codes(out)
    query = folder / "c1" / "04.png"
    hasher = search_module._load_hasher(load_checkpoint(checkpoints[0]), None, "cpu")
    _, u = search_module._encode_query(hasher, query)
    plain, reranked = search(out, query, k=N_IMAGES), search(out, query, k=N_IMAGES, rerank=True)
    assert sorted(map(str, (h.path for h in plain))) == sorted(map(str, (h.path for h in reranked)))
    assert [h.distance for h in plain] == [h.distance for h in reranked]
    signs = {p: 2.0 * np.unpackbits(c)[:16] - 1 for p, c in zip(store.paths, store.codes, strict=True)}
    scores = [float(signs[h.path.relative_to(folder).as_posix()] @ u) for h in reranked]
    for a, b, sa, sb in zip(reranked, reranked[1:], scores, scores[1:], strict=False):
        if a.distance == b.distance and not a.identical:
            assert sa >= sb - 1e-6  # within a tie: higher u·b first
    assert [h.path for h in plain] != [h.path for h in reranked]  # some tie was reordered


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
    assert main(["index", "--codes", str(out), "--kind", "flat"]) == 0
    assert (out / "index.faiss").is_file()
    query, page = folder / "c0" / "06.png", tmp_path / "hits.html"
    capsys.readouterr()
    ask = ["search", "--codes", str(out), "--query", str(query)]
    assert main([*ask, "--k", "5", "--json", "--html", str(page)]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [set(h) for h in hits] == [{"rank", "distance", "path", "tied", "identical"}] * 5
    assert hits[0]["path"] == str(query) and hits[0]["distance"] == 0
    assert page.read_text().count("<img ") == 6  # the query and five hits
    assert main([*ask, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "distance", "tied", "path"] and len(lines) in (4, 5)
    assert main(["search", "--codes", str(out), "--query", str(folder / "notes.txt")]) == 2
    assert "query image" in capsys.readouterr().err


def test_encode_says_when_it_removes_a_stale_index(checkpoints, folder, shapes, tmp_path, capsys):
    out = tmp_path / "codes"
    encode_cmd = ["encode", "--checkpoint", str(checkpoints[0]), "--images", str(folder), "--out", str(out)]
    assert main([*encode_cmd, "--quiet"]) == 0
    build_index(out, "flat")
    capsys.readouterr()
    assert main([*encode_cmd, "--quiet"]) == 0  # the same codes: the index stays, nothing said
    assert (out / "index.faiss").is_file() and "index" not in capsys.readouterr().out
    _write_images(folder, shapes.database.images[300:301], ["c0/new.png"])
    assert main([*encode_cmd, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "index.faiss").exists()
    assert f"removed {out / 'index.faiss'}, built from the earlier codes" in printed
    assert f"`kalahash index --codes {out}`" in printed
    _write_images(folder, shapes.database.images[301:302], ["c0/newer.png"])
    assert not encode_folder(checkpoints[0], folder, out, progress=False).index_removed  # none to remove


def test_cuda_without_a_gpu_says_so_for_encode_and_search(checkpoints, folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "codes"
    encode_folder(checkpoints[0], folder, out, progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    encode_cmd = ["encode", "--checkpoint", str(checkpoints[0]), "--images", str(folder), "--out", str(out)]
    search_cmd = ["search", "--codes", str(out), "--query", str(folder / "c0" / "00.png")]
    for args in (encode_cmd, search_cmd):
        assert main([*args, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "this machine has no CUDA device" in err and "--device cpu" in err
        assert "weights" not in err and "corrupt" not in err


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
