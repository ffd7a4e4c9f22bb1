"""torchvision classifiers with weights from disk only: the real-image path of chapter 3.

torchvision's ``weights=`` argument downloads the file when it is missing; :func:`torchvision_model`
never does. It builds the architecture with random weights and loads a state dict that is
already on disk: a file you name, or the one torchvision would have cached in torch hub's folder
(``torch.hub.get_dir()/checkpoints``) after an earlier download.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._core.checks import check_finite, check_int

#: For each supported architecture, the layer Grad-CAM explains by default: the last convolutional block.
GRADCAM_LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "vgg11": "features.19", "vgg16": "features.29"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_weights_path(arch: str) -> Path:
    """Where torch hub keeps torchvision's default ImageNet weights of ``arch`` (the file may be absent).

    Reads only the file name from torchvision's weight registry; nothing is downloaded.
    """
    import torchvision

    _check_arch(arch)
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _check_arch(arch) -> str:
    if not isinstance(arch, str) or arch not in GRADCAM_LAYERS:
        raise ValueError(f"arch must be one of {tuple(GRADCAM_LAYERS)}, got {arch!r}")
    return arch


def torchvision_model(arch: str = "resnet18", weights=None, *, seed: int = 0) -> nn.Module:
    """A torchvision classifier in eval mode, with weights loaded from disk, never downloaded.

    Args:
        arch: ``"resnet18"``, ``"resnet50"``, ``"vgg11"`` or ``"vgg16"`` (the keys of
            :data:`GRADCAM_LAYERS`, which names the layer to explain).
        weights: ``None`` for random weights (drawn from ``seed``); ``"imagenet"`` for
            torchvision's default ImageNet weights from torch hub's cache
            (:func:`imagenet_weights_path`); or the path of a state dict, a ``.safetensors``
            file or a ``torch.save`` file (read with ``weights_only=True``).
        seed: seeds the random initial weights (the global generator is left alone).

    Returns:
        the model (1000 ImageNet classes), on the CPU, in eval mode.

    Raises:
        FileNotFoundError: the weights file is not on disk, naming where it was looked for.
        ValueError: the file cannot be read or does not fit the architecture.
    """
    import torchvision

    _check_arch(arch)
    seed = check_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None)
    if weights is None:
        return model.eval()
    if isinstance(weights, str) and weights == "imagenet":
        path = imagenet_weights_path(arch)
        if not path.is_file():
            raise FileNotFoundError(f"weights='imagenet': no {arch} ImageNet weights at {path}; copy torchvision's "
                                    f"file there (or pass its path as weights=), or use weights=None for random "
                                    f"weights; nothing is downloaded")
    elif isinstance(weights, (str, Path)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights: no file at {path}")
    else:
        raise TypeError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # a corrupt file, a pickle with code, or another architecture's weights
        raise ValueError(f"weights: cannot load {path} into a {arch}: {error}") from error
    return model.eval()


def imagenet_image(image, size: int = 224) -> torch.Tensor:
    """A photo as the (1, 3, size, size) input a torchvision ImageNet model expects.

    The shorter side is resized to ``size`` (bilinear, antialiased), the centre is cropped to a
    square, and the channels are normalised with ImageNet's mean and standard deviation.

    Args:
        image: an (H, W, 3) uint8 array or tensor (as ``skimage.io.imread`` or
            ``numpy.asarray(PIL.Image.open(path).convert("RGB"))`` give), or a (3, H, W) float
            tensor in [0, 1].
        size: the side of the output, at least 8.

    Returns:
        (1, 3, size, size) float32 tensor.
    """
    size = check_int("size", size, minimum=8)
    tensor = torch.as_tensor(image)
    if tensor.dtype == torch.uint8 and tensor.ndim == 3 and tensor.shape[-1] == 3:
        tensor = tensor.permute(2, 0, 1).float() / 255
    elif not (tensor.is_floating_point() and tensor.ndim == 3 and tensor.shape[0] == 3):
        raise ValueError(f"image must be an (H, W, 3) uint8 array or a (3, H, W) float tensor, got dtype "
                         f"{tensor.dtype} and shape {tuple(tensor.shape)}")
    check_finite("image", tensor)
    height, width = tensor.shape[-2:]
    scale = size / min(height, width)
    target = (max(size, round(height * scale)), max(size, round(width * scale)))
    resized = F.interpolate(tensor[None].float(), size=target, mode="bilinear", align_corners=False,
                            antialias=True)
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    crop = resized[..., top:top + size, left:left + size]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (crop - mean) / std
