"""Data for search and training: data sets held as uint8 tensors on the device, the seeded bilevel split of
the training set (weights | alpha, DARTS Sec. 2.3), and batched augmentation (random crop with 4-pixel
padding, horizontal flip, cutout of DeVries & Taylor 2017) with no per-image Python in the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.data.datasets import (
    DataError,
    ImageSet,
    load_cifar,
    load_fashion_mnist,
    load_image_folder,
    load_imagenet16,
    make_synthetic,
)

SYNTHETIC_SEEDS = {"train": 1_000, "test": 2_000}  # the synthetic set is the same for every run seed

if TYPE_CHECKING:  # the recipe's schemas, read here as types only: at run time nas.config sits above the data code
    from nas.config import DataConfig, SearchConfig
    from nas.run.runtime import Run


def load_dataset(cfg: DataConfig, split: str) -> ImageSet:
    """The ``split`` ("train" or "test") of the configured data set, resized to data.image_size if set."""
    assert split in ("train", "test"), split
    root = Path(cfg.root).expanduser()  # "~/..." in a key=value override reaches us unexpanded
    if cfg.name in ("cifar10", "cifar100"):
        data = load_cifar(cfg.name, root, split)
    elif cfg.name == "fashion-mnist":
        data = load_fashion_mnist(root, split)
    elif cfg.name == "imagenet16-120":
        data = load_imagenet16(root, split, 120)
    elif cfg.name == "imagefolder":
        if not root.is_dir():
            raise DataError(f"data.root={cfg.root!r} is not a folder; for data.name=imagefolder it must hold "
                            "train/ and test/ with one folder of images per class")
        classes = None
        if split == "test":  # labels follow the training set's class folders
            if not (root / "train").is_dir():
                raise DataError(f"image folder {root / 'train'}/ not found; the test labels follow its class folders")
            classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        data = load_image_folder(root, split, cfg.image_size or 32, classes, cfg.cache)
    else:
        n = cfg.synthetic.train if split == "train" else cfg.synthetic.test
        s = cfg.synthetic
        data = make_synthetic(n, s.classes, cfg.image_size or 32, SYNTHETIC_SEEDS[split], s.noise, s.distractor)
    size = cfg.image_size
    if size is not None and tuple(data.images.shape[-2:]) != (size, size):
        data.images = resize(data.images, size)
    return data


def data_notes(cfg: DataConfig, data: ImageSet) -> list[str]:
    """What a run says about the training split it read: how an image folder was read, and a data.subset larger
    than the data."""
    notes = [f"{cfg.name} train split: {data.source}"] if data.source else []
    if cfg.subset > len(data):
        notes.append(f"data.subset={cfg.subset} is more than the {len(data)} training images; using all {len(data)}")
    return notes


def batch_notes(splits: dict[str, Batches]) -> list[str]:
    """A note for each split smaller than one batch: its epoch is then one short batch of all its images."""
    return [f"data.batch_size={b.batch_size} is more than the {b.num_images} images of the {name}: each epoch "
            f"runs 1 step of {b.num_images} images on it" for name, b in splits.items() if b.num_images < b.batch_size]


def dataset_info(cfg: DataConfig) -> tuple[int, int, int]:
    """(classes, channels, image side) of the configured data set, without reading its images."""
    native = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "fashion-mnist": (10, 1, 28),
              "imagenet16-120": (120, 3, 16)}
    if cfg.name in native:
        classes, channels, size = native[cfg.name]
    elif cfg.name == "synthetic":
        classes, channels, size = cfg.synthetic.classes, 3, 32
    else:
        train = Path(cfg.root).expanduser() / "train"
        if not train.is_dir():
            raise DataError(f"image folder {train}/ not found; data.root must hold train/ and test/, each with one "
                            "folder of images per class")
        classes, channels, size = sum(1 for p in train.iterdir() if p.is_dir()), 3, 32
    return classes, channels, cfg.image_size or size


def resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) to size x size with antialiased bilinear filtering."""
    out = []
    for i in range(0, len(images), chunk):
        x = F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.clamp_min(1e-3).tolist()


def bilevel_split(n: int, portion: float, seed: int, subset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint split of n training images: (weight-step indices, alpha-step indices)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if subset:
        order = order[:subset]
    cut = int(round(portion * len(order)))
    train, valid = order[:cut], order[cut:]
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"{len(order)} training images with data.train_portion={portion} leave an empty half; "
                        "use more images (data.subset) or a train_portion nearer 0.5")
    return train, valid


def batch_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


class Batches:
    """Batches of one split, held on the device as uint8: the order of each epoch and the augmentation of
    each batch are functions of (seed, epoch, batch), so any position can be replayed exactly.

    ``shard=(rank, world)``: this process's part of every batch in a distributed run. ``batch_size`` stays the
    global batch; each process gets its consecutive slice of it, augmented exactly as a single process would have
    augmented those images, so the order, the split and the augmentation are those of the single-process run."""

    def __init__(self, data: ImageSet, indices: torch.Tensor | None = None, *, batch_size: int,
                 mean: list[float], std: list[float], device: torch.device | str = "cpu", seed: int = 0,
                 shuffle: bool = True, augment: bool = False, cutout: int = 0, drop_last: bool = True,
                 shard: tuple[int, int] = (0, 1), pad: int = 4):
        idx = torch.arange(len(data)) if indices is None else indices
        self.images = data.images[idx].to(device)  # (N, C, H, W) uint8
        self.labels = data.labels[idx].to(device)  # (N,)
        self.batch_size, self.seed, self.shard = batch_size, seed, shard
        self.shuffle, self.augment, self.cutout = shuffle, augment, cutout
        self.pad = pad  # the random crop's zero padding, in pixels
        n = len(self.labels)
        self.drop_last = drop_last and n >= batch_size
        self.device = self.images.device
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # x_float = x_uint8 * scale + shift  ==  (x/255 - mean) / std
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``epoch``: (images float (B, C, H, W), labels (B,))."""
        n, b = self.num_images, self.batch_size
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(batch_seed(self.seed, epoch)))
        else:
            order = torch.arange(n)
        order = order.to(self.device)
        rank, world = self.shard
        for i in range(start, len(self)):
            batch = order[i * b:(i + 1) * b]
            part = shard_slice(len(batch), rank, world)
            idx = batch[part]
            x = self.images[idx]
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, i))
            if self.augment:
                x = random_crop_flip(x, g, self.pad, total=len(batch), part=part)
            x = torch.addcmul(self.shift, x.float(), self.scale)
            if self.cutout:  # after normalizing: the hole is the mean colour, as in DARTS
                x = cutout(x, self.cutout, g, total=len(batch), part=part)
            yield x, self.labels[idx]


@dataclass
class SearchData:
    """The training split as search reads it: a weight half and an alpha half on the run's device."""

    train: Batches
    valid: Batches
    stats: tuple[list[float], list[float]]   # channel mean and std of the training images
    classes: int
    channels: int
    notes: list[str]                          # what the reader and the batching want the user to know


def split_data(cfg: SearchConfig, data: ImageSet, halves: tuple[torch.Tensor, torch.Tensor], run: Run) -> SearchData:
    """The training set's weight half and alpha half (``halves``: bilevel_split's indices, found before the run
    directory is created, which a split that leaves an empty half refuses), batched on the run's device and recorded
    in meta.json; search never reads the test split."""
    dist = run.dist
    mean, std = channel_stats(data.images)
    w_idx, a_idx = halves
    common: dict[str, Any] = dict(batch_size=cfg.data.batch_size, mean=mean, std=std, device=run.device,
                                  augment=cfg.data.augment, cutout=cfg.data.cutout, shard=(dist.rank, dist.world))
    train = Batches(data, w_idx, seed=cfg.seed, **common)
    valid = Batches(data, a_idx, seed=cfg.seed + 1, **common)
    notes = data_notes(cfg.data, data) + batch_notes({"weight half": train, "alpha half": valid})
    out = SearchData(train, valid, (mean, std), len(data.classes), data.images.shape[1], notes)
    run.record_data({"name": cfg.data.name, "weight_images": train.num_images, "alpha_images": valid.num_images,
                     "classes": out.classes, "image_shape": list(data.images.shape[1:])})
    return out


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Process ``rank``'s consecutive part of a batch of n: sizes differ by at most one (a last partial batch)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4, total: int | None = None,
                     part: slice = slice(None)) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image at the original size, then a flip with p=0.5. The draws
    are made for a batch of ``total`` images (default: x's) and x takes those of ``part``, its place in it."""
    n, c, h, w = x.shape
    total = n if total is None else total
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (total,), generator=g)[part].to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (total,), generator=g)[part].to(x.device)
    flip = (torch.rand(total, generator=g)[part] < 0.5).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(x: torch.Tensor, size: int, g: torch.Generator, total: int | None = None,
           part: slice = slice(None)) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) centred at a random pixel of each image (draws as in
    random_crop_flip: for ``total`` images, x taking ``part``)."""
    n, _, h, w = x.shape
    total = n if total is None else total
    cy = torch.randint(0, h, (total,), generator=g)[part].to(x.device)
    cx = torch.randint(0, w, (total,), generator=g)[part].to(x.device)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    y0, x0 = cy - size // 2, cx - size // 2  # top-left corner; the square spans size pixels from there
    in_y = (ys >= y0[:, None]) & (ys < y0[:, None] + size)  # (N, H)
    in_x = (xs >= x0[:, None]) & (xs < x0[:, None] + size)  # (N, W)
    hole = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
    return x.masked_fill(hole[:, None], 0.0)
