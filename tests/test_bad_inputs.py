"""Bad inputs across the public API and the command line, as a new user makes them.

Each entry calls one public function (or command) wrongly and names the exception it must raise
(or exit status 2 for a command) and the argument its message must name. An error counts as
clear only if it is raised from ``xnn_lab`` itself, not from deep inside PyTorch.

``python tests/test_bad_inputs.py`` prints each entry's kind (clear / cryptic / silent) and the
counts by kind: the numbers of the issue's closing note.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xnn_lab  # noqa: E402
from xnn_lab import agnostic, cam, concepts, data, influence, metrics, protopnet, senn, trees, viz, zoo  # noqa: E402
from xnn_lab.models import MLP, PlainCNN, SmallCNN, imagenet_image, torchvision_model  # noqa: E402

PACKAGE = Path(xnn_lab.__file__).resolve().parent
NAN = float("nan")
INF = float("inf")


@dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[], object]
    error: type[BaseException] | int  # an exception type, or 2: the command's exit status
    names: str  # the argument the message must name


# Small fixtures, built on first use -------------------------------------------------------------

@functools.cache
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, widths=(4, 8)).eval()


@functools.cache
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(4, hidden=(6,), out_features=3).eval()


def images(n: int = 2, size: int = 16, fill: float | None = None) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    if fill is not None:
        x[0, 0, 0, 0] = fill
    return x


def rows(n: int = 8, width: int = 4, fill: float | None = None) -> torch.Tensor:
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(0))
    if fill is not None:
        x[0, 0] = fill
    return x


def labels(n: int = 8, classes: int = 3, bad: int | None = None) -> torch.Tensor:
    y = torch.arange(n) % classes
    if bad is not None:
        y[0] = bad
    return y


def maps(n: int = 2, size: int = 16, fill: float | None = None) -> torch.Tensor:
    m = torch.rand(n, size, size, generator=torch.Generator().manual_seed(1))
    if fill is not None:
        m[0, 0, 0] = fill
    return m


def masks(n: int = 2, size: int = 16) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, 4:8, 4:8] = True
    return m


def nan_weights(model: nn.Module) -> nn.Module:
    model = type(model)(**model.config) if hasattr(model, "config") else model
    with torch.no_grad():
        next(model.parameters()).fill_(NAN)
    return model.eval()


@functools.cache
def protonet() -> protopnet.ProtoPNet:
    torch.manual_seed(0)
    return protopnet.ProtoPNet(SmallCNN(3, widths=(4, 8)).features, num_classes=3, prototypes_per_class=2,
                               prototype_dim=4).eval()


@functools.cache
def senn_model() -> senn.SENN:
    torch.manual_seed(0)
    return senn.SENN(4, 3, concept_hidden=(6,), relevance_hidden=(6,)).eval()


@functools.cache
def bottleneck() -> concepts.ConceptBottleneck:
    torch.manual_seed(0)
    return concepts.ConceptBottleneck(3, 4, widths=(4, 8)).eval()


@functools.cache
def ba_shapes():
    from xnn_lab import graphs

    return graphs.make_ba_shapes(seed=0)


@functools.cache
def gcn() -> nn.Module:
    from xnn_lab import graphs

    torch.manual_seed(0)
    return graphs.GCN(10, 4).eval()


def graphs_module():
    from xnn_lab import graphs

    return graphs


def ba_with(x_fill: float | None = None, bad_label: int | None = None):
    """BA-Shapes with one feature set to ``x_fill`` or one label set to ``bad_label``."""
    data = ba_shapes().clone()
    if x_fill is not None:
        data.x = data.x.clone()
        data.x[0, 0] = x_fill
    if bad_label is not None:
        data.y = data.y.clone()
        data.y[0] = bad_label
    return data


def cross_entropy(logits, y):
    return nn.functional.cross_entropy(logits, y, reduction="none")


def gradcam(**kwargs):
    return cam.GradCAM(cnn(), "features.4", **kwargs)


def captum_saliency():
    from captum.attr import Saliency

    return agnostic.CaptumExplainer(Saliency(cnn()))


def zoo_dir_without(field: str, tmp: Path) -> Path:
    """A copy of a shipped zoo model whose card lacks ``field``."""
    name = zoo.names()[0]
    source = Path(zoo.__file__).parent / "checkpoints"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.safetensors").write_bytes((source / f"{name}.safetensors").read_bytes())
    card = json.loads((source / f"{name}.json").read_text())
    card.pop(field)
    (tmp / f"{name}.json").write_text(json.dumps(card))
    return tmp


def cli(*argv: str) -> Callable[[], object]:
    def run():
        from xnn_lab.cli import main

        return main(list(argv))
    return run


def tool(module: str, *argv: str) -> Callable[[], object]:
    def run():
        import importlib

        return importlib.import_module(f"tools.{module}").main(list(argv))
    return run


TMP = Path("/tmp/xnn-lab-bad-inputs")

BAD: list[Bad] = [
    # xnn_lab: the training loop and its friends
    Bad("fit-label-too-big", lambda: xnn_lab.fit(mlp(), (rows(), labels(bad=3)), epochs=1), ValueError, "train"),
    Bad("fit-label-negative", lambda: xnn_lab.fit(mlp(), (rows(), labels(bad=-1)), epochs=1), ValueError, "train"),
    Bad("fit-nan-input", lambda: xnn_lab.fit(mlp(), (rows(fill=NAN), labels()), epochs=1), ValueError, "train"),
    Bad("fit-inf-input", lambda: xnn_lab.fit(mlp(), (rows(fill=INF), labels()), epochs=1), ValueError, "train"),
    Bad("fit-wrong-width", lambda: xnn_lab.fit(mlp(), (rows(width=5), labels()), epochs=1), ValueError, "train"),
    Bad("fit-val-wrong-width", lambda: xnn_lab.fit(mlp(), (rows(), labels()), (rows(width=5), labels()), epochs=1),
        ValueError, "val"),
    Bad("fit-length-mismatch", lambda: xnn_lab.fit(mlp(), (rows(), labels(7)), epochs=1), ValueError, "train"),
    Bad("fit-epochs-zero", lambda: xnn_lab.fit(mlp(), (rows(), labels()), epochs=0), ValueError, "epochs"),
    Bad("fit-lr-negative", lambda: xnn_lab.fit(mlp(), (rows(), labels()), epochs=1, lr=-1), ValueError, "lr"),
    Bad("fit-device-tpu", lambda: xnn_lab.fit(mlp(), (rows(), labels()), epochs=1, device="tpu"), ValueError,
        "device"),
    Bad("fit-optimizer-unknown", lambda: xnn_lab.fit(mlp(), (rows(), labels()), epochs=1, optimizer="rmsprop"),
        ValueError, "optimizer"),
    Bad("evaluate-nan-input", lambda: xnn_lab.evaluate(mlp(), (rows(fill=NAN), labels())), ValueError, "data"),
    Bad("evaluate-label-too-big", lambda: xnn_lab.evaluate(mlp(), (rows(), labels(bad=7))), ValueError, "data"),
    Bad("evaluate-nan-weights", lambda: xnn_lab.evaluate(nan_weights(MLP(4, (6,), 3)), (rows(), labels())),
        ValueError, "model"),
    Bad("evaluate-device-tpu", lambda: xnn_lab.evaluate(mlp(), (rows(), labels()), device="tpu"), ValueError,
        "device"),
    Bad("predict-1d", lambda: xnn_lab.predict(mlp(), rows()[0]), ValueError, "X"),
    Bad("predict-wrong-width", lambda: xnn_lab.predict(mlp(), rows(width=5)), ValueError, "X"),
    Bad("predict-nan", lambda: xnn_lab.predict(mlp(), rows(fill=NAN)), ValueError, "X"),
    Bad("predict-batch-size-zero", lambda: xnn_lab.predict(mlp(), rows(), batch_size=0), ValueError, "batch_size"),
    Bad("seed-negative", lambda: xnn_lab.seed_everything(-1), ValueError, "seed"),
    Bad("seed-string", lambda: xnn_lab.seed_everything("7"), TypeError, "seed"),

    # agnostic
    Bad("captum-not-a-method", lambda: agnostic.CaptumExplainer("Saliency"), TypeError, "method"),
    Bad("captum-nan-input", lambda: captum_saliency()(images(fill=NAN)), ValueError, "x"),
    Bad("captum-target-too-big", lambda: captum_saliency()(images(), target=9), ValueError, "target"),
    Bad("captum-rank-3", lambda: captum_saliency()(images()[0]), ValueError, "x"),
    Bad("ice-feature-out-of-range", lambda: agnostic.ice_curves(mlp(), rows(), 4, target=0), ValueError, "feature"),
    Bad("ice-nan-input", lambda: agnostic.ice_curves(mlp(), rows(fill=NAN), 0, target=0), ValueError, "X"),
    Bad("ice-target-too-big", lambda: agnostic.ice_curves(mlp(), rows(), 0, target=3), ValueError, "target"),
    Bad("ice-wrong-width", lambda: agnostic.ice_curves(mlp(), rows(width=5), 0, target=0), ValueError, "X"),
    Bad("pdp-nan-grid", lambda: agnostic.partial_dependence(mlp(), rows(), 0, torch.tensor([0.0, NAN]), target=0),
        ValueError, "grid"),
    Bad("pdp-num-points-one", lambda: agnostic.partial_dependence(mlp(), rows(), 0, num_points=1, target=0), ValueError,
        "num_points"),
    Bad("grid-segments-cell-zero", lambda: agnostic.grid_segments(8, 8, 0), ValueError, "cell"),
    Bad("grid-segments-device-tpu", lambda: agnostic.grid_segments(8, 8, 2, device="tpu"), ValueError, "device"),

    # cam
    Bad("gradcam-unknown-layer", lambda: cam.GradCAM(cnn(), "features.99"), ValueError, "layer"),
    Bad("gradcam-nan-input", lambda: gradcam()(images(fill=NAN)), ValueError, "x"),
    Bad("gradcam-inf-input", lambda: gradcam()(images(fill=-INF)), ValueError, "x"),
    Bad("gradcam-target-too-big", lambda: gradcam()(images(), target=9), ValueError, "target"),
    Bad("gradcam-target-negative", lambda: gradcam()(images(), target=-1), ValueError, "target"),
    Bad("gradcam-target-length", lambda: gradcam()(images(), target=torch.tensor([0, 1, 2])), ValueError,
        "target"),
    Bad("gradcam-target-float", lambda: gradcam()(images(), target=1.5), TypeError, "target"),
    Bad("gradcam-rank-3", lambda: gradcam()(images()[0]), ValueError, "x"),
    Bad("gradcam-wrong-channels", lambda: gradcam()(images()[:, :2]), ValueError, "x"),
    Bad("gradcam-int-images", lambda: gradcam()((images() * 255).to(torch.uint8)), TypeError, "x"),
    Bad("gradcam-batch-size-zero", lambda: gradcam(batch_size=0), ValueError, "batch_size"),
    Bad("gradcam-topk-too-big", lambda: gradcam()(images(), topk=6), ValueError, "topk"),
    Bad("gradcampp-nan-input", lambda: cam.GradCAMPlusPlus(cnn(), "features.4")(images(fill=NAN)), ValueError, "x"),
    Bad("cam-no-gap-head", lambda: cam.CAM(mlp(), "0"), ValueError, "model"),
    Bad("cam-target-too-big", lambda: cam.CAM(cnn(), "features.4")(images(), target=5), ValueError, "target"),
    Bad("normalize-nan", lambda: cam.normalize(maps(fill=NAN)), ValueError, "maps"),
    Bad("normalize-rank-1", lambda: cam.normalize(maps()[0, 0]), ValueError, "maps"),
    Bad("cam-explainers-unknown-method", lambda: cam.cam_explainers(cnn(), {"last": "features.4"}, methods=("X",)),
        ValueError, "methods"),
    Bad("retrain-gap-label-too-big", lambda: cam.retrain_gap_head(cnn().features, (images(4), labels(4, 2, bad=5)),
                                                                   num_classes=2, epochs=1), ValueError, "train"),
    Bad("retrain-gap-nan", lambda: cam.retrain_gap_head(cnn().features, (images(4, fill=NAN), labels(4, 2)),
                                                         num_classes=2, epochs=1), ValueError, "train"),

    # graphs
    Bad("graphs-explain-target-too-big", lambda: graphs_module().GradientSaliency(gcn())(
        ba_shapes(), index=torch.tensor([400]), target=9), ValueError, "target"),
    Bad("graphs-explain-index-out-of-range", lambda: graphs_module().GradientSaliency(gcn())(
        ba_shapes(), index=torch.tensor([10_000])), ValueError, "index"),
    Bad("graphs-fit-label-too-big", lambda: graphs_module().fit_gnn(
        graphs_module().GCN(10, 4), ba_with(bad_label=7), epochs=1), ValueError, "data.y"),
    Bad("graphs-auroc-labels-not-bool", lambda: graphs_module().auroc(
        torch.rand(4), torch.tensor([1, 0, 1, 0])), TypeError, "labels"),
    Bad("graphs-top-k-zero", lambda: graphs_module().top_k_mask(torch.rand(4), 0), ValueError,
        "k"),
    # models
    Bad("plaincnn-size-not-divisible", lambda: PlainCNN(3, widths=(4, 8), image_size=30), ValueError, "image_size"),
    Bad("plaincnn-wrong-size", lambda: PlainCNN(3, widths=(4, 8), image_size=16)(images(size=32)), ValueError, "x"),
    Bad("torchvision-unknown-arch", lambda: torchvision_model("alexnet"), ValueError, "arch"),
    Bad("torchvision-missing-weights", lambda: torchvision_model("resnet18", "/nonexistent/weights.pth"),
        FileNotFoundError, "weights"),
    Bad("torchvision-weights-type", lambda: torchvision_model("resnet18", 3), TypeError, "weights"),
    Bad("imagenet-image-grey", lambda: imagenet_image(torch.zeros(32, 32, dtype=torch.uint8)), ValueError, "image"),
    # metrics
    Bad("deletion-target-too-big", lambda: metrics.deletion_curve(cnn(), images(), maps(), 9), ValueError, "target"),
    Bad("deletion-nan-maps", lambda: metrics.deletion_curve(cnn(), images(), maps(fill=NAN), 0), ValueError, "maps"),
    Bad("deletion-nan-images", lambda: metrics.deletion_curve(cnn(), images(fill=NAN), maps(), 0), ValueError,
        "images"),
    Bad("deletion-maps-shape", lambda: metrics.deletion_curve(cnn(), images(), maps(size=8), 0), ValueError, "maps"),
    Bad("deletion-steps-zero", lambda: metrics.deletion_curve(cnn(), images(), maps(), 0, steps=0), ValueError,
        "steps"),
    Bad("deletion-wrong-channels", lambda: metrics.deletion_curve(cnn(), images()[:, :2], maps(), 0), ValueError,
        "images"),
    Bad("insertion-baseline-shape", lambda: metrics.insertion_curve(cnn(), images(), maps(), 0,
                                                                    baseline=torch.zeros(5, 5)), ValueError,
        "baseline"),
    Bad("insertion-nan-baseline", lambda: metrics.insertion_curve(cnn(), images(), maps(), 0, baseline=NAN),
        ValueError, "baseline"),
    Bad("deletion-unknown-baseline", lambda: metrics.deletion_curve(cnn(), images(), maps(), 0, baseline="black"),
        ValueError, "baseline"),
    Bad("blur-even-kernel", lambda: metrics.blur_images(images(), kernel_size=4), ValueError, "kernel_size"),
    Bad("blur-zero-sigma", lambda: metrics.blur_images(images(), sigma=0.0), ValueError, "sigma"),
    Bad("blur-kernel-too-big", lambda: metrics.blur_images(images(size=4), kernel_size=11), ValueError,
        "kernel_size"),
    Bad("imputation-removed-not-bool", lambda: metrics.noisy_linear_imputation(images(), masks().float()),
        TypeError, "removed"),
    Bad("imputation-removed-shape", lambda: metrics.noisy_linear_imputation(images(), masks(size=8)), ValueError,
        "removed"),
    Bad("imputation-negative-noise", lambda: metrics.noisy_linear_imputation(images(), masks(), noise=-0.1),
        ValueError, "noise"),
    Bad("imputation-unknown-method", lambda: metrics.noisy_linear_imputation(images(), masks(), method="lu"),
        ValueError, "method"),
    Bad("road-target-too-big", lambda: metrics.road_curve(cnn(), images(), maps(), 9, fractions=[0.5]), ValueError,
        "target"),
    Bad("road-fraction-above-one", lambda: metrics.road_curve(cnn(), images(), maps(), 0, fractions=[0.5, 1.5]),
        ValueError, "fractions"),
    Bad("road-unknown-order", lambda: metrics.road_curve(cnn(), images(), maps(), 0, order="random"), ValueError,
        "order"),
    Bad("road-maps-shape", lambda: metrics.road_curve(cnn(), images(), maps(size=8), 0), ValueError, "maps"),
    Bad("pointing-nan-maps", lambda: metrics.pointing_game(maps(fill=NAN), masks()), ValueError, "maps"),
    Bad("pointing-shape-mismatch", lambda: metrics.pointing_game(maps(), masks(size=8)), ValueError, "masks"),
    Bad("pointing-empty-mask", lambda: metrics.pointing_game(maps(), torch.zeros(2, 16, 16, dtype=torch.bool)),
        ValueError, "masks"),
    Bad("pointing-tolerance-negative", lambda: metrics.pointing_game(maps(), masks(), tolerance=-1), ValueError,
        "tolerance"),
    Bad("energy-nan-maps", lambda: metrics.energy_pointing_game(maps(fill=NAN), masks()), ValueError, "maps"),
    Bad("mass-nan", lambda: metrics.mass_in_mask(maps(fill=NAN), masks()), ValueError, "attributions"),
    Bad("rank-correlation-shapes", lambda: metrics.rank_correlation(maps(), maps(size=8)), ValueError, "second"),
    Bad("rank-correlation-nan", lambda: metrics.rank_correlation(maps(fill=NAN), maps()), ValueError, "first"),
    Bad("auc-nan", lambda: metrics.area_under_curve(torch.tensor([[1.0, NAN, 0.0]])), ValueError, "curves"),
    Bad("saliency-ranks-nan", lambda: metrics.saliency_ranks(maps(fill=NAN)), ValueError, "maps"),
    Bad("random-maps-n-zero", lambda: metrics.random_maps(0, 8, 8), ValueError, "n"),
    Bad("centre-maps-sigma-zero", lambda: metrics.centre_maps(2, 8, 8, sigma=0), ValueError, "sigma"),
    Bad("lipschitz-radius-negative", lambda: metrics.local_lipschitz(gradcam(), images(), -0.1), ValueError,
        "radius"),
    Bad("lipschitz-nan-input", lambda: metrics.local_lipschitz(gradcam(), images(fill=NAN), 0.1), ValueError, "x"),
    Bad("sanity-not-an-explainer", lambda: metrics.randomization_sanity_check(lambda x, t=None: x.sum(1), images()),
        TypeError, "explainer"),
    Bad("sanity-unknown-layer", lambda: metrics.randomization_sanity_check(gradcam(), images(), layers=["nope"]),
        ValueError, "layers"),
    Bad("sanity-nan-input", lambda: metrics.randomization_sanity_check(gradcam(), images(fill=NAN)), ValueError, "x"),
    Bad("sanity-target-too-big", lambda: metrics.randomization_sanity_check(gradcam(), images(), 9), ValueError,
        "target"),

    # trees
    Bad("tree-not-sequential", lambda: trees.to_decision_tree(cnn()), TypeError, "model"),
    Bad("tree-nan-weights", lambda: trees.to_decision_tree(nan_weights(MLP(2, (3,), 2)), (-1, 1)), ValueError,
        "model"),
    Bad("tree-domain-shape", lambda: trees.to_decision_tree(MLP(2, (3,), 2), (torch.zeros(3), torch.ones(3))),
        ValueError, "domain"),
    Bad("tree-domain-reversed", lambda: trees.to_decision_tree(MLP(2, (3,), 2), (1, -1)), ValueError, "domain"),
    Bad("tree-nan-data", lambda: trees.to_decision_tree(MLP(2, (3,), 2), data=torch.tensor([[0.0, NAN]])),
        ValueError, "data"),
    Bad("tree-data-wrong-width", lambda: trees.to_decision_tree(MLP(2, (3,), 2), data=torch.zeros(4, 3)),
        ValueError, "data"),

    # protopnet
    Bad("protopnet-one-class", lambda: protopnet.ProtoPNet(SmallCNN(3).features, num_classes=1), ValueError,
        "num_classes"),
    Bad("protopnet-no-prototypes", lambda: protopnet.ProtoPNet(SmallCNN(3).features, 3, prototypes_per_class=0),
        ValueError, "prototypes_per_class"),
    Bad("protopnet-explain-nan", lambda: protonet().explain(images(fill=NAN)), ValueError, "x"),
    Bad("protopnet-explain-channels", lambda: protonet().explain(images()[:, :1]), ValueError, "x"),
    Bad("top-prototypes-target-too-big", lambda: protopnet.top_prototypes(protonet(), images(),
                                                                          target=torch.tensor([0, 3])),
        ValueError, "target"),
    Bad("top-prototypes-top-zero", lambda: protopnet.top_prototypes(protonet(), images(), top=0), ValueError, "top"),
    Bad("top-prototypes-nan", lambda: protopnet.top_prototypes(protonet(), images(fill=NAN)), ValueError, "x"),
    Bad("push-label-too-big", lambda: protopnet.push_prototypes(protonet(), (images(4), labels(4, 3, bad=3))),
        ValueError, "data"),
    Bad("push-nan", lambda: protopnet.push_prototypes(protonet(), (images(4, fill=NAN), labels(4, 3))), ValueError,
        "data"),
    Bad("protopnet-loss-label-too-big", lambda: protopnet.protopnet_loss(protonet(), images(), labels(2, 3, bad=4)),
        ValueError, "y"),
    Bad("protopnet-loss-length", lambda: protopnet.protopnet_loss(protonet(), images(), labels(3)), ValueError, "y"),
    Bad("nearest-patches-k-zero", lambda: protopnet.nearest_patches(protonet(), (images(4), labels(4)), k=0),
        ValueError, "k"),
    Bad("part-purity-masks-shape", lambda: protopnet.part_purity(protonet(), (images(4), labels(4)),
                                                                 torch.zeros(4, 16, 16, dtype=torch.bool)),
        ValueError, "part_masks"),
    Bad("train-stage-unknown", lambda: protopnet.train_stage(protonet(), (images(4), labels(4)), "warmup", epochs=1),
        ValueError, "stage"),
    Bad("fit-protopnet-label-too-big", lambda: protopnet.fit_protopnet(protonet(), (images(4), labels(4, 3, bad=3)),
                                                                       warm_epochs=1, joint_epochs=0,
                                                                       last_epochs=0), ValueError, "train"),
    Bad("log-similarity-epsilon-zero", lambda: protopnet.log_similarity(torch.ones(2, 3), 0.0), ValueError,
        "epsilon"),
    Bad("log-similarity-negative-distance", lambda: protopnet.log_similarity(-torch.ones(2, 3), 1e-4), ValueError,
        "distances"),

    # senn
    Bad("senn-no-features", lambda: senn.SENN(0, 3), ValueError, "in_features"),
    Bad("senn-unknown-activation", lambda: senn.SENN(4, 3, activation="gelu2"), ValueError, "activation"),
    Bad("fit-senn-label-too-big", lambda: senn.fit_senn(senn_model(), (rows(), labels(bad=3)), epochs=1), ValueError,
        "train"),
    Bad("fit-senn-nan", lambda: senn.fit_senn(senn_model(), (rows(fill=NAN), labels()), epochs=1), ValueError,
        "train"),
    Bad("senn-loss-label-too-big", lambda: senn.senn_loss(senn_model(), rows(), labels(bad=3), 0.1, 0.1, 0.0),
        ValueError, "y"),
    Bad("robustness-wrong-width", lambda: senn.robustness_loss(senn_model(), rows(width=5)), ValueError, "x"),
    Bad("robustness-nan", lambda: senn.robustness_loss(senn_model(), rows(fill=NAN)), ValueError, "x"),
    Bad("evaluate-senn-wrong-width", lambda: senn.evaluate_senn(senn_model(), (rows(width=5), labels())), ValueError,
        "data"),
    Bad("senn-explain-nan", lambda: senn_model().explain(rows(fill=INF)), ValueError, "x"),

    # concepts
    Bad("bottleneck-unknown-mode", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4),
                                                                     torch.zeros(4, 4), mode="serial"),
        ValueError, "mode"),
    Bad("bottleneck-label-too-big", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4, bad=3),
                                                                      torch.zeros(4, 4), mode="joint", epochs=1),
        ValueError, "labels"),
    Bad("bottleneck-concepts-not-binary", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4),
                                                                            torch.full((4, 4), 2.0), mode="joint",
                                                                            epochs=1), ValueError, "concepts"),
    Bad("bottleneck-nan-images", lambda: concepts.train_bottleneck(bottleneck(), images(4, fill=NAN), labels(4),
                                                                   torch.zeros(4, 4), mode="joint", epochs=1),
        ValueError, "images"),
    Bad("bottleneck-concepts-length", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4),
                                                                        torch.zeros(3, 4), mode="joint", epochs=1),
        ValueError, "concepts"),
    Bad("bottleneck-concepts-width", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4),
                                                                       torch.zeros(4, 5), mode="joint", epochs=1),
        ValueError, "concepts"),
    Bad("intervene-which-out-of-range", lambda: bottleneck().intervene(images(), torch.zeros(2, 4), [4]),
        ValueError, "which"),
    Bad("encode-ted-explanation-too-big", lambda: concepts.encode_ted(labels(2), torch.tensor([0, 3]), 3),
        ValueError, "explanations"),
    Bad("decode-ted-negative", lambda: concepts.decode_ted(torch.tensor([-1]), 3), ValueError, "classes"),
    Bad("concept-mask-out-of-range", lambda: concepts.concept_mask([5], 4, 2), ValueError, "which"),
    Bad("bottleneck-no-concepts", lambda: concepts.ConceptBottleneck(3, 0), ValueError, "num_concepts"),
    Bad("ted-explain-nan", lambda: concepts.TEDClassifier(2, 2, widths=(4,)).explain(images(fill=NAN)), ValueError,
        "x"),

    # influence
    Bad("influence-label-too-big", lambda: influence.influence(mlp(), cross_entropy, (rows(), labels(bad=3)),
                                                               (rows(2), labels(2))), ValueError, "train"),
    Bad("influence-nan-train", lambda: influence.influence(mlp(), cross_entropy, (rows(fill=NAN), labels()),
                                                           (rows(2), labels(2))), ValueError, "train"),
    Bad("influence-test-wrong-width", lambda: influence.influence(mlp(), cross_entropy, (rows(), labels()),
                                                                  (rows(2, width=5), labels(2))), ValueError, "test"),
    Bad("influence-unknown-method", lambda: influence.influence(mlp(), cross_entropy, (rows(), labels()),
                                                                (rows(2), labels(2)), method="newton"), ValueError,
        "method"),
    Bad("influence-damping-negative", lambda: influence.influence(mlp(), cross_entropy, (rows(), labels()),
                                                                  (rows(2), labels(2)), damping=-1.0), ValueError,
        "damping"),
    Bad("influence-loss-not-callable", lambda: influence.influence(mlp(), "cross_entropy", (rows(), labels()),
                                                                   (rows(2), labels(2))), TypeError, "loss_fn"),
    Bad("self-influence-nan-weights", lambda: influence.self_influence(nan_weights(MLP(4, (6,), 3)), cross_entropy,
                                                                       (rows(), labels())), ValueError, "model"),
    Bad("tracin-lrs-length", lambda: influence.tracin(mlp(), cross_entropy, [mlp().state_dict()], (rows(), labels()),
                                                      (rows(2), labels(2)), [0.1, 0.1]), ValueError, "lrs"),
    Bad("tracin-checkpoint-keys", lambda: influence.tracin(mlp(), cross_entropy, [{"nope": torch.zeros(1)}],
                                                           (rows(), labels()), (rows(2), labels(2)), [0.1]),
        ValueError, "checkpoints"),
    Bad("leave-one-out-index", lambda: influence.leave_one_out(mlp(), cross_entropy, (rows(), labels()),
                                                               (rows(2), labels(2)), [8]), ValueError, "indices"),
    Bad("per-example-gradients-nan", lambda: influence.per_example_gradients(mlp(), cross_entropy,
                                                                             (rows(fill=NAN), labels())), ValueError,
        "data"),
    Bad("hessian-weight-decay-negative", lambda: influence.hessian(mlp(), cross_entropy, (rows(), labels()), -0.1),
        ValueError, "weight_decay"),

    # data
    Bad("shapes-n-zero", lambda: data.make_shapes(0), ValueError, "n"),
    Bad("shapes-unknown-split", lambda: data.make_shapes(4, split="valid"), ValueError, "split"),
    Bad("shapes-bias-too-big", lambda: data.make_shapes(4, spurious=True, bias=1.5), ValueError, "bias"),
    Bad("shapes-image-size-tiny", lambda: data.make_shapes(4, image_size=4), ValueError, "image_size"),
    Bad("parts-n-negative", lambda: data.make_parts(-1), ValueError, "n"),
    Bad("digits-unknown-split", lambda: data.load_digits("dev"), ValueError, "split"),

    # zoo
    Bad("zoo-unknown-name", lambda: zoo.load("resnet9000"), ValueError, "name"),
    Bad("zoo-device-tpu", lambda: zoo.load(zoo.names()[0], device="tpu"), ValueError, "device"),
    Bad("zoo-card-without-sha256", lambda: zoo.load(zoo.names()[0], directory=zoo_dir_without("sha256", TMP / "sha")),
        ValueError, "sha256"),
    Bad("zoo-card-without-architecture", lambda: zoo.load(zoo.names()[0],
                                                          directory=zoo_dir_without("architecture", TMP / "arch")),
        ValueError, "architecture"),
    Bad("zoo-train-over-an-existing-model", lambda: zoo.train("cancer_mlp", directory=zoo_dir_without("data",
                                                                                                TMP / "existing")),
        FileExistsError, "overwrite"),
    Bad("zoo-train-device-tpu", lambda: zoo.train("cancer_mlp", directory=TMP / "new", device="tpu"), ValueError,
        "device"),
    Bad("fit-protopnet-device-tpu", lambda: protopnet.fit_protopnet(protonet(), (images(4), labels(4)),
                                                                    device="tpu"), ValueError, "device"),
    Bad("train-bottleneck-device-tpu", lambda: concepts.train_bottleneck(bottleneck(), images(4), labels(4),
                                                                         torch.zeros(4, 4), mode="joint",
                                                                         device="cuda:7"), ValueError, "device"),
    Bad("retrain-gap-device-tpu", lambda: cam.retrain_gap_head(cnn().features, (images(4), labels(4)), device="tpu"),
        ValueError, "device"),
    Bad("bench-device-tpu", lambda: __import__("xnn_lab.bench").bench.bench_influence(device="tpu"), ValueError,
        "device"),
    Bad("zoo-directory-missing", lambda: zoo.load(zoo.names()[0], directory=TMP / "no-such-folder"),
        FileNotFoundError, "directory"),

    # viz and widgets
    Bad("overlay-heatmap-rank", lambda: viz.overlay(images()[0], maps()), ValueError, "heatmap"),
    Bad("overlay-nan-heatmap", lambda: viz.overlay(images()[0], maps(fill=NAN)[0]), ValueError, "heatmap"),
    Bad("overlay-nan-image", lambda: viz.overlay(images(fill=NAN)[0], maps()[0]), ValueError, "image"),
    Bad("show-images-rank-2", lambda: viz.show_images(maps()[0]), ValueError, "images"),
    Bad("show-overlays-titles", lambda: viz.show_overlays(images(), maps(), titles=["a"]), ValueError, "titles"),
    Bad("cam-grid-not-a-mapping", lambda: __import__("xnn_lab.widgets").widgets.cam_grid(images()[0], [gradcam()]),
        TypeError, "explainers"),

    # the command line: exit status 2, the message names the argument
    Bad("cli-zoo-unknown-name", cli("zoo", "check", "resnet9000"), 2, "resnet9000"),
    Bad("cli-zoo-missing-dir", cli("zoo", "check", "--dir", str(TMP / "no-such-folder")), 2, "--dir"),
    Bad("cli-bench-batch-size-zero", cli("bench", "cam", "--batch-size", "0"), 2, "--batch-size"),
    Bad("cli-bench-device-tpu", cli("bench", "influence", "--device", "tpu"), 2, "--device"),
    Bad("cli-bench-repeats-zero", cli("bench", "influence", "--repeats", "0"), 2, "--repeats"),
    Bad("cli-bench-json-is-a-folder", cli("bench", "influence", "--json", str(ROOT)), 2, "--json"),
    Bad("cli-bench-unknown-model", cli("bench", "cam", "--model", "resnet9000"), 2, "resnet9000"),
    Bad("cli-bench-unknown-backbone", cli("bench", "protopnet", "--backbone", "vgg99"), 2, "vgg99"),
    Bad("cli-zoo-train-over-existing", cli("zoo", "train", "cancer_mlp", "--dir", str(ROOT / "xnn_lab" / "zoo" /
                                                                                      "checkpoints")), 2, "--force"),
    Bad("cli-bench-stray-option", cli("bench", "influence", "--model", "resnet18"), 2, "--model"),
    Bad("cli-grade-missing-notebook", cli("grade", str(TMP / "missing.ipynb"), "--no-sandbox"), 2, "missing.ipynb"),
    Bad("cli-grade-workers-zero", cli("grade", str(ROOT / "solutions"), "--workers", "0", "--no-sandbox"), 2,
        "--workers"),
    Bad("cli-grade-timeout-negative", cli("grade", str(ROOT / "solutions"), "--timeout", "-1", "--no-sandbox"), 2,
        "--timeout"),
    Bad("cli-grade-unknown-chapter", cli("grade", str(ROOT / "solutions" / "02_cam.ipynb"), "--chapter", "99_x",
                                         "--no-sandbox"), 2, "--chapter"),
    Bad("cli-exercises-missing-folder", cli("exercises", "--solutions", str(TMP / "no-such-folder"), "--exercises", str(TMP / "out")), 2,
        "no-such-folder"),
    Bad("tools-chapters-missing-notebook", tool("chapters", str(TMP / "missing.ipynb")), 2, "missing.ipynb"),
    Bad("tools-performance-missing-records", tool("performance", str(TMP / "no-records")), 2, "no-records"),
]


# Every public function that takes images or data, called with one poisoned value in them.
def poisoned(value: float):
    x, rows_ = images(4, fill=value), rows(fill=value)
    pairs, tabular = (x, torch.arange(4) % 3), (rows_, labels())
    widgets = __import__("xnn_lab.widgets").widgets
    return {
        "fit": lambda: xnn_lab.fit(mlp(), tabular, epochs=1),
        "evaluate": lambda: xnn_lab.evaluate(mlp(), tabular),
        "predict": lambda: xnn_lab.predict(mlp(), rows_),
        "GradCAM": lambda: gradcam()(x),
        "GradCAMPlusPlus": lambda: cam.GradCAMPlusPlus(cnn(), "features.4")(x),
        "CAM": lambda: cam.CAM(cnn(), "features.4")(x),
        "CaptumExplainer": lambda: captum_saliency()(x),
        "retrain_gap_head": lambda: cam.retrain_gap_head(cnn().features, pairs, num_classes=3, epochs=1),
        "ice_curves": lambda: agnostic.ice_curves(mlp(), rows_, 0, target=0),
        "partial_dependence": lambda: agnostic.partial_dependence(mlp(), rows_, 0, target=0),
        "deletion_curve": lambda: metrics.deletion_curve(cnn(), x, maps(4), 0),
        "insertion_curve": lambda: metrics.insertion_curve(cnn(), x, maps(4), 0),
        "deletion_curve(maps)": lambda: metrics.deletion_curve(cnn(), images(4), maps(4, fill=value), 0),
        "road_curve": lambda: metrics.road_curve(cnn(), x, maps(4), 0, fractions=[0.5]),
        "road_curve(maps)": lambda: metrics.road_curve(cnn(), images(4), maps(4, fill=value), 0, fractions=[0.5]),
        "noisy_linear_imputation": lambda: metrics.noisy_linear_imputation(x, masks(4)),
        "graphs.fit_gnn": lambda: graphs_module().fit_gnn(graphs_module().GCN(10, 4), ba_with(value), epochs=1),
        "graphs.predict_gnn": lambda: graphs_module().predict_gnn(gcn(), ba_with(value)),
        "graphs.accuracy": lambda: graphs_module().accuracy(gcn(), ba_with(value)),
        "graphs.GNNExplainer": lambda: graphs_module().GNNExplainer(gcn(), epochs=1)(ba_with(value), index=400),
        "graphs.GradientSaliency": lambda: graphs_module().GradientSaliency(gcn())(ba_with(value), index=400),
        "graphs.IntegratedGradients": lambda: graphs_module().IntegratedGradients(gcn())(ba_with(value), index=400),
        "graphs.auroc": lambda: graphs_module().auroc(maps(fill=value)[0, 0], torch.arange(16) % 2 == 0),
        "graphs.top_k_mask": lambda: graphs_module().top_k_mask(maps(fill=value)[0, 0], 3),
        "blur_images": lambda: metrics.blur_images(x),
        "imagenet_image": lambda: imagenet_image(x[0]),
        "pointing_game": lambda: metrics.pointing_game(maps(fill=value), masks()),
        "energy_pointing_game": lambda: metrics.energy_pointing_game(maps(fill=value), masks()),
        "mass_in_mask": lambda: metrics.mass_in_mask(maps(fill=value), masks()),
        "saliency_ranks": lambda: metrics.saliency_ranks(maps(fill=value)),
        "rank_correlation": lambda: metrics.rank_correlation(maps(), maps(fill=value)),
        "area_under_curve": lambda: metrics.area_under_curve(maps(fill=value)[:, 0]),
        "randomization_sanity_check": lambda: metrics.randomization_sanity_check(gradcam(), x),
        "local_lipschitz": lambda: metrics.local_lipschitz(gradcam(), x, 0.1),
        "normalize": lambda: cam.normalize(maps(fill=value)),
        "to_decision_tree": lambda: trees.to_decision_tree(MLP(4, (3,), 2), data=rows_),
        "ProtoPNet.explain": lambda: protonet().explain(x),
        "top_prototypes": lambda: protopnet.top_prototypes(protonet(), x),
        "push_prototypes": lambda: protopnet.push_prototypes(protonet(), pairs),
        "nearest_patches": lambda: protopnet.nearest_patches(protonet(), pairs),
        "part_purity": lambda: protopnet.part_purity(protonet(), pairs, torch.zeros(4, 2, 16, 16, dtype=torch.bool)),
        "prune_prototypes": lambda: protopnet.prune_prototypes(protonet(), pairs),
        "protopnet_loss": lambda: protopnet.protopnet_loss(protonet(), x, torch.arange(4) % 3),
        "train_stage": lambda: protopnet.train_stage(protonet(), pairs, "joint", epochs=1),
        "SENN.explain": lambda: senn_model().explain(rows_),
        "fit_senn": lambda: senn.fit_senn(senn_model(), tabular, epochs=1),
        "evaluate_senn": lambda: senn.evaluate_senn(senn_model(), tabular),
        "senn_loss": lambda: senn.senn_loss(senn_model(), rows_, labels(), 0.1, 0.1, 0.0),
        "robustness_loss": lambda: senn.robustness_loss(senn_model(), rows_),
        "ConceptBottleneck.explain": lambda: bottleneck().explain(x),
        "MultitaskCNN.explain": lambda: concepts.MultitaskCNN(3, 4, widths=(4,)).explain(x),
        "TEDClassifier.explain": lambda: concepts.TEDClassifier(2, 2, widths=(4,)).explain(x),
        "intervene": lambda: bottleneck().intervene(x, torch.zeros(4, 4), [0]),
        "train_bottleneck": lambda: concepts.train_bottleneck(bottleneck(), x, torch.arange(4) % 3,
                                                              torch.zeros(4, 4), mode="joint", epochs=1),
        "influence": lambda: influence.influence(mlp(), cross_entropy, tabular, (rows(2), labels(2))),
        "influence(test)": lambda: influence.influence(mlp(), cross_entropy, (rows(), labels()),
                                                       (rows(2, fill=value), labels(2))),
        "self_influence": lambda: influence.self_influence(mlp(), cross_entropy, tabular),
        "per_example_gradients": lambda: influence.per_example_gradients(mlp(), cross_entropy, tabular),
        "hessian": lambda: influence.hessian(mlp(), cross_entropy, tabular),
        "tracin": lambda: influence.tracin(mlp(), cross_entropy, [mlp().state_dict()], tabular,
                                           (rows(2), labels(2)), 0.1),
        "leave_one_out": lambda: influence.leave_one_out(mlp(), cross_entropy, tabular, (rows(2), labels(2)), [0]),
        "overlay": lambda: viz.overlay(x[0], maps()[0]),
        "show_images": lambda: viz.show_images(x),
        "show_overlays": lambda: viz.show_overlays(images(2), maps(fill=value)),
        "cam_grid": lambda: widgets.cam_grid(x[0], {"last": {"Grad-CAM": gradcam()}}),
    }


# Every public function that takes a class target or labels, called with a class the model lacks.
def out_of_range(bad: int):
    x, pairs = images(4), (images(4), labels(4, 3, bad=bad))
    widgets = __import__("xnn_lab.widgets").widgets
    return {
        "fit": lambda: xnn_lab.fit(mlp(), (rows(), labels(bad=bad)), epochs=1),
        "evaluate": lambda: xnn_lab.evaluate(mlp(), (rows(), labels(bad=bad))),
        "GradCAM": lambda: gradcam()(x, target=bad),
        "GradCAMPlusPlus": lambda: cam.GradCAMPlusPlus(cnn(), "features.4")(x, target=torch.full((4,), bad)),
        "CAM": lambda: cam.CAM(cnn(), "features.4")(x, target=bad),
        "CaptumExplainer": lambda: captum_saliency()(x, target=bad),
        "retrain_gap_head": lambda: cam.retrain_gap_head(cnn().features, pairs, num_classes=3, epochs=1),
        "ice_curves": lambda: agnostic.ice_curves(mlp(), rows(), 0, target=bad),
        "deletion_curve": lambda: metrics.deletion_curve(cnn(), x, maps(4), bad),
        "insertion_curve": lambda: metrics.insertion_curve(cnn(), x, maps(4), torch.full((4,), bad)),
        "road_curve": lambda: metrics.road_curve(cnn(), x, maps(4), bad, fractions=[0.5]),
        "graphs.fit_gnn": lambda: graphs_module().fit_gnn(graphs_module().GCN(10, 4), ba_with(bad_label=bad),
                                                          epochs=1),
        "graphs.accuracy": lambda: graphs_module().accuracy(gcn(), ba_with(bad_label=bad)),
        "graphs.GNNExplainer": lambda: graphs_module().GNNExplainer(gcn(), epochs=1)(ba_shapes(), index=400,
                                                                                     target=bad),
        "graphs.GradientSaliency": lambda: graphs_module().GradientSaliency(gcn())(ba_shapes(), index=400,
                                                                                  target=bad),
        "randomization_sanity_check": lambda: metrics.randomization_sanity_check(gradcam(), x, bad),
        "top_prototypes": lambda: protopnet.top_prototypes(protonet(), x, target=torch.full((4,), bad)),
        "push_prototypes": lambda: protopnet.push_prototypes(protonet(), pairs),
        "protopnet_loss": lambda: protopnet.protopnet_loss(protonet(), x, labels(4, 3, bad=bad)),
        "train_stage": lambda: protopnet.train_stage(protonet(), pairs, "joint", epochs=1),
        "fit_senn": lambda: senn.fit_senn(senn_model(), (rows(), labels(bad=bad)), epochs=1),
        "evaluate_senn": lambda: senn.evaluate_senn(senn_model(), (rows(), labels(bad=bad))),
        "senn_loss": lambda: senn.senn_loss(senn_model(), rows(), labels(bad=bad), 0.1, 0.1, 0.0),
        "train_bottleneck": lambda: concepts.train_bottleneck(bottleneck(), x, labels(4, 3, bad=bad),
                                                              torch.zeros(4, 4), mode="joint", epochs=1),
        "influence": lambda: influence.influence(mlp(), cross_entropy, (rows(), labels(bad=bad)),
                                                 (rows(2), labels(2))),
        "self_influence": lambda: influence.self_influence(mlp(), cross_entropy, (rows(), labels(bad=bad))),
        "per_example_gradients": lambda: influence.per_example_gradients(mlp(), cross_entropy,
                                                                         (rows(), labels(bad=bad))),
        "tracin": lambda: influence.tracin(mlp(), cross_entropy, [mlp().state_dict()], (rows(), labels()),
                                           (rows(2), labels(2, bad=bad)), 0.1),
        "leave_one_out": lambda: influence.leave_one_out(mlp(), cross_entropy, (rows(), labels(bad=bad)),
                                                         (rows(2), labels(2)), [0]),
        "cam_grid": lambda: widgets.cam_grid(x[0], {"last": {"Grad-CAM": gradcam()}}, target=bad),
    }


POISONS = {"nan": NAN, "inf": INF, "-inf": -INF}
BAD_CLASSES = {"too-big": 7, "negative": -1}


@pytest.mark.parametrize("value", POISONS, ids=list(POISONS))
@pytest.mark.parametrize("function", list(poisoned(0.0)))
def test_nan_and_inf_are_refused_where_they_enter(function, value):
    with pytest.raises(ValueError, match="finite|NaN") as error:
        poisoned(POISONS[value])[function]()
    assert _raised_in_xnn_lab(error.value), error.value


@pytest.mark.parametrize("bad", BAD_CLASSES, ids=list(BAD_CLASSES))
@pytest.mark.parametrize("function", list(out_of_range(0)))
def test_a_class_the_model_lacks_is_refused(function, bad):
    with pytest.raises(ValueError, match="class|target|label|>= 0|out of bounds") as error:
        out_of_range(BAD_CLASSES[bad])[function]()
    assert _raised_in_xnn_lab(error.value), error.value


def _raised_in_xnn_lab(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    innermost = Path(frames[-1].filename).resolve() if frames else None
    return innermost is not None and (PACKAGE in innermost.parents or (ROOT / "tools") in innermost.parents)


def outcome(bad: Bad) -> tuple[str, str]:
    """(kind, what happened): clear, cryptic or silent."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            result = bad.call()
    except SystemExit as exit_:
        result = exit_.code
    except Exception as error:  # noqa: BLE001 - classifying what a user would see
        what = f"{type(error).__name__}: {error}"
        clear = (isinstance(bad.error, type) and isinstance(error, bad.error) and bad.names in str(error)
                 and _raised_in_xnn_lab(error))
        return ("clear" if clear else "cryptic"), what
    if bad.error == 2:
        message = stderr.getvalue()
        clear = result == 2 and "error:" in message and bad.names in message and "Traceback" not in message
        return ("clear" if clear else "cryptic" if result else "silent"), f"exit {result}: {message.strip()[-300:]}"
    return "silent", f"returned {type(result).__name__}"


@pytest.mark.parametrize("bad", BAD, ids=[bad.id for bad in BAD])
def test_bad_input_gets_a_clear_error(bad):
    kind, what = outcome(bad)
    assert kind == "clear", what


def test_the_table_is_large_enough():
    assert len(BAD) >= 80 and len({bad.id for bad in BAD}) == len(BAD)


if __name__ == "__main__":
    counts: dict[str, int] = {}
    for bad in BAD:
        kind, what = outcome(bad)
        counts[kind] = counts.get(kind, 0) + 1
        print(f"{kind:8s} {bad.id:40s} {what[:150]}")
    print(f"{len(BAD)} bad inputs: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("clear", "cryptic", "silent")))
