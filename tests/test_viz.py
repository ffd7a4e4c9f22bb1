"""The figures draw on Agg for every accepted input shape and return what they drew on."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xnn_lab import History
from xnn_lab.viz import overlay, plot_history, plot_ice, show_images, show_overlays

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _agg():
    """Draw off screen; the shared conftest closes the figures after each test."""
    matplotlib.use("Agg")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 1, 8, 8), (5, 8, 8)])
def test_show_images(shape, device):
    images = torch.rand(shape, device=device)
    fig = show_images(images, titles=[str(i) for i in range(5)], ncols=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # two rows of three, the unused sixth cell removed
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert fig.axes[4].get_title() == "4"
    drawn = fig.axes[1].images[0].get_array()
    expected = images[1].cpu().numpy()
    np.testing.assert_allclose(drawn, expected.transpose(1, 2, 0) if shape[1] == 3 else expected.reshape(8, 8))
    fig.canvas.draw()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("image_shape", [(3, 16, 16), (1, 16, 16), (16, 16)])
def test_overlay_resizes_and_scales_the_heatmap(image_shape, device):
    image = torch.rand(image_shape, device=device)
    heatmap = torch.arange(16.0, device=device).reshape(4, 4) * 3 + 5
    ax = overlay(image, heatmap, title="cam")
    assert isinstance(ax, Axes) and ax.get_title() == "cam" and len(ax.images) == 2
    heat = ax.images[1].get_array()
    assert heat.shape == (16, 16)
    assert heat.min() == pytest.approx(0) and heat.max() == pytest.approx(1)


def test_overlay_signed_is_centred_at_zero():
    fig, ax = plt.subplots()
    heatmap = torch.tensor([[-1.0, 0.0], [2.0, 4.0]])
    assert overlay(torch.rand(2, 2), heatmap, ax=ax, signed=True) is ax
    heat = ax.images[1]
    np.testing.assert_allclose(heat.get_array(), heatmap.numpy() / 4)  # same size: not resized
    assert heat.get_clim() == (-1, 1) and heat.get_cmap().name == "RdBu_r"
    assert overlay(torch.rand(2, 2), torch.zeros(2, 2)).images[1].get_array().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_show_overlays(device):
    images = torch.rand(4, 3, 12, 12, device=device)
    heatmaps = torch.randn(4, 3, 3, device=device)
    fig = show_overlays(images, heatmaps, titles=list("abcd"), ncols=3, signed=True)
    assert len(fig.axes) == 4 and all(len(ax.images) == 2 for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes] == list("abcd")
    fig.canvas.draw()


@pytest.mark.parametrize("device", DEVICES)
def test_plot_ice_draws_at_most_max_curves_and_the_mean(device):
    grid = torch.linspace(0, 1, 6, device=device)
    curves = torch.rand(80, 6, device=device)
    ax = plot_ice(grid, curves, feature_name="pixel_3_4", max_curves=20)
    assert len(ax.lines) == 21 and ax.get_xlabel() == "pixel_3_4"
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), curves.mean(0).cpu().numpy(), rtol=1e-6)
    assert len(plot_ice(grid, curves[:5]).lines) == 6


def test_plot_history():
    fig = plot_history({"train_loss": [1.0, 0.5, 0.3], "train_acc": [0.5, 0.7, 0.9]})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]
    full = {"train_loss": [1.0, 0.5], "train_acc": [0.5, 0.7], "val_loss": [1.1, 0.6],
            "val_acc": [torch.tensor(0.4), torch.tensor(0.6)]}
    fig, axes = plt.subplots(1, 2)
    assert plot_history(full, ax=axes) is fig
    assert [len(ax.lines) for ax in axes] == [2, 2]
    np.testing.assert_allclose(axes[1].lines[1].get_ydata(), [0.4, 0.6])


def test_plot_history_takes_a_training_history():
    history = History(train_loss=[0.9, 0.4], train_acc=[0.6, 0.8])  # no validation: one line each
    assert [len(ax.lines) for ax in plot_history(history).axes] == [1, 1]
    history.val_loss, history.val_acc = [1.0, 0.5], [0.5, 0.7]
    assert [len(ax.lines) for ax in plot_history(history).axes] == [2, 2]


def test_errors_name_the_argument():
    cases = [
        (TypeError, "images", lambda: show_images(np.zeros((2, 8, 8)))),
        (ValueError, "images", lambda: show_images(torch.rand(8, 8))),
        (ValueError, "images", lambda: show_images(torch.rand(2, 2, 8, 8))),
        (ValueError, "titles", lambda: show_images(torch.rand(2, 8, 8), titles=["a"])),
        (ValueError, "ncols", lambda: show_images(torch.rand(2, 8, 8), ncols=0)),
        (ValueError, "heatmap", lambda: overlay(torch.rand(8, 8), torch.rand(1, 4, 4))),
        (ValueError, "alpha", lambda: overlay(torch.rand(8, 8), torch.rand(4, 4), alpha=2)),
        (ValueError, "heatmaps", lambda: show_overlays(torch.rand(3, 8, 8), torch.rand(2, 4, 4))),
        (ValueError, "curves", lambda: plot_ice(torch.rand(5), torch.rand(3, 4))),
        (ValueError, "max_curves", lambda: plot_ice(torch.rand(4), torch.rand(3, 4), max_curves=-1)),
        (ValueError, "train_acc", lambda: plot_history({"train_loss": [1.0]})),
        (TypeError, "history", lambda: plot_history(3.0)),
        (ValueError, "train_loss", lambda: plot_history([1.0, 2.0])),
        (TypeError, "train_loss", lambda: plot_history({"train_loss": ["x"], "train_acc": [1.0]})),
        (TypeError, "ax", lambda: plot_history({"train_loss": [1.0], "train_acc": [1.0]},
                                               ax=plt.subplots()[1])),
        (TypeError, "ax", lambda: plot_history({"train_loss": [1.0], "train_acc": [1.0]},
                                               ax=plt.figure())),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()
