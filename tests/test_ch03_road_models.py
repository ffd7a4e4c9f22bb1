"""Chapter 3's additions: named deletion/insertion baselines (RISE's zero and blur), ROAD's noisy
linear imputation and curves, the VGG-style PlainCNN, and torchvision models loaded from disk."""

import numpy as np
import pytest
import torch
from torch import nn

from xnn_lab.cam import CAM, GradCAM
from xnn_lab.metrics import (BASELINES, blur_images, deletion_curve, insertion_curve, noisy_linear_imputation,
                             road_curve)
from xnn_lab.models import PlainCNN, SmallCNN, imagenet_image, imagenet_weights_path, torchvision_model

_OFFSETS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
            ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def _brute_force_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear system, one equation per removed pixel, solved densely."""
    channels, height, width = image.shape
    unknown = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    index = {p: k for k, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), channels))
    for k, (i, j) in enumerate(unknown):
        for (di, dj), weight in _OFFSETS:
            y, x = i + di, j + dj
            if 0 <= y < height and 0 <= x < width:
                a[k, k] += weight
                if removed[y, x]:
                    a[k, index[(y, x)]] -= weight
                else:
                    b[k] += weight * image[:, y, x]
    solution = np.linalg.solve(a, b)
    out = image.copy()
    for k, (i, j) in enumerate(unknown):
        out[:, i, j] = solution[k]
    return out


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_imputation_matches_a_brute_force_sparse_solve(method):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 9, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(3, 9, 7, generator=g) < 0.6
    removed[2, 2:7, 1:6] = True  # a block, as a saliency map's top pixels make
    filled = noisy_linear_imputation(images, removed, noise=0.0, method=method, tol=1e-12)
    for k in range(3):
        expected = _brute_force_imputation(images[k].numpy(), removed[k].numpy())
        np.testing.assert_allclose(filled[k].numpy(), expected, atol=1e-9)
    assert torch.equal(filled[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)])


def test_imputation_methods_agree_and_fill_an_all_removed_image_with_zeros():
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    removed = torch.rand(2, 8, 8) < 0.7
    removed[1] = True
    direct = noisy_linear_imputation(images, removed, noise=0.01, seed=4, method="direct")
    cg = noisy_linear_imputation(images, removed, noise=0.01, seed=4, method="cg", tol=1e-10)
    assert torch.allclose(direct, cg, atol=1e-8)
    filled = noisy_linear_imputation(images, removed, noise=0.0)
    assert torch.equal(filled[1], torch.zeros(3, 8, 8, dtype=torch.float64))


def test_imputation_noise_is_seeded_and_only_on_removed_pixels():
    images = torch.rand(2, 3, 8, 8)
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[:, 2:5, 3:6] = True
    clean = noisy_linear_imputation(images, removed, noise=0.0)
    noisy = noisy_linear_imputation(images, removed, noise=0.01, seed=3)
    assert torch.equal(noisy, noisy_linear_imputation(images, removed, noise=0.01, seed=3))
    difference = (noisy - clean)[:, :, 2:5, 3:6]
    assert 0.003 < difference.std() < 0.03
    keep = ~removed[:, None].expand_as(images)
    assert torch.equal(noisy[keep], images[keep])
    # a constant image is imputed as the same constant
    flat = noisy_linear_imputation(torch.full((1, 1, 6, 6), 0.3), removed[:1, 1:7, 1:7], noise=0.0)
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-5)


def test_imputation_errors():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match="removed must be a bool"):
        noisy_linear_imputation(images, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="removed must have shape"):
        noisy_linear_imputation(images, torch.zeros(2, 7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise must be >= 0"):
        noisy_linear_imputation(images, torch.zeros(2, 8, 8, dtype=torch.bool), noise=-1.0)
    with pytest.raises(RuntimeError, match="did not converge"):
        removed = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.7
        noisy_linear_imputation(images, removed, method="cg", max_iter=1)
    with pytest.raises(ValueError, match="method must be one of"):
        noisy_linear_imputation(images, removed, method="lu")


class _MeanOfTopLeft(nn.Module):
    """Class 1's logit is 10 x (the top-left quarter's mean brightness - 0.5)."""

    def forward(self, x):
        score = 10 * (x[:, :, :4, :4].mean((1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(score), score], 1)


def test_road_curve_morf_and_lerf():
    images = torch.full((2, 3, 8, 8), 0.2)
    images[:, :, :4, :4] = 0.9
    maps = torch.zeros(2, 8, 8)
    maps[:, :4, :4] = 1.0  # the pixels the model reads are the most salient
    model = _MeanOfTopLeft()
    morf = road_curve(model, images, maps, 1, fractions=[0.0, 0.25, 0.5], noise=0.0)
    lerf = road_curve(model, images, maps, 1, fractions=[0.0, 0.25, 0.5], order="lerf", noise=0.0)
    assert morf.shape == lerf.shape == (2, 3)
    assert torch.allclose(morf[:, 0], lerf[:, 0])
    # MoRF replaces the read pixels by their darker neighbours' values; LeRF never touches them
    assert (morf[:, 0] > 0.95).all() and (morf[:, 1] < 0.1).all()
    assert torch.allclose(lerf, lerf[:, :1].expand_as(lerf))
    with pytest.raises(ValueError, match="order must be one of"):
        road_curve(model, images, maps, 1, order="up")
    with pytest.raises(ValueError, match="fractions must be"):
        road_curve(model, images, maps, 1, fractions=[1.5])
    with pytest.raises(ValueError, match="maps must have shape"):
        road_curve(model, images, maps[:1], 1)


def test_named_baselines():
    assert BASELINES == ("grey", "zero", "blur")
    model = _MeanOfTopLeft()
    images = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    for name, canvas in (("grey", torch.full_like(images, 0.5)), ("zero", torch.zeros_like(images)),
                         ("blur", blur_images(images))):
        for curve in (deletion_curve, insertion_curve):
            assert torch.allclose(curve(model, images, maps, 1, steps=4, baseline=name),
                                  curve(model, images, maps, 1, steps=4, baseline=canvas))
    with pytest.raises(ValueError, match="baseline must be one of"):
        deletion_curve(model, images, maps, 1, baseline="black")
    with pytest.raises(TypeError, match="baseline must be a number"):
        deletion_curve(model, images, maps, 1, baseline=[0.5])


def test_blur_images():
    images = torch.rand(2, 3, 20, 20)
    blurred = blur_images(images)
    assert blurred.shape == images.shape
    assert blurred.std() < images.std() / 3
    constant = torch.full((1, 1, 12, 12), 0.7)
    assert torch.allclose(blur_images(constant), constant)
    assert torch.allclose(blur_images(images, kernel_size=1), images)
    # separable Gaussian = the 2-D Gaussian kernel
    offsets = torch.arange(11.0) - 5
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / 50)
    padded = torch.nn.functional.pad(images.view(6, 1, 20, 20), (5,) * 4, mode="reflect")
    direct = torch.nn.functional.conv2d(padded, (kernel / kernel.sum())[None, None]).view_as(images)
    assert torch.allclose(blurred, direct, atol=1e-5)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        blur_images(images, kernel_size=4)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        blur_images(images, sigma=0.0)


def test_plain_cnn_has_no_gap_head_and_grad_cam_explains_it():
    torch.manual_seed(0)
    model = PlainCNN(5, widths=(4, 8), image_size=16, hidden=8).eval()
    x = torch.rand(3, 3, 16, 16)
    assert model(x).shape == (3, 5)
    with pytest.raises(ValueError, match="global average pooling"):
        CAM(model, "features")
    maps = GradCAM(model, "features")(x)
    assert maps.shape == (3, 16, 16) and (maps >= 0).all()
    with pytest.raises(ValueError, match="image_size must be divisible"):
        PlainCNN(5, widths=(4, 8), image_size=18)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(1, 3, 32, 32))
    # the convolutional blocks are SmallCNN's, so trained blocks can be copied over
    small = SmallCNN(5, widths=(4, 8))
    model.features.load_state_dict(small.features.state_dict())


def test_torchvision_model_random_weights_and_grad_cam():
    captum = pytest.importorskip("captum.attr")
    model = torchvision_model("resnet18", seed=0)
    assert not model.training
    again = torchvision_model("resnet18", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    x = imagenet_image((torch.rand(40, 60, 3) * 255).to(torch.uint8), size=64)
    assert x.shape == (1, 3, 64, 64)
    maps = GradCAM(model, "layer4")(x, 3)
    reference = captum.LayerGradCam(model, model.layer4).attribute(x, target=3, relu_attributions=True)
    reference = torch.nn.functional.interpolate(reference, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(maps, reference[:, 0].detach(), atol=1e-5)


def test_torchvision_model_loads_from_disk_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        torchvision_model("resnet18", "imagenet")
    source = torchvision_model("resnet18", seed=1)
    cached = imagenet_weights_path("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)
    loaded = torchvision_model("resnet18", "imagenet")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    path = tmp_path / "mine.pth"
    torch.save(source.state_dict(), path)
    assert torch.equal(torchvision_model("resnet18", path).fc.weight, source.fc.weight)
    with pytest.raises(FileNotFoundError, match="no file"):
        torchvision_model("resnet18", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="cannot load"):
        torchvision_model("vgg11", path)
    with pytest.raises(ValueError, match="arch must be one of"):
        torchvision_model("alexnet")
    with pytest.raises(ValueError, match="image must be"):
        imagenet_image(torch.rand(5, 5))
