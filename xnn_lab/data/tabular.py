"""Real data shipped inside scikit-learn (digits, breast cancer) as tensors with fixed splits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from xnn_lab._core.checks import check_choice, check_tensor

SPLITS = ("train", "val", "test", "all")
# 70/15/15, stratified; the seed is fixed so that a split never changes between runs.
_VAL_FRACTION = 0.15
_TEST_FRACTION = 0.15
_SPLIT_SEED = 0


@dataclass(frozen=True, eq=False, repr=False)
class TabularData(Dataset):
    """A labelled table: features ``X``, labels ``y`` and their names; indexing gives ``(x, y)``.

    Attributes:
        X: features, shape (N, F), float32.
        y: class labels, shape (N,), int64.
        feature_names: F names, one per column of ``X``.
        class_names: one name per class; ``class_names[k]`` names label ``k``.
        split: which split this is: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        mean: per-feature mean of the raw train split, shape (F,), when ``X`` is standardised,
            else ``None``; raw values are ``X * std + mean``.
        std: per-feature standard deviation of the raw train split, shape (F,), or ``None``.
        image_shape: ``(H, W)`` when each row is a flattened image (digits), else ``None``.
    """

    X: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    split: str
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    image_shape: tuple[int, int] | None = None

    def __post_init__(self):
        check_tensor("X", self.X, ndim=2, floating=True)
        check_tensor("y", self.y, ndim=1, integral=True)
        if len(self.y) != len(self.X):
            raise ValueError(f"y must have one label per row of X ({len(self.X)}), got {len(self.y)}")
        if len(self.feature_names) != self.X.shape[1]:
            raise ValueError(f"feature_names must name the {self.X.shape[1]} columns of X, "
                             f"got {len(self.feature_names)} names")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        return self.X[index], self.y[index]

    def __repr__(self) -> str:
        return (f"TabularData(n={len(self)}, features={self.X.shape[1]}, "
                f"classes={len(self.class_names)}, split={self.split!r})")

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(X, y)`` pair, for code that slices the tensors directly (``xnn_lab.fit``)."""
        return self.X, self.y

    @property
    def images(self) -> torch.Tensor:
        """The rows of ``X`` as images, shape (N, H, W); only for image data such as digits."""
        if self.image_shape is None:
            raise ValueError("images needs image data (image_shape set, as for load_digits), "
                             f"got a table with {self.X.shape[1]} features and image_shape=None")
        return self.X.reshape(len(self.X), *self.image_shape)


@lru_cache(maxsize=None)
def _split_indices(name: str) -> dict[str, np.ndarray]:
    """Row indices of each split of a scikit-learn dataset, computed once per process."""
    y = getattr(sklearn.datasets, f"load_{name}")().target
    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=_TEST_FRACTION, stratify=y,
                                  random_state=_SPLIT_SEED)
    train, val = train_test_split(rest, test_size=_VAL_FRACTION / (1 - _TEST_FRACTION),
                                  stratify=y[rest], random_state=_SPLIT_SEED)
    return {"train": train, "val": val, "test": test, "all": rows}


def load_digits(split: str = "train") -> TabularData:
    """The 8x8 handwritten digits (1797 images, 10 classes) as a table of pixels in [0, 1].

    Args:
        split: ``"train"`` (70 %), ``"val"`` (15 %), ``"test"`` (15 %) or ``"all"``; the splits
            are stratified by class, disjoint, fixed, and together make up the whole set.

    Returns:
        ``TabularData`` with ``X`` (N, 64) float32 (the 0..16 pixel counts divided by 16),
        ``y`` (N,) int64, feature names ``"pixel_r_c"`` (row r, column c), class names
        ``"0"`` .. ``"9"``, and ``images`` (N, 8, 8).
    """
    check_choice("split", split, SPLITS)
    raw = sklearn.datasets.load_digits()
    rows = _split_indices("digits")[split]
    return TabularData(
        X=torch.tensor(raw.data[rows] / 16.0, dtype=torch.float32),
        y=torch.tensor(raw.target[rows], dtype=torch.int64),
        feature_names=tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8)),
        class_names=tuple(str(k) for k in range(10)),
        split=split,
        image_shape=(8, 8),
    )


def load_breast_cancer(split: str = "train", standardize: bool = True) -> TabularData:
    """The Wisconsin breast cancer table (569 tumours, 30 features; 0 = malignant, 1 = benign).

    Args:
        split: ``"train"`` (70 %), ``"val"`` (15 %), ``"test"`` (15 %) or ``"all"``; the splits
            are stratified by class, disjoint, fixed, and together make up the whole set.
        standardize: subtract the train split's per-feature mean and divide by its standard
            deviation, in every split, so that no statistic leaks from val or test.

    Returns:
        ``TabularData`` with ``X`` (N, 30) float32, ``y`` (N,) int64, scikit-learn's feature
        and class names, and, when standardised, the train ``mean`` and ``std`` (30,) that map
        ``X`` back to raw units (``X * std + mean``).
    """
    check_choice("split", split, SPLITS)
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be a bool, got {standardize!r} ({type(standardize).__name__})")
    raw = sklearn.datasets.load_breast_cancer()
    indices = _split_indices("breast_cancer")
    X = torch.tensor(raw.data, dtype=torch.float64)
    mean = std = None
    if standardize:
        train = X[indices["train"]]
        mean, std = train.mean(0), train.std(0, correction=0)
        X = (X - mean) / std
        mean, std = mean.float(), std.float()
    rows = torch.from_numpy(indices[split])
    return TabularData(
        X=X[rows].float(),
        y=torch.tensor(raw.target, dtype=torch.int64)[rows],
        feature_names=tuple(str(n) for n in raw.feature_names),
        class_names=tuple(str(n) for n in raw.target_names),
        split=split,
        mean=mean,
        std=std,
    )
