"""Data path: synthetic set, bilevel split, batches and batched augmentation, resize and channel stats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.config import DataConfig, SyntheticConfig
from nas.data.datasets import DataError, ImageSet, make_synthetic
from nas.data.pipeline import Batches, bilevel_split, channel_stats, cutout, load_dataset, random_crop_flip, resize

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _random_set(n: int, c: int = 3, size: int = 8, seed: int = 0) -> ImageSet:
    """Random uint8 images whose label is their index, so a batch's labels say which images it holds."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n), [str(i) for i in range(n)])


def _synthetic_cfg(**kw) -> DataConfig:
    return DataConfig(synthetic=SyntheticConfig(classes=4, train=24, test=12), **kw)


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic():
    a, b = make_synthetic(40, 4, 16, seed=7), make_synthetic(40, 4, 16, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    c, d = load_dataset(_synthetic_cfg(), "train"), load_dataset(_synthetic_cfg(), "train")
    assert torch.equal(c.images, d.images) and torch.equal(c.labels, d.labels)


@pytest.mark.parametrize("split,n", [("train", 24), ("test", 12)])
def test_synthetic_shapes_and_dtypes(split, n):
    data = load_dataset(_synthetic_cfg(), split)
    assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert len(data) == n and data.classes == ["grating-0", "plaid-0", "grating-1", "plaid-1"]


def test_synthetic_labels_are_balanced():
    labels = make_synthetic(53, 10, 8, seed=3).labels
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() >= 5 and counts.max() <= 6 and counts.sum() == 53


def test_synthetic_classes_differ_in_orientation():
    # with 4 classes, class 0 is a grating along x (columns vary, rows do not) and class 2 one along y
    data = make_synthetic(80, 4, 16, seed=1)
    gray = data.images.float().mean(1)  # (N, H, W)
    across_x = gray.mean(1).var(-1)  # variance of the column means
    across_y = gray.mean(2).var(-1)  # variance of the row means
    ratio = across_x / across_y
    assert (ratio[data.labels == 0] > 10).all()
    assert (ratio[data.labels == 2] < 0.1).all()


@pytest.mark.parametrize("size", [8, 20])
def test_synthetic_image_size_is_respected(size):
    for split in ("train", "test"):
        assert load_dataset(_synthetic_cfg(image_size=size), split).images.shape[-3:] == (3, size, size)


def test_synthetic_train_and_test_differ():
    cfg = DataConfig(synthetic=SyntheticConfig(classes=4, train=12, test=12))
    assert not torch.equal(load_dataset(cfg, "train").images, load_dataset(cfg, "test").images)


# ---------------------------------------------------------------------------------------------- bilevel split

@pytest.mark.parametrize("portion", [0.5, 0.3, 0.8])
def test_bilevel_split_is_a_disjoint_cover_of_the_right_sizes(portion):
    train, valid = bilevel_split(50, portion, seed=0)
    assert len(train) == round(portion * 50) and len(train) + len(valid) == 50
    assert torch.equal(torch.cat([train, valid]).sort().values, torch.arange(50))


def test_bilevel_split_is_seeded():
    a, b, c = bilevel_split(40, 0.5, seed=1), bilevel_split(40, 0.5, seed=1), bilevel_split(40, 0.5, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_bilevel_split_subset_is_the_head_of_the_seeded_shuffle():
    train, valid = bilevel_split(100, 0.5, seed=4, subset=20)
    assert len(train) == 10 and len(valid) == 10
    both = torch.cat([train, valid])
    assert len(set(both.tolist())) == 20 and both.min() >= 0 and both.max() < 100
    full = torch.cat(bilevel_split(100, 0.5, seed=4))
    assert torch.equal(both, full[:20])


@pytest.mark.parametrize("n,portion,subset", [(1, 0.5, 0), (10, 0.01, 0), (10, 0.99, 0), (100, 0.5, 1)])
def test_bilevel_split_empty_half_is_a_data_error(n, portion, subset):
    with pytest.raises(DataError, match=r"data\.train_portion"):
        bilevel_split(n, portion, seed=0, subset=subset)


# ---------------------------------------------------------------------------------------------- batches

def _batches(data: ImageSet, **kw) -> Batches:
    mean, std = channel_stats(data.images)
    return Batches(data, batch_size=kw.pop("batch_size", 4), mean=mean, std=std, **kw)


def test_batches_len_with_and_without_drop_last():
    data = _random_set(10)
    assert len(_batches(data, drop_last=True)) == 2
    assert len(_batches(data, drop_last=False)) == 3
    assert len(_batches(_random_set(8), drop_last=True)) == len(_batches(_random_set(8), drop_last=False)) == 2
    assert len(_batches(_random_set(3), drop_last=True)) == 1  # fewer images than a batch: keep them


def test_batches_types_and_indices():
    data = _random_set(12)
    batches = _batches(data, indices=torch.tensor([1, 5, 7, 11]), batch_size=3, drop_last=False)
    x, y = next(batches.epoch(0))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    seen = torch.cat([y for _, y in batches.epoch(0)])
    assert sorted(seen.tolist()) == [1, 5, 7, 11]


def test_an_epoch_visits_every_index_once():
    data = _random_set(10)
    labels = torch.cat([y for _, y in _batches(data, batch_size=3, drop_last=False).epoch(0)])
    assert torch.equal(labels.sort().values, torch.arange(10))
    kept = torch.cat([y for _, y in _batches(data, batch_size=3, drop_last=True).epoch(0)])
    assert len(kept) == 9 and len(set(kept.tolist())) == 9
    ordered = torch.cat([y for _, y in _batches(data, batch_size=3, shuffle=False, drop_last=False).epoch(0)])
    assert torch.equal(ordered, torch.arange(10))


def test_epoch_order_changes_between_epochs_and_replays():
    batches = _batches(_random_set(32), batch_size=8)

    def order(b: Batches, e: int) -> torch.Tensor:
        return torch.cat([y for _, y in b.epoch(e)])

    assert not torch.equal(order(batches, 0), order(batches, 1))
    assert torch.equal(order(batches, 3), order(batches, 3))
    assert not torch.equal(order(batches, 0), order(_batches(_random_set(32), batch_size=8, seed=1), 0))


@pytest.mark.parametrize("augment,cut", [(False, 0), (True, 0), (True, 3), (False, 4)])
def test_epoch_start_resumes_bit_identically(augment, cut):
    batches = _batches(_random_set(22), batch_size=5, augment=augment, cutout=cut, seed=9, drop_last=False)
    full = list(batches.epoch(2))
    assert len(full) == len(batches) == 5
    for k in range(len(full) + 1):
        resumed = list(batches.epoch(2, start=k))
        assert len(resumed) == len(full) - k
        for (x, y), (fx, fy) in zip(resumed, full[k:]):
            assert torch.equal(x, fx) and torch.equal(y, fy)


def test_augmented_batches_differ_between_epochs():
    batches = _batches(_random_set(16), batch_size=16, shuffle=False, augment=True, cutout=4)
    assert not torch.equal(next(batches.epoch(0))[0], next(batches.epoch(1))[0])


def test_normalized_batches_have_zero_mean_and_unit_std():
    g = torch.Generator().manual_seed(0)
    images = torch.stack([torch.randint(0, 256, (20, 8, 8), generator=g),    # uniform
                          torch.randint(100, 140, (20, 8, 8), generator=g),  # narrow
                          torch.randint(0, 2, (20, 8, 8), generator=g) * 255], dim=1).to(torch.uint8)
    data = ImageSet(images, torch.arange(20), [])
    x = torch.cat([x for x, _ in _batches(data, batch_size=7, drop_last=False).epoch(0)])
    assert x.shape == (20, 3, 8, 8)
    mean = x.double().mean(dim=(0, 2, 3))
    std = x.double().std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-4)


# ---------------------------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_flip_keeps_shape_and_dtype(dtype):
    x = torch.ones(5, 3, 12, 10, dtype=dtype)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype


def test_random_crop_flip_is_a_zero_filled_shift_and_optional_flip():
    n, size, pad = 64, 8, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)  # no zeros: padding shows
    out = random_crop_flip(x, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    candidates = []  # every shift by -4..4 in each direction, unflipped and flipped
    for flip in (False, True):
        for oy in range(2 * pad + 1):
            for ox in range(2 * pad + 1):
                crop = padded[:, :, oy:oy + size, ox:ox + size]
                candidates.append(crop.flip(-1) if flip else crop)
    match = (torch.stack(candidates) == out[None]).flatten(2).all(-1)  # (162, N)
    assert match.any(0).all(), "some output is not a shifted (and flipped) copy of its input"
    assert (match.sum(0) == 1).all()  # random content: the (shift, flip) of each image is unique
    flipped = match.nonzero()[:, 0] >= (2 * pad + 1) ** 2  # candidate index -> flip, ordered by image
    assert flipped.any() and (~flipped).any()
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(5)))


def _holes(out: torch.Tensor) -> torch.Tensor:
    zero = out == 0  # (N, C, H, W)
    assert (zero == zero[:, :1]).all(), "the hole must be the same in every channel"
    return zero[:, 0]  # (N, H, W)




@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_cutout_zeroes_one_clipped_square_and_nothing_else(size):
    x = torch.ones(64, 3, 12, 12)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and (x == 1).all(), "the input must not be changed"
    assert ((out == 0) | (out == 1)).all(), "pixels outside the hole must be untouched"
    hole = _holes(out)
    count = hole.flatten(1).sum(1)
    assert (count >= 1).all(), "the centre pixel is always inside the square"
    assert (count <= size * size).all()
    rows, cols = hole.any(2), hole.any(1)  # (N, H), (N, W)
    assert torch.equal(hole, rows[:, :, None] & cols[:, None, :]), "the hole must be a rectangle"
    assert (rows.sum(1) <= size).all() and (cols.sum(1) <= size).all()


@pytest.mark.parametrize("size", list(range(1, 7)))
def test_cutout_square_away_from_the_border_is_size_by_size(size):
    out = cutout(torch.ones(256, 1, 16, 16), size, torch.Generator().manual_seed(0))
    count = _holes(out).flatten(1).sum(1)
    assert count.max() == size * size  # many centres are far enough from the border for a whole square


# ---------------------------------------------------------------------------------------------- resize, stats

@pytest.mark.parametrize("size", [8, 20])
def test_resize_keeps_a_constant_image_constant(size):
    images = torch.full((3, 3, 10, 14), 137, dtype=torch.uint8)
    out = resize(images, size)
    assert out.shape == (3, 3, size, size) and out.dtype == torch.uint8 and (out == 137).all()


def test_resize_does_not_depend_on_the_chunk():
    images = _random_set(5, size=12).images
    assert torch.equal(resize(images, 8, chunk=2), resize(images, 8))


def test_channel_stats_of_constant_images():
    images = torch.tensor([51, 0, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 5, 5)
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.2, 0.0, 1.0], abs=1e-9)
    assert std == pytest.approx([1e-3] * 3, abs=1e-12)  # clamped: a constant channel must not divide by 0


def test_channel_stats_match_torch_and_do_not_depend_on_the_chunk():
    images = _random_set(9, size=6).images
    mean, std = channel_stats(images, chunk=4)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    mean_all, std_all = channel_stats(images)
    assert mean == pytest.approx(mean_all, abs=1e-12) and std == pytest.approx(std_all, abs=1e-12)
