"""Data sets, the few-shot protocol, split files and check_data, on tiny data made here (offline)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kalahash import data as kd
from kalahash.data import (
    DATASETS,
    ImageList,
    RetrievalData,
    check_data,
    data_fingerprint,
    download_cifar10,
    few_shot_indices,
    few_shot_split,
    file_md5,
    load_dataset,
    load_split,
    save_split,
    split_path,
    verify_md5,
)

CIFAR_META_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]
CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
PER_CLASS = 12


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny CIFAR-10 archive in the real pickle layout, list-file and folder data sets
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """10 classes x 12 images over the six batches, pickled (protocol 2) as in the real archive."""
    work = tmp_path_factory.mktemp("cifar-src")
    rng = np.random.default_rng(123)
    n = 10 * PER_CLASS
    labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS))
    pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    folder = work / "cifar-10-batches-py"
    folder.mkdir()
    for name, rows in zip(CIFAR_BATCHES, np.array_split(np.arange(n), 6), strict=True):
        batch = {
            b"batch_label": f"training batch {name}".encode(),
            b"labels": labels[rows].tolist(),
            b"data": pixels[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072),  # R, G, B planes
            b"filenames": [f"img_{i:05d}.png".encode() for i in rows],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": CIFAR_META_NAMES, b"num_cases_per_batch": 20, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    archive = work / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive, pixels, labels


def _global_index(cifar_id: str) -> int:
    _, batch, row = cifar_id.split(":")
    return CIFAR_BATCHES.index(batch) * 20 + int(row)


def _cifar_root(tmp_path: Path, archive: Path, name: str = "cifar") -> Path:
    root = tmp_path / name
    root.mkdir()
    shutil.copy(archive, root / archive.name)
    return root


def _load_tiny_cifar(root: Path, **kwargs) -> RetrievalData:
    return load_dataset("cifar10", root, query_per_class=2, train_per_class=5, **kwargs)


CLASSES = ["sky", "water", "tree", "car"]


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _make_lists(root: Path, *, names=("train.txt", "query.txt", "gallery.txt"), prefix: str = "") -> dict:
    """4 query, 8 train, 14 database (train + 6) multi-label images, JPEG and PNG, under root/images."""
    rng = np.random.default_rng(7)
    entries: dict[str, list[tuple[str, list[int]]]] = {"train": [], "query": [], "database": []}
    k = 0
    for role, count in (("query", 4), ("train", 8), ("database", 6)):
        for _ in range(count):
            ext = "jpg" if k % 2 else "png"
            rel = f"{role[0]}{k:02d}.{ext}"
            _write_image(root / "images" / rel, seed=k)
            row = [0] * 4
            row[k % 4] = 1
            if rng.random() < 0.5:
                row[(k + 1) % 4] = 1
            entries[role].append((prefix + rel, row))
            k += 1
    entries["database"] = entries["train"] + entries["database"]
    for role, name in zip(("train", "query", "database"), names, strict=True):
        lines = [f"{p} {' '.join(map(str, row))}" for p, row in entries[role]]
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return entries


@pytest.fixture
def lists_root(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "nuswide"
    root.mkdir()
    return root, _make_lists(root)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


def test_cifar10_archive_gives_the_protocol_split(tmp_path, cifar_archive):
    archive, pixels, labels = cifar_archive
    root = _cifar_root(tmp_path, archive)
    data = _load_tiny_cifar(root)
    assert data.name == "cifar10" and data.topk is None and not data.multi_label
    assert data.classnames[:3] == ["airplane", "car", "bird"] and len(data.classnames) == 10
    assert (len(data.query), len(data.train), len(data.database)) == (20, 50, 100)
    assert data.database.images.dtype == np.uint8 and data.database.images.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(data.query.labels.sum(0), np.full(10, 2))
    np.testing.assert_array_equal(data.train.labels.sum(0), np.full(10, 5))
    q, t, db = set(data.query.ids), set(data.train.ids), set(data.database.ids)
    assert not q & db and t <= db and len(q | db) == 120
    for split in data.splits().values():  # pixels in HWC order and labels match the source rows
        for i, image_id in enumerate(split.ids):
            g = _global_index(image_id)
            np.testing.assert_array_equal(split.images[i], pixels[g])
            assert split.labels[i].argmax() == labels[g]
    saved = root / "splits" / "cifar10_q2_t5_seed0.query.txt"
    ids, header = load_split(saved)
    assert ids == data.query.ids and header["split"] == "query" and header["seed"] == "0"
    assert header["query_per_class"] == "2" and header["train_per_class"] == "5"
    image, row, index = data.query[3]
    assert tuple(image.shape) == (32, 32, 3) and float(row.sum()) == 1.0 and index == 3


def test_cifar10_reload_reads_the_saved_split_and_folder_matches_archive(tmp_path, cifar_archive):
    archive = cifar_archive[0]
    root = _cifar_root(tmp_path, archive)
    first = _load_tiny_cifar(root)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    from_folder = _load_tiny_cifar(extracted)
    assert from_folder.query.ids == first.query.ids and from_folder.train.ids == first.train.ids
    assert from_folder.info["source"].endswith("cifar-10-batches-py")
    # Hand-edit the saved query list: swap one query for a same-class database-only image.
    old = first.query.ids[0]
    cls = first.query.labels[0].argmax()
    spare = next(
        i
        for i, row in zip(first.database.ids, first.database.labels, strict=True)
        if row.argmax() == cls and i not in first.train.ids
    )
    path = root / "splits" / "cifar10_q2_t5_seed0.query.txt"
    path.write_text(path.read_text().replace(old + "\n", spare + "\n"))
    again = _load_tiny_cifar(root)
    assert spare in again.query.ids and old not in again.query.ids and old in again.database.ids


def test_cifar10_seeds_are_reproducible_and_differ(tmp_path, cifar_archive):
    archive = cifar_archive[0]
    a = _load_tiny_cifar(_cifar_root(tmp_path, archive, "a"))
    b = _load_tiny_cifar(_cifar_root(tmp_path, archive, "b"), split_dir=None)
    c = _load_tiny_cifar(_cifar_root(tmp_path, archive, "c"), seed=1)
    assert a.query.ids == b.query.ids and a.train.ids == b.train.ids
    assert a.query.ids != c.query.ids


def test_cifar10_saved_split_naming_unknown_ids_is_refused(tmp_path, cifar_archive):
    root = _cifar_root(tmp_path, cifar_archive[0])
    data = _load_tiny_cifar(root)
    path = root / "splits" / "cifar10_q2_t5_seed0.train.txt"
    path.write_text(path.read_text().replace(data.train.ids[0], "cifar10:data_batch_9:0"))
    with pytest.raises(ValueError, match=r"cifar10_q2_t5_seed0\.train\.txt lists 1 ids not in"):
        _load_tiny_cifar(root)


def test_cifar10_half_saved_split_is_completed_or_refused(tmp_path, cifar_archive):
    root = _cifar_root(tmp_path, cifar_archive[0])
    data = _load_tiny_cifar(root)
    query_file = root / "splits" / "cifar10_q2_t5_seed0.query.txt"
    train_file = root / "splits" / "cifar10_q2_t5_seed0.train.txt"
    train_file.unlink()
    assert _load_tiny_cifar(root).train.ids == data.train.ids and train_file.exists()  # re-derived
    train_file.unlink()
    query_file.write_text(query_file.read_text().replace(data.query.ids[0], data.train.ids[0]))
    with pytest.raises(
        ValueError, match=r"its partner .*train\.txt is missing and re-deriving gives a different"
    ):
        _load_tiny_cifar(root)


def test_cifar10_missing_data_says_where_to_put_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", empty)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(empty) in message and kd.CIFAR10_URL in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    assert list(empty.iterdir()) == []


def test_cifar10_download_from_a_local_url(tmp_path, cifar_archive, monkeypatch):
    archive = cifar_archive[0]
    monkeypatch.setattr(kd.cifar10, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(kd.cifar10, "CIFAR10_MD5", file_md5(archive))
    root = tmp_path / "fresh"
    data = _load_tiny_cifar(root, download=True)
    assert len(data.database) == 100
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz", "splits"]


def test_download_with_bad_checksum_or_no_network_leaves_nothing(tmp_path, cifar_archive):
    archive = cifar_archive[0]
    root = tmp_path / "dl"
    with pytest.raises(ValueError, match="md5"):
        download_cifar10(root, url=archive.as_uri(), md5="0" * 32)
    assert list(root.iterdir()) == []
    missing_url = (tmp_path / "nope.tar.gz").as_uri()
    with pytest.raises(FileNotFoundError, match=r"download from .*nope\.tar\.gz failed") as err:
        download_cifar10(root, url=missing_url)
    assert "cifar-10-python.tar.gz" in str(err.value)
    assert list(root.iterdir()) == []


def test_md5_verification(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"
    verify_md5(path, "900150983CD24FB0D6963F7D28E17F72")
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_md5(path, kd.CIFAR10_MD5)


def test_cifar10_bad_inputs(tmp_path, cifar_archive):
    root = _cifar_root(tmp_path, cifar_archive[0])
    with pytest.raises(ValueError, match=r"class 0 \('airplane'\) has 12 images; the split needs 15"):
        load_dataset("cifar10", root, query_per_class=10, train_per_class=5)
    with pytest.raises(ValueError, match="query_per_class must be a positive int"):
        load_dataset("cifar10", root, query_per_class=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cifar-10-python.tar.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(ValueError, match="not a readable CIFAR-10 archive"):
        load_dataset("cifar10", broken)
    hostile = tmp_path / "hostile" / "cifar-10-batches-py"
    with tarfile.open(cifar_archive[0]) as tar:
        tar.extractall(hostile.parent, filter="data")
    (hostile / "data_batch_1").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", hostile.parent)


# ------------------------------------------------------------------------------------------------
# List files (nuswide / coco / listfile)
# ------------------------------------------------------------------------------------------------


def test_nuswide_release_lists_with_images_folder(lists_root):
    root, entries = lists_root
    data = load_dataset("nuswide", root)
    assert data.topk == 5000 and data.classnames == CLASSES and data.multi_label
    assert (len(data.query), len(data.train), len(data.database)) == (4, 8, 14)
    assert data.info["convention"].startswith("release") and data.info["image_root"] == str(root / "images")
    assert data.query.ids == [p for p, _ in entries["query"]]
    np.testing.assert_array_equal(data.database.labels, [row for _, row in entries["database"]])
    for i in (0, 1):  # one PNG, one JPEG
        image, row, index = data.query[i]
        assert tuple(image.shape) == (8, 8, 3) and row.tolist() == entries["query"][i][1] and index == i
    assert data.database.images[0] == root / "images" / entries["database"][0][0]


def test_deephash_names_with_paths_relative_to_root_and_aliases(tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    _make_lists(root, names=("train.txt", "test.txt", "database.txt"), prefix="images/")
    data = load_dataset("MS-COCO", root)
    assert data.name == "coco" and data.topk == 5000
    assert data.info["convention"].startswith("DeepHash-pytorch") and data.info["image_root"] == str(root)
    assert data.query.ids[0].startswith("images/") and data.query.load_image(0).size == (8, 8)


def test_both_list_conventions_present_is_ambiguous(lists_root):
    root, _ = lists_root
    shutil.copy(root / "query.txt", root / "test.txt")
    with pytest.raises(ValueError, match=r"both query\.txt and test\.txt"):
        load_dataset("nuswide", root)


def test_listfile_with_explicit_paths(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    _make_lists(root, names=("a.txt", "b.txt", "c.txt"))
    lists = root / "lists"
    lists.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        shutil.move(root / name, lists / name)
    data = load_dataset(
        "listfile",
        root,
        train_list="lists/a.txt",
        query_list="lists/b.txt",
        database_list="lists/c.txt",
        classnames=CLASSES,
        image_root=root / "images",
        topk=7,
        name="mine",
    )
    assert data.name == "mine" and data.topk == 7 and len(data.database) == 14
    assert data.info["lists"]["query"] == str(lists / "b.txt")


def test_list_dataset_errors(tmp_path, lists_root):
    root, entries = lists_root
    with pytest.raises(FileNotFoundError, match=r"nuswide data folder .*nope does not exist.*train\.txt"):
        load_dataset("nuswide", tmp_path / "nope")

    def expect(exc, pattern):
        with pytest.raises(exc, match=pattern):
            load_dataset("nuswide", root)

    (root / "gallery.txt").rename(root / "gallery.bak")
    expect(FileNotFoundError, r"no database list in .*: expected gallery\.txt or database\.txt")
    (root / "gallery.bak").rename(root / "gallery.txt")

    (root / "classnames.txt").rename(root / "names.bak")
    expect(FileNotFoundError, r"classnames\.txt not found")
    (root / "names.bak").write_text("\n".join([*CLASSES, "extra"]))
    (root / "names.bak").rename(root / "classnames.txt")
    expect(
        ValueError, r"train\.txt has 4 label values per line \(line 1\) but .*classnames\.txt lists 5 classes"
    )
    (root / "classnames.txt").write_text("\n".join(CLASSES))

    train = root / "train.txt"
    good = train.read_text()
    train.write_text(good + "images/lonely.jpg\n")
    expect(ValueError, r"train\.txt, line 9: expected an image path then 4 label values \(0 or 1\)")
    train.write_text(good + "t99.png 0 1 0\n")
    expect(ValueError, r"train\.txt, line 9: .*found 3 values")
    lines = good.splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 2"
    train.write_text("\n".join(lines) + "\n")
    expect(ValueError, r"train\.txt, line 3: label value '2' in column 4 is not 0 or 1")
    train.write_text(good)

    (root / "query.txt").write_text("\n\n")
    expect(ValueError, r"query\.txt lists no images \(empty data set\)")
    (root / "query.txt").write_text("\n".join(f"{p} {' '.join(map(str, r))}" for p, r in entries["query"]))

    (root / "images" / entries["query"][0][0]).unlink()
    expect(FileNotFoundError, r"first image of the query list .* put the images under")


def test_registry_names_and_options():
    assert {"cifar10", "nuswide", "coco", "listfile", "folder", "shapes", "shapes-multi"} <= set(DATASETS)
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; known datasets: .*nuswide.*'cifar10'\?"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match=r"did you mean 'nuswide'"):
        load_dataset("nus-wid")
    with pytest.raises(ValueError, match=r"query_per_clas.*did you mean 'query_per_class'"):
        load_dataset("cifar10", query_per_clas=3)
    with pytest.raises(ValueError, match=r"needs option.*train_list"):
        load_dataset("listfile")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        load_dataset("cifar10", seed=-1)
    with pytest.raises(ValueError, match="already registered"):
        kd.register_dataset("cifar10")(kd.load_cifar10)


def test_core_types_validate_labels():
    with pytest.raises(ValueError, match=r"only 0 and 1, found \[2\]"):
        ImageList(np.zeros((2, 4, 4, 3), np.uint8), np.array([[0, 2], [1, 0]]))
    ok = ImageList(np.zeros((2, 4, 4, 3), np.uint8), np.eye(2))
    with pytest.raises(ValueError, match="2 columns but there are 3 class names"):
        RetrievalData("x", ["a", "b", "c"], ok, ok, ok, None)


# ------------------------------------------------------------------------------------------------
# Folder per class
# ------------------------------------------------------------------------------------------------


def _make_folder_tree(root: Path, counts=(6, 6, 6)) -> None:
    for c, (name, n) in enumerate(zip(("cat", "dog", "fish"), counts, strict=True)):
        for k in range(n):
            _write_image(root / name / f"{k:02d}.{'png' if k % 2 else 'JPG'}", seed=100 * c + k)
    (root / "cat" / "readme.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")


def test_folder_split_is_seeded_and_saved(tmp_path):
    root = tmp_path / "pets"
    _make_folder_tree(root)
    data = load_dataset("folder", root, query_per_class=2)
    assert data.classnames == ["cat", "dog", "fish"] and not data.multi_label
    assert (len(data.query), len(data.train), len(data.database)) == (6, 12, 12)
    assert all(i.split("/")[0] in data.classnames for i in data.database.ids)
    assert "cat/readme.txt" not in data.database.ids and not any(".hidden" in i for i in data.database.ids)
    assert load_dataset("folder", root, query_per_class=2).query.ids == data.query.ids
    assert load_dataset("folder", root, query_per_class=2, seed=3).query.ids != data.query.ids
    assert len(load_dataset("folder", root, query_per_class=2, train_per_class=3).train) == 9
    split_dir = root / "splits"
    saved = load_dataset("folder", root, query_per_class=2, split_dir=split_dir, name="pets")
    assert saved.query.ids == data.query.ids and len(saved.info["split_files"]) == 2
    again = load_dataset("folder", root, query_per_class=2, split_dir=split_dir, name="pets")
    assert again.classnames == ["cat", "dog", "fish"]  # the splits folder is not a class


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_dataset("folder", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no class sub-folders \(empty data set\)"):
        load_dataset("folder", tmp_path / "empty")
    root = tmp_path / "pets"
    _make_folder_tree(root, counts=(6, 6, 3))
    with pytest.raises(ValueError, match=r"class 2 \('fish'\) has 3 images; the split needs 4"):
        load_dataset("folder", root, query_per_class=3)
    (root / "bird").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*bird holds no images"):
        load_dataset("folder", root, query_per_class=1)
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset("folder")


# ------------------------------------------------------------------------------------------------
# Few-shot protocol and split files
# ------------------------------------------------------------------------------------------------

GREEDY_LABELS = np.array(
    [
        [1, 1, 0],  # 0: taken (counts 1 1 0)
        [1, 0, 0],  # 1: with 1 shot skipped (class 0 full); with 2 taken
        [0, 1, 1],  # 2: with 1 shot skipped (class 1 full) although class 2 has none yet
        [0, 0, 0],  # 3: no label: never taken
        [0, 0, 1],  # 4: taken; every class full -> stop
        [0, 0, 1],  # 5: never reached
    ]
)


def test_greedy_file_order_rule_on_a_hand_made_case():
    np.testing.assert_array_equal(few_shot_indices(GREEDY_LABELS, 1), [0, 4])
    np.testing.assert_array_equal(few_shot_indices(GREEDY_LABELS, 2), [0, 1, 2, 4])
    np.testing.assert_array_equal(few_shot_indices(GREEDY_LABELS, 2, seed=9), [0, 1, 2, 4])
    with pytest.raises(ValueError, match=r"class 0 \('a'\) got only 2 of 3 images \(the pool has 2"):
        few_shot_indices(GREEDY_LABELS, 3, classnames=["a", "b", "c"], strict=True)
    with pytest.warns(kd.ShortShotsWarning, match=r"2 classes got fewer than 3 images \(a=2/3, b=2/3\)"):
        np.testing.assert_array_equal(few_shot_indices(GREEDY_LABELS, 3, classnames="abc"), [0, 1, 2, 4, 5])


def test_random_per_class_rule_is_seeded():
    labels = np.eye(3, dtype=np.uint8)[np.repeat([0, 1, 2], 10)]
    a = few_shot_indices(labels, 3, seed=0)
    assert len(a) == 9 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(labels[a].sum(0), [3, 3, 3])
    np.testing.assert_array_equal(a, few_shot_indices(labels, 3, seed=0))
    assert not np.array_equal(a, few_shot_indices(labels, 3, seed=1))
    with pytest.raises(ValueError, match=r"class 1 \('dog'\) got only 2 of 3 images \(the pool has 2"):
        few_shot_indices(labels[:12], 3, classnames=["cat", "dog", "fish"], strict=True)
    with pytest.warns(kd.ShortShotsWarning, match=r"\(dog=2/3, fish=0/3\); going on with the 5 images"):
        short = few_shot_indices(labels[:12], 3, classnames=["cat", "dog", "fish"])
    np.testing.assert_array_equal(short[3:], [10, 11])  # all the pool has of dog, none of fish
    np.testing.assert_array_equal(short[:3], a[:3])  # the same seeded draw for the full class
    greedy = few_shot_indices(labels, 2, rule=kd.RULE_GREEDY)
    np.testing.assert_array_equal(greedy, [0, 1, 10, 11, 20, 21])


@pytest.mark.parametrize("shots", [0, -1, 1.5, True, "2"])
def test_few_shot_rejects_bad_shots(shots):
    with pytest.raises(ValueError, match="shots must be a positive int"):
        few_shot_indices(np.eye(2), shots)


def test_few_shot_rejects_bad_labels_and_rules():
    with pytest.raises(ValueError, match="only 0 and 1"):
        few_shot_indices(np.array([[0, 2]]), 1)
    with pytest.raises(ValueError, match="rule must be"):
        few_shot_indices(np.eye(2), 1, rule="stratified")
    with pytest.raises(ValueError, match="needs single-label data"):
        few_shot_indices(GREEDY_LABELS, 1, rule=kd.RULE_RANDOM)


def test_split_file_round_trip(tmp_path):
    path = tmp_path / "s" / "x.txt"
    save_split(path, ["b.jpg", "a/c.png"], dataset="mine", shots=2, seed=5, rule=kd.RULE_GREEDY)
    assert path.read_text().splitlines()[:2] == ["# kalahash split v1", "# dataset: mine"]
    ids, header = load_split(path)
    assert ids == ["b.jpg", "a/c.png"]
    assert header == {"dataset": "mine", "shots": "2", "seed": "5", "rule": kd.RULE_GREEDY, "count": "2"}
    assert [p.name for p in path.parent.iterdir()] == ["x.txt"]  # no temp file left
    path.write_text(path.read_text().rsplit("a/c.png", 1)[0])
    with pytest.raises(ValueError, match="count: 2 but lists 1 ids"):
        load_split(path)
    for bad in (["a", "a"], ["two\nlines"], ["#a"], [""]):
        with pytest.raises(ValueError, match="split ids"):
            save_split(tmp_path / "bad.txt", bad, dataset="x", shots=1, seed=0, rule="r")
    assert not (tmp_path / "bad.txt").exists()


def test_few_shot_split_writes_reads_and_detects_changed_data(tmp_path, cifar_archive):
    root = _cifar_root(tmp_path, cifar_archive[0])
    data = _load_tiny_cifar(root)
    out = tmp_path / "fewshot"
    train = few_shot_split(data, 2, seed=0, out_dir=out)
    path = split_path(out, "cifar10", 2, 0)
    ids, header = load_split(path)
    assert ids == train.ids and len(train) == 20 and header["rule"] == kd.RULE_RANDOM
    np.testing.assert_array_equal(train.labels.sum(0), np.full(10, 2))
    assert few_shot_split(data, 2, seed=0, out_dir=out).ids == train.ids  # reads and agrees
    assert few_shot_split(data, 2, seed=1).ids != train.ids
    other_pool = _load_tiny_cifar(root, seed=1, split_dir=tmp_path / "other")
    with pytest.raises(
        ValueError, match=r"cifar10_2shot_seed0\.txt does not match .*: the data changed since it was written"
    ):
        few_shot_split(other_pool, 2, seed=0, out_dir=out)
    with pytest.raises(ValueError, match="was made with"):
        few_shot_split(data, 2, seed=0, out_dir=out, rule=kd.RULE_GREEDY)


def test_few_shot_split_multi_label_uses_greedy_rule(lists_root, tmp_path):
    data = load_dataset("nuswide", lists_root[0])
    train = few_shot_split(data, 1, out_dir=tmp_path)
    expected = few_shot_indices(data.train.labels, 1)
    assert train.ids == [data.train.ids[i] for i in expected]
    assert load_split(split_path(tmp_path, "nuswide", 1, 0))[1]["rule"] == kd.RULE_GREEDY


# Class b only comes with a class that is already full at 1 shot (as in MS-COCO): the greedy pass misses it.
SHORT_LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])


def _toy_data(train_labels: np.ndarray, name: str = "toy") -> RetrievalData:
    """In-memory data with the given train pool (ids t0, t1, ...) as train and database, one query."""
    n, c = train_labels.shape
    pixels = np.random.default_rng(0).integers(0, 256, (n + 1, 4, 4, 3), dtype=np.uint8)
    train = ImageList(pixels[:n], train_labels, [f"t{i}" for i in range(n)])
    query = ImageList(pixels[n:], np.eye(c, dtype=np.uint8)[:1], ["q0"])
    return RetrievalData(name, list("abcdefgh"[:c]), query, train, train, None)


def test_greedy_rule_goes_on_short_with_a_warning_unless_strict():
    with pytest.warns(kd.ShortShotsWarning, match=r"1 classes got fewer than 1 images \(b=0/1\)"):
        np.testing.assert_array_equal(few_shot_indices(SHORT_LABELS, 1, classnames="abc"), [0, 2])
    with pytest.raises(ValueError, match=r"class 1 \('b'\) got only 0 of 1 images \(the pool has 2"):
        few_shot_indices(SHORT_LABELS, 1, classnames="abc", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(few_shot_indices(SHORT_LABELS, 2, strict=True), [0, 1, 2, 3])


def test_few_shot_split_records_the_shortfall(tmp_path):
    data = _toy_data(SHORT_LABELS)
    with pytest.warns(kd.ShortShotsWarning, match="b=0/1"):
        train = few_shot_split(data, 1, out_dir=tmp_path)
    assert isinstance(train, kd.FewShotSet) and train.ids == ["t0", "t2"]
    assert train.shortfall == {"b": 0} and train.shortfall_text == "b=0/1"
    ids, header = load_split(split_path(tmp_path, "toy", 1, 0))
    assert ids == train.ids and header["shortfall"] == "b=0/1"
    assert header["data_fingerprint"] == data_fingerprint(data)
    with pytest.warns(kd.ShortShotsWarning):
        assert few_shot_split(data, 1, out_dir=tmp_path).ids == ids  # re-derived and verified
    with pytest.raises(ValueError, match="got only 0 of 1"):
        few_shot_split(data, 1, out_dir=tmp_path, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = few_shot_split(data, 2, out_dir=tmp_path)
    assert full.shortfall == {} and full.shortfall_text == "none"
    assert load_split(split_path(tmp_path, "toy", 2, 0))[1]["shortfall"] == "none"
    old = split_path(tmp_path / "old", "toy", 1, 0)  # written before the shortfall and fingerprint lines
    save_split(old, ids, dataset="toy", shots=1, seed=0, rule=kd.RULE_GREEDY)
    with pytest.warns(kd.ShortShotsWarning):
        assert few_shot_split(data, 1, out_dir=old.parent).ids == ids


def test_saved_split_that_no_longer_matches_says_what_changed(tmp_path):
    data = _toy_data(np.eye(3, dtype=np.uint8)[np.repeat([0, 1, 2], 4)])
    train = few_shot_split(data, 1, out_dir=tmp_path)
    path = split_path(tmp_path, "toy", 1, 0)
    other = next(i for i in data.train.ids if i not in train.ids)
    lines = [other if line == train.ids[0] else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")  # what another numpy might draw for the same data
    with pytest.raises(ValueError) as err:
        few_shot_split(data, 1, out_dir=tmp_path)
    message = str(err.value)
    assert (
        f"the data is the same (fingerprint {data_fingerprint(data)[:12]}), so the drawing changed" in message
    )
    assert f"1 ids only in the file: {other}; 1 only in the re-derived list: {train.ids[0]}" in message
    path.write_text("\n".join(line for line in lines if not line.startswith("# data_fingerprint")) + "\n")
    with pytest.raises(ValueError, match="the train pool or the way the list is drawn changed"):
        few_shot_split(data, 1, out_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# check_data
# ------------------------------------------------------------------------------------------------


def test_check_data_clean_list_dataset(lists_root):
    root, _ = lists_root
    data = load_dataset("nuswide", root)
    check = check_data(data, progress=False)
    assert check.ok and check.problems == [], check.report()
    assert check.sizes == {"query": 4, "train": 8, "database": 14}
    assert (
        list(check.counts.index) == ["query", "train", "database"] and list(check.counts.columns) == CLASSES
    )
    np.testing.assert_array_equal(check.counts.loc["database"].to_numpy(), data.database.labels.sum(0))
    assert check.fingerprint == data_fingerprint(load_dataset("nuswide", root))
    assert "file bytes" in check.content_hash and check.content_fingerprint
    report = check.report()
    assert report.startswith("check-data nuswide: OK") and check.fingerprint in report
    gallery = root / "gallery.txt"
    lines = gallery.read_text().splitlines()
    lines[-1] = lines[-1][:-1] + ("0" if lines[-1].endswith("1") else "1")
    gallery.write_text("\n".join(lines) + "\n")
    assert data_fingerprint(load_dataset("nuswide", root)) != check.fingerprint


def test_check_data_finds_missing_corrupt_and_duplicated_files(lists_root):
    root, entries = lists_root
    missing = entries["database"][-1][0]
    corrupt = entries["train"][3][0]
    (root / "images" / missing).unlink()
    (root / "images" / corrupt).write_bytes(b"this is not an image")
    query_image = entries["query"][1][0]
    shutil.copy(root / "images" / query_image, root / "images" / "dup.jpg")
    with open(root / "gallery.txt", "a") as f:
        f.write(f"dup.jpg {' '.join(map(str, entries['query'][1][1]))}\n")
    check = check_data(load_dataset("nuswide", root), progress=False)
    assert not check.ok
    text = "\n".join(check.problems)
    assert f"1 files missing: {root / 'images' / missing}" in text
    assert f"1 files not a readable image: {root / 'images' / corrupt}" in text
    assert (
        f"1 query images have identical content in database under another id: {query_image} = dup.jpg" in text
    )
    assert f"(first, {root / 'images' / corrupt}: not a readable image (UnidentifiedImageError" in text
    assert "BytesIO" not in check.report() and "PROBLEM" in check.report()
    no_hash = check_data(load_dataset("nuswide", root), content_hash=False, progress=False)
    assert not any("identical content" in p for p in no_hash.problems) and no_hash.content_fingerprint is None


def test_check_data_in_memory(tmp_path, cifar_archive):
    data = _load_tiny_cifar(_cifar_root(tmp_path, cifar_archive[0]))
    check = check_data(data, progress=False)
    assert check.ok, check.report()
    assert check.content_hash.startswith("pixels") and (check.counts.loc["train"] == 5).all()
    db = data.database
    planted = db.images.copy()
    planted[7] = data.query.images[0]
    leaky = RetrievalData(
        "leaky",
        data.classnames,
        data.query,
        data.train,
        ImageList(
            np.concatenate([planted, data.query.images[1:2]]),
            np.concatenate([db.labels, data.query.labels[1:2]]),
            [*db.ids, data.query.ids[1]],
        ),
        None,
    )
    check = check_data(leaky, progress=False)
    text = "\n".join(check.problems)
    assert f"1 query images are also in database (same id): {data.query.ids[1]}" in text
    assert f"identical content in database under another id: {data.query.ids[0]} = {db.ids[7]}" in text
    empty = ImageList(np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0, 10)))
    check = check_data(RetrievalData("e", data.classnames, empty, data.train, db, None), progress=False)
    assert "query is empty" in check.problems


def test_check_data_label_conflicts_and_duplicate_notes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    pixels[5] = pixels[4]  # two database images with the same pixels under different ids
    labels = np.eye(2, dtype=np.uint8)[[0, 1, 0, 1, 0, 1]]
    query = ImageList(pixels[:2], labels[:2], ["q0", "q1"])
    train = ImageList(pixels[2:4], labels[2:4], ["t0", "t1"])
    relabeled = labels[2:].copy()
    relabeled[0] = [0, 1]  # t0 is class 0 in train, class 1 in the database
    database = ImageList(pixels[2:], relabeled, ["t0", "t1", "d0", "d1"])
    check = check_data(RetrievalData("toy", ["a", "b"], query, train, database, None), progress=False)
    assert check.problems == ["1 ids have different labels in different splits: t0 (train vs database)"]
    assert any(
        n.startswith("database holds 1 content duplicates under other ids, e.g. d0 = d1") for n in check.notes
    )


def test_content_stamp_follows_the_files_and_pixels(lists_root, tmp_path, cifar_archive):
    root, entries = lists_root
    data = load_dataset("nuswide", root)
    stamp = kd.content_stamp(data)
    assert kd.content_stamp(load_dataset("nuswide", root)) == stamp
    image = root / "images" / entries["train"][0][0]
    raw, before = image.read_bytes(), image.stat()
    image.write_bytes(b"broken")
    assert kd.content_stamp(data) != stamp
    image.write_bytes(raw)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert kd.content_stamp(data) == stamp  # by size and time: nothing is read
    image.unlink()
    assert kd.content_stamp(data) != stamp
    memory = _load_tiny_cifar(_cifar_root(tmp_path, cifar_archive[0]))
    pixels = kd.content_stamp(memory)
    memory.train.images[0, 0, 0, 0] ^= 1
    assert kd.content_stamp(memory) != pixels


def test_unreadable_image_met_while_loading_names_the_file(tmp_path):
    good, broken, gone = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    _write_image(good, 0)
    broken.write_bytes(b"not an image")
    images = ImageList([good, broken, gone], np.eye(3), ["a.png", "b.png", "c.png"])
    assert images.load_image(0).size == (8, 8)
    with pytest.raises(
        ValueError, match=rf"image {re.escape(str(broken))} \(id 'b.png'\) cannot be read .*check-data"
    ):
        images[1]
    with pytest.raises(FileNotFoundError, match=rf"image {re.escape(str(gone))} \(id 'c.png'\) is missing"):
        images[2]


def test_world_data_sets_take_no_options():
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("shapes", query_per_class=3)
