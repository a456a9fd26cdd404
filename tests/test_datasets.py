"""Data set readers: Fashion-MNIST idx files, CIFAR pickles (safe unpickling), image folders. Every file is
written here in tmp_path; no test touches the network."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shlex
import socket
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config import DataConfig
from nas.data.datasets import FASHION_CLASSES, DataError, ImageSet
from nas.data.pipeline import load_dataset

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")



# ---------------------------------------------------------------------------------------------- Fashion-MNIST

FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: magic 0x0000 08 <ndim> (unsigned bytes), each dimension big-endian, then the values."""
    return struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _fake_fashion(root: Path, sizes=(5, 3)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for (split, (images_name, labels_name)), n in zip(FASHION_FILES.items(), sizes):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (root / images_name).write_bytes(gzip.compress(_idx_bytes(images)))
        (root / labels_name).write_bytes(gzip.compress(_idx_bytes(labels)))
        out[split] = images, labels
    return out


def _fashion(root: Path, split: str) -> ImageSet:
    return load_dataset(DataConfig(name="fashion-mnist", root=str(root)), split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_reads_idx_files_exactly(tmp_path, split):
    images, labels = _fake_fashion(tmp_path)[split]
    data = _fashion(tmp_path, split)
    assert data.images.shape == (len(images), 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.classes == FASHION_CLASSES and len(data.classes) == 10


def test_fashion_mnist_reads_uncompressed_idx_files(tmp_path):
    images, labels = _fake_fashion(tmp_path)["test"]
    for name in FASHION_FILES["test"]:
        (tmp_path / name[:-3]).write_bytes(gzip.decompress((tmp_path / name).read_bytes()))
        (tmp_path / name).unlink()
    data = _fashion(tmp_path, "test")
    assert torch.equal(data.images[:, 0], torch.from_numpy(images)) and data.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("split,name", [(s, n) for s, names in FASHION_FILES.items() for n in names])
def test_fashion_mnist_missing_file(tmp_path, split, name):
    _fake_fashion(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(DataError, match=rf"{name}.*dataset-fashion-mnist") as e:
        _fashion(tmp_path, split)
    assert "\n" not in str(e.value)


def _idx_damage(kind: str, raw: bytes) -> bytes:
    gz = gzip.compress(raw)
    return {"values": gzip.compress(raw[:-5]),          # the idx body is short of what its header says
            "gzip-stream": gz[:len(gz) // 2],           # the .gz file ends mid-stream
            "header": gzip.compress(raw[:10]),          # the idx header itself is cut off
            "deflate": gz[:10] + b"\x07" + gz[11:],     # a deflate block of the reserved type 3
            "not-gzip": b"this is not gzip data"}[kind]




@pytest.mark.parametrize("kind", ["values", "gzip-stream", "not-gzip", "header", "deflate"])
def test_fashion_mnist_damaged_file_is_a_data_error(tmp_path, kind):
    _fake_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_idx_damage(kind, gzip.decompress(path.read_bytes())))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        _fashion(tmp_path, "test")


def test_fashion_mnist_images_and_labels_must_match(tmp_path):
    _fake_fashion(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match="do not match"):
        _fashion(tmp_path, "train")


@pytest.mark.skipif(not (REAL_FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST here")
def test_fashion_mnist_real_test_split():
    data = _fashion(REAL_FASHION, "test")
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(data.labels), torch.full((10,), 1000))


# ---------------------------------------------------------------------------------------------- CIFAR

def _dump(path: Path, obj, protocol: int = 2) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _fake_cifar10(root: Path, n: int = 3, protocol: int = 2, meta: bool = True) -> dict[str, tuple]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                              b"filenames": [b"x.png"] * n}, protocol)
        out[name] = data, labels
    if meta:
        _dump(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)],
                                        b"num_cases_per_batch": n, b"num_vis": 3072}, protocol)
    return out


def _cifar(root: Path, split: str, name: str = "cifar10") -> ImageSet:
    return load_dataset(DataConfig(name=name, root=str(root)), split)




@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_train_split(tmp_path, protocol):
    batches = _fake_cifar10(tmp_path, protocol=protocol)
    data = _cifar(tmp_path, "train")
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.uint8
    rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    for c, y, x in [(0, 0, 0), (0, 3, 17), (1, 5, 7), (1, 31, 0), (2, 0, 31), (2, 31, 31)]:
        assert data.images[:, c, y, x].tolist() == rows[:, c * 1024 + y * 32 + x].tolist()
    assert torch.equal(data.images.flatten(1), torch.from_numpy(rows))
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.classes == [f"class{i}" for i in range(10)]


def test_cifar10_rows_are_channel_major(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.zeros(3072, np.uint8)
    row[:1024], row[1024:2048], row[2048:] = 200, 100, 50  # R plane, G plane, B plane
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _dump(folder / name, {b"data": row[None], b"labels": [7]})
    data = _cifar(tmp_path, "test")
    assert data.images.shape == (1, 3, 32, 32) and data.labels.tolist() == [7]
    assert [data.images[0, c].unique().tolist() for c in range(3)] == [[200], [100], [50]]
    assert data.classes == [str(i) for i in range(10)]  # no batches.meta: the class numbers


def test_cifar10_test_split(tmp_path):
    data_rows, labels = _fake_cifar10(tmp_path, n=4)["test_batch"]
    data = _cifar(tmp_path, "test")
    assert torch.equal(data.images.flatten(1), torch.from_numpy(data_rows)) and data.labels.tolist() == labels


def test_cifar100_train_and_test(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for split, n in (("train", 5), ("test", 2)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _dump(folder / split, {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
                               b"coarse_labels": [v // 5 for v in fine], b"data": data})
        written[split] = data, fine
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for split, (data_rows, fine) in written.items():
        data = _cifar(tmp_path, split, "cifar100")
        assert data.images.shape == (len(fine), 3, 32, 32)
        assert torch.equal(data.images.flatten(1), torch.from_numpy(data_rows)) and data.labels.tolist() == fine
        assert data.classes == [f"fine{i}" for i in range(100)]


class _RunsAShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar_pickle_naming_other_globals_is_refused(tmp_path):
    _fake_cifar10(tmp_path)
    marker = tmp_path / "executed"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _dump(path, {b"data": _RunsAShell(f"touch {shlex.quote(str(marker))}"), b"labels": [0]})
    with pytest.raises(DataError, match="refusing to load"):
        _cifar(tmp_path, "train")
    assert not marker.exists()
    _dump(path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": Path("x")})
    with pytest.raises(DataError, match="data_batch_2"):
        _cifar(tmp_path, "train")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-dict", "short-rows"])
def test_cifar_damaged_batch_is_a_data_error(tmp_path, damage):
    _fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif damage == "not-a-dict":
        _dump(path, [1, 2, 3])
    else:
        _dump(path, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match="data_batch_4"):
        _cifar(tmp_path, "train")


def test_cifar_corrupted_encoding_name_is_a_data_error(tmp_path):
    _fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    raw = path.read_bytes()
    assert b"latin1" in raw
    path.write_bytes(raw.replace(b"latin1", b"latinX", 1))  # one damaged byte
    with pytest.raises(DataError, match="data_batch_1"):
        _cifar(tmp_path, "train")


def test_cifar_batch_with_too_few_labels_is_a_data_error(tmp_path):
    _fake_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [1]})
    with pytest.raises(DataError, match="test_batch"):
        _cifar(tmp_path, "test")


def test_cifar_missing_batch_names_it_and_the_archive(tmp_path):
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        _cifar(tmp_path, "train")


@pytest.mark.parametrize("name,folder,archive,cls", [
    ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "CIFAR10"),
    ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz", "CIFAR100")])
@pytest.mark.parametrize("failure", [urllib.error.URLError("no network"), RuntimeError("first line\nsecond line")])
def test_cifar_failed_download_is_a_one_line_data_error(tmp_path, monkeypatch, name, folder, archive, cls, failure):
    import torchvision.datasets

    calls = []

    def offline(root, train=True, download=False, **kw):
        calls.append((root, download))
        raise failure

    monkeypatch.setattr(torchvision.datasets, cls, offline)  # the real download is never reached
    root = tmp_path / "empty"
    timeout = socket.getdefaulttimeout()
    with pytest.raises(DataError) as e:
        _cifar(root, "train", name)
    message = str(e.value)
    assert calls == [(str(root), True)]
    assert folder in message and archive in message and str(root) in message
    assert "\n" not in message and ("no network" in message or "first line" in message)
    assert socket.getdefaulttimeout() == timeout


# ---------------------------------------------------------------------------------------------- image folder

def _png(path: Path, mode: str, size: tuple[int, int], color) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _fake_folder(root: Path) -> None:
    _png(root / "train" / "cat" / "a.png", "RGB", (10, 12), (255, 0, 0))
    _png(root / "train" / "cat" / "b.png", "L", (5, 5), 100)
    _png(root / "train" / "dog" / "c.png", "RGBA", (20, 8), (0, 0, 255, 128))
    _png(root / "train" / "dog" / "d.PNG", "RGB", (8, 8), (1, 2, 3))
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    _png(root / "test" / "cat" / "e.png", "RGB", (16, 16), (0, 255, 0))
    _png(root / "test" / "dog" / "f.png", "L", (9, 30), 7)


def _folder(root: Path, split: str, image_size: int | None = 8) -> ImageSet:
    return load_dataset(DataConfig(name="imagefolder", root=str(root), image_size=image_size), split)


def test_imagefolder_loads_resizes_and_labels_by_sorted_class(tmp_path):
    _fake_folder(tmp_path)
    train = _folder(tmp_path, "train")
    assert train.images.shape == (4, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1]
    colours = [tuple(im.flatten(1).unique(dim=1).flatten().tolist()) for im in train.images]
    assert colours == [(255, 0, 0), (100, 100, 100), (0, 0, 255), (1, 2, 3)]  # constant images stay constant
    test = _folder(tmp_path, "test")
    assert test.images.shape == (2, 3, 8, 8) and test.labels.tolist() == [0, 1] and test.classes == train.classes
    assert _folder(tmp_path, "test", image_size=None).images.shape == (2, 3, 32, 32)


def test_an_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from nas.data.pipeline import data_notes

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "img"
    _fake_folder(root)
    first = _folder(root, "train")
    assert "4 images decoded in" in first.source and "cached in" in first.source
    cached = list((tmp_path / "cache" / "imagefolder").glob("*.pt"))
    assert len(cached) == 1
    again = _folder(root, "train")
    assert again.source == f"4 images read from the cache {cached[0]}"
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    notes = data_notes(DataConfig(name="imagefolder", root=str(root)), again)
    assert notes == [f"imagefolder train split: {again.source}"]
    _png(root / "train" / "cat" / "a.png", "RGB", (16, 16), (0, 255, 0))  # a changed image: a new key, decoded again
    changed = _folder(root, "train")
    assert "decoded" in changed.source and not torch.equal(changed.images, first.images)
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.pt"))) == 2
    off = load_dataset(DataConfig(name="imagefolder", root=str(root), image_size=8, cache=False), "train")
    assert "decoded" in off.source and "cached" not in off.source


def test_a_damaged_cache_file_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    _fake_folder(tmp_path / "img")
    first = _folder(tmp_path / "img", "train")
    (path,) = (tmp_path / "cache" / "imagefolder").glob("*.pt")
    path.write_bytes(b"not a tensor")
    again = _folder(tmp_path / "img", "train")
    assert "decoded" in again.source and torch.equal(again.images, first.images)


def test_a_subset_larger_than_the_data_uses_all_of_it_and_says_so():
    from nas.data.pipeline import bilevel_split, data_notes

    data = ImageSet(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), [])
    w, a = bilevel_split(len(data), 0.5, 0, subset=5000)
    assert len(w) + len(a) == 10
    notes = data_notes(DataConfig(subset=5000), data)
    assert notes == ["data.subset=5000 is more than the 10 training images; using all 10"]


def test_imagefolder_test_labels_follow_the_train_classes(tmp_path):
    for name in ("ant", "bee", "cow"):
        _png(tmp_path / "train" / name / "x.png", "RGB", (4, 4), (0, 0, 0))
    _png(tmp_path / "test" / "cow" / "y.png", "RGB", (4, 4), (0, 0, 0))
    _png(tmp_path / "test" / "bee" / "z.png", "RGB", (4, 4), (0, 0, 0))
    test = _folder(tmp_path, "test")
    assert test.classes == ["ant", "bee", "cow"] and test.labels.tolist() == [1, 2]


def _no_train(root: Path) -> Path:
    _fake_folder(root)
    for p in (root / "train").rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted((root / "train").rglob("*"), reverse=True):
        p.rmdir()
    (root / "train").rmdir()
    return root / "train"


def _empty_class(root: Path) -> Path:
    _fake_folder(root)
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "readme.txt").write_text("no images here")
    return root / "train" / "emu"


def _unknown_test_class(root: Path) -> Path:
    _fake_folder(root)
    _png(root / "test" / "fox" / "g.png", "RGB", (4, 4), (0, 0, 0))
    return root / "test" / "fox"


def _garbage_png(root: Path) -> Path:
    _fake_folder(root)
    (root / "train" / "cat" / "x.png").write_bytes(b"\x89garbage, not a png")
    return root / "train" / "cat" / "x.png"


def _not_a_folder(root: Path) -> Path:
    return root / "nothing-here"


def _a_file(root: Path) -> Path:
    (root / "file").write_text("x")
    return root / "file"


def _empty_test(root: Path) -> Path:
    (root / "train" / "cat").mkdir(parents=True)
    _png(root / "train" / "cat" / "a.png", "RGB", (4, 4), (0, 0, 0))
    (root / "test" / "cat").mkdir(parents=True)
    return root / "test"


@pytest.mark.parametrize("make,split,as_root", [
    (_no_train, "train", False), (_empty_class, "train", False), (_unknown_test_class, "test", False),
    (_garbage_png, "train", False), (_not_a_folder, "train", True), (_a_file, "test", True),
    (_empty_test, "test", False)])
def test_imagefolder_errors_name_the_path(tmp_path, make, split, as_root):
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        _folder(path if as_root else tmp_path, split)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def write_fake_imagenet16(root: Path, per_batch: int = 12) -> Path:
    """The down-sampled ImageNet 16x16 batch files as NAS-Bench-201 reads them: pickled dicts of 'data' (N, 768)
    uint8 rows, channel-major, and 'labels' 1..1000."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        labels = [int(x) for x in rng.integers(1, 241, per_batch)]  # half of them beyond the first 120 classes
        labels[0], labels[1] = 1, 120
        data = np.stack([np.full(768, label % 256, dtype=np.uint8) for label in labels])
        with (root / name).open("wb") as f:
            pickle.dump({"data": data, "labels": labels, "mean": np.zeros(768)}, f, protocol=2)
    return root


def test_imagenet16_keeps_the_first_120_classes_as_nas_bench_201_does(tmp_path: Path) -> None:
    root = write_fake_imagenet16(tmp_path / "ImageNet16")
    cfg = DataConfig(name="imagenet16-120", root=str(root))
    for split, files in (("train", 10), ("test", 1)):
        data = load_dataset(cfg, split)
        raw = [pickle.loads((root / name).read_bytes(), encoding="latin1")["labels"]
               for name in ([f"train_data_batch_{i}" for i in range(1, 11)] if split == "train" else ["val_data"])]
        kept = [label for batch in raw for label in batch if label <= 120]
        assert len(raw) == files and data.images.shape == (len(kept), 3, 16, 16) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == [label - 1 for label in kept]  # 0-based
        assert data.labels.min() >= 0 and data.labels.max() <= 119 and len(data.classes) == 120
        assert torch.equal(data.images[:, 0, 0, 0], torch.tensor([label % 256 for label in kept], dtype=torch.uint8))


def test_imagenet16_errors_name_the_missing_file(tmp_path: Path) -> None:
    root = write_fake_imagenet16(tmp_path / "ImageNet16")
    (root / "train_data_batch_7").unlink()
    with pytest.raises(DataError, match="ImageNet16 file .*train_data_batch_7 is missing; data.root must hold"):
        load_dataset(DataConfig(name="imagenet16-120", root=str(root)), "train")
    (root / "val_data").write_bytes(b"junk")
    with pytest.raises(DataError, match="is not an ImageNet16 python batch file"):
        load_dataset(DataConfig(name="imagenet16-120", root=str(root)), "test")


def test_a_search_runs_on_imagenet16_120(tmp_path: Path) -> None:
    from nas.cli import search_main
    from nas.space.genotype import read_genotype

    root = write_fake_imagenet16(tmp_path / "ImageNet16", per_batch=16)
    run_dir = tmp_path / "run"
    assert search_main(["data.name=imagenet16-120", f"data.root={root}", "model.space=nb201", "model.C=4",
                        "model.layers=1", "data.batch_size=8", "search.epochs=1", "run.tensorboard=false",
                        f"run.dir={run_dir}", "--quiet"]) == 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["data"]["classes"] == 120 and meta["data"]["image_shape"] == [3, 16, 16]
    assert read_genotype(run_dir / "genotype.json").space == "nb201"
