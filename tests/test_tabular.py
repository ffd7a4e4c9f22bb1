"""The shipped tabular sets: fixed stratified splits that partition scikit-learn's data."""

from collections import Counter

import numpy as np
import pytest
import sklearn.datasets
import torch

from xnn_lab.data.tabular import TabularData, load_breast_cancer, load_digits

SPLITS = ("train", "val", "test")


def _row_counts(X, y) -> Counter:
    """The multiset of (row, label) pairs, so that duplicate rows in the raw data count correctly;
    rows compared in float32, the precision the loaders keep."""
    return Counter(zip(map(tuple, np.asarray(X, dtype=np.float32)), np.asarray(y)))


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_splits_partition_the_full_set_70_15_15_stratified(name):
    raw = getattr(sklearn.datasets, f"load_{name}")()
    scale = 16.0 if name == "digits" else 1.0
    load = load_digits if name == "digits" else (lambda split: load_breast_cancer(split, standardize=False))
    parts = {split: load(split) for split in SPLITS}

    sizes = {split: len(part) for split, part in parts.items()}
    assert sum(sizes.values()) == len(raw.target)
    for split, fraction in zip(SPLITS, (0.70, 0.15, 0.15)):
        assert abs(sizes[split] - fraction * len(raw.target)) <= 2

    # Disjoint and covering: the splits' rows, pooled, are exactly the raw rows (as a multiset).
    pooled = Counter()
    for part in parts.values():
        pooled += _row_counts(part.X.numpy() * scale, part.y.numpy())
    assert pooled == _row_counts(raw.data, raw.target)
    assert _row_counts(load("all").X.numpy() * scale, load("all").y.numpy()) == pooled

    # Stratified: every split holds each class in the full set's proportion, to within a sample or two.
    full = np.bincount(raw.target)
    for split, part in parts.items():
        counts = np.bincount(part.y.numpy(), minlength=len(full))
        assert np.all(np.abs(counts - full * len(part) / len(raw.target)) <= 2), split


def test_repeated_loads_are_identical():
    for split in SPLITS:
        a, b = load_digits(split), load_digits(split)
        assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
        c, d = load_breast_cancer(split), load_breast_cancer(split)
        assert torch.equal(c.X, d.X) and torch.equal(c.y, d.y)


def test_digits_contents():
    raw = sklearn.datasets.load_digits()
    data = load_digits("all")
    assert isinstance(data, TabularData) and data.split == "all"
    assert data.X.dtype == torch.float32 and data.y.dtype == torch.int64
    assert data.X.shape == (1797, 64) and data.X.min() == 0 and data.X.max() == 1
    np.testing.assert_array_equal(data.X.numpy() * 16, raw.data)
    np.testing.assert_array_equal(data.y.numpy(), raw.target)
    assert data.feature_names[:2] == ("pixel_0_0", "pixel_0_1") and data.feature_names[63] == "pixel_7_7"
    assert data.class_names == tuple("0123456789")
    assert data.mean is None and data.std is None
    np.testing.assert_array_equal(data.images.numpy() * 16, raw.images)


def test_breast_cancer_standardised_with_train_statistics_only():
    raw_train = load_breast_cancer("train", standardize=False).X.double()
    train = load_breast_cancer("train")
    torch.testing.assert_close(train.mean, raw_train.mean(0).float())
    torch.testing.assert_close(train.std, raw_train.std(0, correction=0).float())
    torch.testing.assert_close(train.X.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.X.std(0, correction=0), torch.ones(30), atol=1e-5, rtol=0)

    val = load_breast_cancer("val")
    torch.testing.assert_close(val.mean, train.mean)  # the train statistics, not val's own
    assert val.X.mean(0).abs().max() > 0.05
    for split in (*SPLITS, "all"):
        data = load_breast_cancer(split)
        raw = load_breast_cancer(split, standardize=False)
        torch.testing.assert_close(data.X * data.std + data.mean, raw.X, rtol=1e-5, atol=1e-4)
    assert raw.mean is None and raw.std is None
    assert train.class_names == ("malignant", "benign") and train.feature_names[0] == "mean radius"


def test_is_a_torch_dataset():
    data = load_digits("val")
    x, y = data[3]
    assert torch.equal(x, data.X[3]) and y == data.y[3]
    xb, yb = next(iter(torch.utils.data.DataLoader(data, batch_size=5)))
    assert xb.shape == (5, 64) and torch.equal(yb, data.y[:5])


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits("training")
    with pytest.raises(ValueError, match="split"):
        load_breast_cancer("Test")
    with pytest.raises(TypeError, match="split"):
        load_digits(0)
    with pytest.raises(TypeError, match="standardize"):
        load_breast_cancer("train", standardize="yes")
    with pytest.raises(ValueError, match="images"):
        load_breast_cancer("val").images
    with pytest.raises(ValueError, match="feature_names"):
        TabularData(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), ("a",), ("c",), "all")
