"""Speed of the class-activation-map code, measured against its floor and against captum.

``bench_cam`` times, in one run on the same model and batch (each repeat runs every method
once, in turn, so that drifts of the machine hit all alike; each method's best round counts):

- the floor of Grad-CAM: one forward with a hook, ``torch.autograd.grad`` to the layer,
  pooling of the gradients, the weighted sum and the upsampling, written inline;
- :class:`xnn_lab.cam.GradCAM`, and captum's ``LayerGradCam`` with the same upsampling;
- :class:`xnn_lab.cam.CAM` for one class and for all classes;
- deletion and insertion (:mod:`xnn_lab.metrics`) against the model's forward-only throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xnn_lab._checks import check_int
from xnn_lab._runtime import device as default_device
from xnn_lab.cam import CAM, GradCAM
from xnn_lab.metrics import deletion_curve, insertion_curve

__all__ = ["bench_cam"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grad_cam_floor(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The least work Grad-CAM needs, inline: forward with a hook, autograd.grad, pool, sum, upsample."""
    saved = []
    handle = layer.register_forward_hook(lambda module, inputs, output: saved.append(output))
    try:
        scores = model(x)
    finally:
        handle.remove()
    activations = saved[0]
    (gradients,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), activations)
    maps = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1, keepdim=True))
    return F.interpolate(maps.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _captum_grad_cam(model: nn.Module, layer: nn.Module) -> Callable:
    from captum.attr import LayerAttribution, LayerGradCam

    explainer = LayerGradCam(model, layer)

    def run(x, target):
        maps = explainer.attribute(x, target, relu_attributions=True)
        return LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear")[:, 0]

    return run


def _best_seconds(methods: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Shortest wall time of each method over ``repeats`` rounds; each round runs all methods in turn.

    The shortest, not the mean or median, because on a shared machine the other processes only
    ever add time: the least disturbed round is the best estimate of each method's own cost.
    """
    for run in methods.values():  # warm-up: allocator, kernels, lazy initialisation
        run()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def bench_cam(model: str | nn.Module = "resnet18", *, layer: str = "layer4", batch_size: int = 8,
              image_size: int = 112, num_classes: int = 1000, steps: int = 8, repeats: int = 5,
              device: torch.device | str | None = None, seed: int = 0) -> dict[str, float]:
    """Time Grad-CAM, CAM and deletion/insertion against their floors and print the ratios.

    Every number comes from the same run, model and batch; each time is the best of ``repeats``
    rounds.

    Args:
        model: a torchvision classifier name (built with random weights, ``weights=None``), or a
            module mapping (B, 3, S, S) images to (B, C) scores with a GAP + linear head.
        layer: the dotted name of the layer to explain (whose output the head pools, for CAM).
        batch_size: images per batch B.
        image_size: the side S of the random input images.
        num_classes: C, for a model built by name.
        steps: deletion/insertion steps per image (B (steps + 1) perturbed images per curve).
        repeats: timed rounds per method, after one warm-up round.
        device: where to run; ``xnn_lab.device()`` by default.
        seed: seeds the weights and the images.

    Returns:
        images per second of each method (``"floor"``, ``"xnn_lab"``, ``"captum"``,
        ``"cam_one"``, ``"cam_all"``, ``"forward"``, ``"deletion"``, ``"insertion"``) and the
        ratios printed (``"xnn_lab/floor"``, ``"xnn_lab/captum"``, ``"cam_all/cam_one time"``,
        ``"deletion/forward"``, ``"insertion/forward"``).
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    image_size = check_int("image_size", image_size, minimum=8)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    steps = check_int("steps", steps, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    if isinstance(model, str):
        if not hasattr(torchvision.models, model):
            raise ValueError(f"model must name a torchvision classifier (e.g. 'resnet50'), got {model!r}")
        name, model = model, getattr(torchvision.models, model)(weights=None, num_classes=num_classes)
    elif isinstance(model, nn.Module):
        name = type(model).__name__
    else:
        raise TypeError(f"model must be a torchvision model name or an nn.Module, got {type(model).__name__}")
    model = model.to(device).eval()
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        scores = model(x)
    target = scores.argmax(1)
    grad_cam, cam = GradCAM(model, layer), CAM(model, layer)
    captum = _captum_grad_cam(model, grad_cam.layer)
    maps = grad_cam(x, target)

    def forward():
        with torch.no_grad():
            model(x)

    seconds = _best_seconds({
        "floor": lambda: _grad_cam_floor(model, grad_cam.layer, x, target),
        "xnn_lab": lambda: grad_cam(x, target),
        "captum": lambda: captum(x, target),
        "cam_one": lambda: cam(x, target),
        "cam_all": lambda: cam(x, "all"),
        "forward": forward,
        "deletion": lambda: deletion_curve(model, x, maps, target, steps=steps, batch_size=batch_size),
        "insertion": lambda: insertion_curve(model, x, maps, target, steps=steps, batch_size=batch_size),
    }, repeats, device)
    images = {key: batch_size * ((steps + 1) if key in ("deletion", "insertion") else 1) for key in seconds}
    rate = {key: images[key] / seconds[key] for key in seconds}
    rate.update({
        "xnn_lab/floor": rate["xnn_lab"] / rate["floor"],
        "xnn_lab/captum": rate["xnn_lab"] / rate["captum"],
        "cam_all/cam_one time": seconds["cam_all"] / seconds["cam_one"],
        "deletion/forward": rate["deletion"] / rate["forward"],
        "insertion/forward": rate["insertion"] / rate["forward"],
    })
    classes = scores.shape[1]
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"bench cam: {name} on {where}, batch {batch_size}, {image_size}x{image_size}, layer {layer!r}, "
          f"{classes} classes, {x.dtype}, best of {repeats} rounds")
    rows = [
        ("floor (forward + hook + autograd.grad + pool + upsample)", "floor", ""),
        ("xnn_lab GradCAM", "xnn_lab", (f"{rate['xnn_lab/floor']:.2f}x floor (target >= 0.95), "
                                        f"{rate['xnn_lab/captum']:.2f}x captum (target >= 1)")),
        ("captum LayerGradCam + interpolate", "captum", ""),
        ("CAM, one class", "cam_one", ""),
        (f"CAM, all {classes} classes", "cam_all",
         f"{rate['cam_all/cam_one time']:.2f}x the time of one class (target <= 2)"),
        ("forward only, no grad", "forward", ""),
        (f"deletion, {steps} steps per image", "deletion", f"{rate['deletion/forward']:.2f}x forward (target >= 0.5)"),
        (f"insertion, {steps} steps per image", "insertion",
         f"{rate['insertion/forward']:.2f}x forward (target >= 0.5)"),
    ]
    for label, key, note in rows:
        print(f"  {label:58s}{rate[key]:10.1f} img/s  {note}".rstrip())
    return rate
