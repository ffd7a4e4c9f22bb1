"""Benchmarks: each prints times and ratios measured in one run, and returns them.

``bench_cam`` times, in one run on the same model and batch (each repeat runs every method
once, in turn, so that drifts of the machine hit all alike; each method's best round counts):

- the floor of Grad-CAM: one forward with a hook, ``torch.autograd.grad`` to the layer,
  pooling of the gradients, the weighted sum and the upsampling, written inline;
- :class:`xnn_lab.cam.GradCAM`, and captum's ``LayerGradCam`` with the same upsampling;
- :class:`xnn_lab.cam.CAM` for one class and for all classes;
- deletion and insertion (:mod:`xnn_lab.metrics`) against the model's forward-only throughput.

``bench_influence`` times exact influence on the digits against captum's,
``bench_protopnet`` a ProtoPNet's push against one training epoch, and ``bench_graphs`` the
explanation of every house node of BA-Shapes (chapter 9), batched, against PyG one node at a time.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xnn_lab._core.checks import check_device, check_int
from xnn_lab._core.runtime import device as default_device
from xnn_lab.cam import CAM, GradCAM
from xnn_lab.metrics import deletion_curve, insertion_curve

__all__ = ["RECORDED", "bench_cam", "bench_graphs", "bench_influence", "bench_protopnet", "hardware", "save_record"]

# What a record may hold: each benchmark here, and the chapters timed by tools/chapters.py.
RECORDED = ("cam", "influence", "protopnet", "graphs", "chapters")


def hardware(device: torch.device | str) -> dict[str, str]:
    """A short description of the machine a benchmark ran on."""
    device = torch.device(device)
    info = {"device": device.type, "cpu": platform.processor() or platform.machine(),
            "cores": str(os.cpu_count()), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def save_record(path: str | Path, benchmark: str, settings: dict, results: dict, device) -> dict:
    """Write a benchmark's results, settings, date and hardware to ``path`` as JSON; return the record."""
    if benchmark not in RECORDED:
        raise ValueError(f"benchmark must be one of {sorted(RECORDED)}, got {benchmark!r}")
    record = {"benchmark": benchmark, "date": datetime.date.today().isoformat(), "hardware": hardware(device),
              "settings": settings, "results": {key: float(value) for key, value in results.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


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
        ``"cam_one"``, ``"cam_all"``, ``"maps_all"`` (allocating and filling a tensor the size of
        the all-class maps: the part of ``"cam_all"`` no method can avoid), ``"forward"``,
        ``"deletion"``, ``"insertion"``) and the
        ratios printed (``"xnn_lab/floor"``, ``"xnn_lab/captum"``, ``"cam_all/cam_one time"``,
        ``"deletion/forward"``, ``"insertion/forward"``).
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    image_size = check_int("image_size", image_size, minimum=8)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    steps = check_int("steps", steps, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    device = check_device("device", device) or default_device()
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
        "maps_all": lambda: torch.empty((batch_size, scores.shape[1], image_size, image_size), device=device).fill_(1.0),
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
        (f"  its output alone: a new {classes}-map tensor, filled", "maps_all", ""),
        ("forward only, no grad", "forward", ""),
        (f"deletion, {steps} steps per image", "deletion", f"{rate['deletion/forward']:.2f}x forward (target >= 0.5)"),
        (f"insertion, {steps} steps per image", "insertion",
         f"{rate['insertion/forward']:.2f}x forward (target >= 0.5)"),
    ]
    for label, key, note in rows:
        print(f"  {label:58s}{rate[key]:10.1f} img/s  {note}".rstrip())
    return rate


def bench_protopnet(n: int = 1024, *, image_size: int = 64, backbone: str = "small_cnn",
                    widths: tuple[int, ...] = (16, 32, 64), prototypes_per_class: int = 10, prototype_dim: int = 64,
                    batch_size: int = 64, repeats: int = 3, device: torch.device | str | None = None,
                    seed: int = 0) -> dict[str, float]:
    """Time one joint-training epoch and one push of a ProtoPNet over the same Parts training set.

    Both run on the same model, data (held on ``device``) and device; each round runs both in
    turn and each time is the best of ``repeats`` rounds (after one warm-up round). The issue's
    target: a push over the whole training set costs no more than one training epoch.

    Args:
        n: Parts training images.
        image_size: their side, a multiple of 16 in [32, 256].
        backbone: ``"small_cnn"`` (a :class:`xnn_lab.models.SmallCNN` with ``widths``) or a
            torchvision classifier name (random weights, e.g. ``"resnet18"``).
        widths: channel widths of the SmallCNN backbone.
        prototypes_per_class, prototype_dim: m and D of the ProtoPNet (8 classes).
        batch_size: images per step, in training and in the push.
        repeats: timed rounds.
        device: where to run; ``xnn_lab.device()`` by default.
        seed: seeds the data and the weights.

    Returns:
        ``{"epoch_s", "push_s", "push/epoch"}``: seconds of one epoch, of one push, and their ratio.
    """
    from xnn_lab.data import make_parts
    from xnn_lab.models import SmallCNN
    from xnn_lab.protopnet import ProtoPNet, backbone_features, push_prototypes, train_stage

    n = check_int("n", n, minimum=8)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    device = check_device("device", device) or default_device()
    parts = make_parts(n, image_size=image_size, seed=seed)
    torch.manual_seed(seed)
    if backbone == "small_cnn":
        name, features = "SmallCNN", SmallCNN(8, widths=tuple(widths)).features
    elif isinstance(backbone, str) and hasattr(torchvision.models, backbone):
        name, features = backbone, backbone_features(getattr(torchvision.models, backbone)(weights=None))
    else:
        raise ValueError(f"backbone must be 'small_cnn' or a torchvision classifier name, got {backbone!r}")
    model = ProtoPNet(features, 8, prototypes_per_class=prototypes_per_class, prototype_dim=prototype_dim).to(device)
    data = (parts.images.to(device), parts.labels.to(device))
    seconds = _best_seconds({
        "epoch_s": lambda: train_stage(model, data, "joint", epochs=1, batch_size=batch_size, seed=seed,
                                       device=device),
        "push_s": lambda: push_prototypes(model, data, batch_size=batch_size),
    }, repeats, device)
    seconds["push/epoch"] = seconds["push_s"] / seconds["epoch_s"]
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"bench protopnet: {name} backbone on {where}, {n} Parts training images, {image_size}x{image_size}, "
          f"{model.num_prototypes} prototypes of dimension {prototype_dim}, batch {batch_size}, "
          f"best of {repeats} rounds")
    print(f"  one joint-training epoch   {seconds['epoch_s']:9.3f} s")
    print(f"  one push over the same set {seconds['push_s']:9.3f} s")
    print(f"  push / epoch: {seconds['push/epoch']:.3f} (target <= 1)")
    return seconds


def _digits(split: str, classes: tuple[int, ...] | None, device: torch.device):
    """Digits of a split as float64 (X, y); with two ``classes``, y is 1.0 for the second."""
    from xnn_lab.data import load_digits

    data = load_digits(split)
    if classes is None:
        return data.X.double().to(device), data.y.to(device)
    keep = (data.y == classes[0]) | (data.y == classes[1])
    return data.X[keep].double().to(device), (data.y[keep] == classes[1]).double().to(device)


def bench_influence(*, weight_decay: float = 0.01, hidden: int = 16, repeats: int = 3,
                    device: torch.device | str | None = None, seed: int = 0) -> dict[str, float]:
    """Time exact influence of every training point on every test point, and print it.

    Three models on scikit-learn's digits, each trained to its optimum first (not timed): the
    chapter's logistic regression (1 against 7), a softmax regression on all ten digits, and a
    tanh MLP 64-``hidden``-1 on 1 against 7 (all its parameters; exact and conjugate gradients).
    captum's ``NaiveInfluenceFunction`` runs on the logistic regression for comparison (on the
    CPU, where captum keeps its data).

    Args:
        weight_decay: lambda of the L2 term, as in chapter 8.
        hidden: hidden width of the MLP.
        repeats: timed rounds, after one warm-up; each time is the best round.
        device: where to run; ``xnn_lab.device()`` by default.
        seed: seeds the MLP's initial weights.

    Returns:
        seconds and sizes: ``"logreg_exact_s"``, ``"logreg_pairs"``, ``"softmax_exact_s"``,
        ``"softmax_pairs"``, ``"network_exact_s"``, ``"network_cg_s"``, ``"network_parameters"``,
        ``"captum_naive_s"`` and ``"captum/xnn_lab time"``.
    """
    import copy
    import tempfile
    from pathlib import Path

    from captum.influence import NaiveInfluenceFunction
    from torch.utils.data import TensorDataset

    from xnn_lab.influence import influence, train_to_optimum

    repeats = check_int("repeats", repeats, minimum=1)
    hidden = check_int("hidden", hidden, minimum=1)
    device = check_device("device", device) or default_device()
    binary = nn.BCEWithLogitsLoss(reduction="none")
    multiclass = nn.CrossEntropyLoss(reduction="none")
    train, test = _digits("train", (1, 7), device), _digits("test", (1, 7), device)
    all_train, all_test = _digits("train", None, device), _digits("test", None, device)

    logreg = nn.Sequential(nn.Linear(64, 1), nn.Flatten(0)).double().to(device)
    train_to_optimum(logreg, binary, train, weight_decay)
    softmax = nn.Linear(64, 10).double().to(device)
    train_to_optimum(softmax, multiclass, all_train, weight_decay, solver="lbfgs")
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 1), nn.Flatten(0)).double().to(device)
    train_to_optimum(network, binary, train, weight_decay, solver="lbfgs")

    cpu = lambda data: tuple(t.cpu() for t in data)
    logreg_cpu = copy.deepcopy(logreg).cpu()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(Path(folder) / "logreg.pt")
        torch.save(logreg_cpu.state_dict(), checkpoint)
        naive = NaiveInfluenceFunction(logreg_cpu, TensorDataset(*cpu(train)), checkpoint, loss_fn=binary,
                                       batch_size=len(train[0]), projection_dim=65,
                                       hessian_reg=len(train[0]) * weight_decay, hessian_inverse_tol=1e-12)
        seconds = _best_seconds({
            "logreg_exact_s": lambda: influence(logreg, binary, train, test, weight_decay, method="exact"),
            "softmax_exact_s": lambda: influence(softmax, multiclass, all_train, all_test, weight_decay,
                                                 method="exact"),
            "network_exact_s": lambda: influence(network, binary, train, test, weight_decay, method="exact"),
            "network_cg_s": lambda: influence(network, binary, train, test, weight_decay, method="cg"),
            "captum_naive_s": lambda: naive.influence(cpu(test)),
        }, repeats, device)
    result = dict(seconds)
    result.update({
        "logreg_pairs": len(train[0]) * len(test[0]),
        "softmax_pairs": len(all_train[0]) * len(all_test[0]),
        "network_parameters": sum(p.numel() for p in network.parameters()),
        "captum/xnn_lab time": seconds["captum_naive_s"] / seconds["logreg_exact_s"],
    })
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"bench influence: digits, float64, lambda {weight_decay}, on {where}, best of {repeats} rounds")
    rows = [
        (f"logistic regression 1 vs 7, {result['logreg_pairs']:.0f} pairs, exact", "logreg_exact_s",
         "(target < 1 s on CPU)"),
        (f"softmax regression, 10 digits, {result['softmax_pairs']:.0f} pairs, exact", "softmax_exact_s", ""),
        (f"MLP 64-{hidden}-1, {result['network_parameters']:.0f} parameters, exact", "network_exact_s", ""),
        (f"MLP 64-{hidden}-1, conjugate gradients", "network_cg_s", ""),
        ("captum NaiveInfluenceFunction, logistic regression", "captum_naive_s",
         f"{result['captum/xnn_lab time']:.1f}x the time of xnn_lab"),
    ]
    for label, key, note in rows:
        print(f"  {label:58s}{result[key]:10.3f} s  {note}".rstrip())
    return result


def bench_graphs(*, epochs: int = 100, steps: int = 32, pyg_nodes: int = 8, repeats: int = 3,
                 device: torch.device | str | None = None, seed: int = 0) -> dict[str, float]:
    """Time explaining every house node of BA-Shapes (chapter 9), batched, against PyG one by one.

    A three-layer GCN (random weights: the cost does not depend on them) on ``make_ba_shapes(seed)``;
    each of the 400 house nodes is explained by :class:`xnn_lab.graphs.GNNExplainer` (``epochs``
    steps), :class:`~xnn_lab.graphs.GradientSaliency` and :class:`~xnn_lab.graphs.IntegratedGradients`
    (``steps`` path points), all nodes in one call. PyG's own ``GNNExplainer`` explains one node per
    call; it is timed on ``pyg_nodes`` nodes and scaled to all of them. Each time is the best of
    ``repeats`` rounds.

    Returns:
        seconds for all house nodes: ``"gnnexplainer_s"``, ``"saliency_s"``,
        ``"integrated_gradients_s"``, ``"pyg_gnnexplainer_s"`` (scaled), the node count
        ``"nodes"`` and the ratio ``"pyg/xnn_lab gnnexplainer"``.
    """
    from torch_geometric.explain import Explainer
    from torch_geometric.explain import GNNExplainer as PyGGNNExplainer

    from xnn_lab.graphs import GCN, GNNExplainer, GradientSaliency, IntegratedGradients, make_ba_shapes

    epochs = check_int("epochs", epochs, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    pyg_nodes = check_int("pyg_nodes", pyg_nodes, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    device = torch.device(device) if device is not None else default_device()
    data = make_ba_shapes(seed=seed)
    nodes = data.node_mask.nonzero()[:, 0]
    torch.manual_seed(seed)
    model = GCN(10, 4).to(device).eval()
    gnnexplainer = GNNExplainer(model, epochs=epochs, seed=seed)
    saliency, integrated = GradientSaliency(model), IntegratedGradients(model, steps=steps)
    pyg = Explainer(model, PyGGNNExplainer(epochs=epochs), explanation_type="model", node_mask_type="object",
                    edge_mask_type="object", model_config=dict(mode="multiclass_classification", task_level="node",
                                                                return_type="raw"))
    x, edge_index = data.x.to(device), data.edge_index.to(device)

    def pyg_one_by_one():
        for node in nodes[:pyg_nodes].tolist():
            pyg(x, edge_index, index=node)

    seconds = _best_seconds({
        "gnnexplainer_s": lambda: gnnexplainer(data, nodes),
        "saliency_s": lambda: saliency(data, nodes),
        "integrated_gradients_s": lambda: integrated(data, nodes),
        "pyg_gnnexplainer_s": pyg_one_by_one,
    }, repeats, device)
    seconds["pyg_gnnexplainer_s"] *= len(nodes) / min(pyg_nodes, len(nodes))
    seconds["nodes"] = float(len(nodes))
    seconds["pyg/xnn_lab gnnexplainer"] = seconds["pyg_gnnexplainer_s"] / seconds["gnnexplainer_s"]
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"bench graphs: BA-Shapes, {len(nodes)} house nodes, GCN 3x20, on {where}, best of {repeats} rounds")
    print(f"  GNNExplainer ({epochs} steps), all nodes in one call {seconds['gnnexplainer_s']:9.3f} s")
    print(f"  gradient saliency, all nodes                  {seconds['saliency_s']:9.3f} s")
    print(f"  Integrated Gradients ({steps} steps), all nodes   {seconds['integrated_gradients_s']:9.3f} s")
    print(f"  PyG GNNExplainer, one node per call (scaled)   {seconds['pyg_gnnexplainer_s']:9.3f} s  "
          f"{seconds['pyg/xnn_lab gnnexplainer']:.1f}x the batched time")
    return seconds
