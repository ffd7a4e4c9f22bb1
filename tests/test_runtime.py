import numpy as np
import pytest
import torch

import xnn_lab
from xnn_lab._core.checks import check_choice, check_float, check_int, check_tensor


def test_device_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert xnn_lab.device().type == expected


def test_seed_everything_repeats_every_generator():
    g1 = xnn_lab.seed_everything(7)
    first = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g1))
    g2 = xnn_lab.seed_everything(7)
    second = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g2))
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])
    xnn_lab.seed_everything(8)
    assert not torch.equal(torch.rand(3), first[0])


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(bad, error):
    with pytest.raises(error, match="seed"):
        xnn_lab.seed_everything(bad)


@pytest.mark.parametrize("value, quick", [("1", True), ("yes", True), ("", False), ("0", False), ("false", False)])
def test_quick_mode_reads_environment(monkeypatch, value, quick):
    monkeypatch.setenv("XNN_LAB_QUICK", value)
    assert xnn_lab.is_quick() is quick


def test_quick_mode_off_when_unset(monkeypatch):
    monkeypatch.delenv("XNN_LAB_QUICK", raising=False)
    assert xnn_lab.is_quick() is False


def test_checks_name_the_argument_and_what_was_given():
    with pytest.raises(ValueError, match=r"width must be >= 1, got 0"):
        check_int("width", 0, minimum=1)
    with pytest.raises(TypeError, match=r"rate must be a number, got 'x' \(str\)"):
        check_float("rate", "x")
    with pytest.raises(ValueError, match=r"rate must be > 0"):
        check_float("rate", 0.0, minimum=0.0, open_min=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        check_choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got a tensor of shape \(2, 3\)"):
        check_tensor("x", torch.zeros(2, 3), ndim=4)
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        check_tensor("y", torch.zeros(2), integral=True)
