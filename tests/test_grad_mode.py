"""Every public function that takes gradients works the same inside ``torch.no_grad()`` and
``torch.inference_mode()`` (common ways to wrap an evaluation), with inputs made there too."""

from __future__ import annotations

import contextlib

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from torch import nn

from xnn_lab import fit
from xnn_lab.agnostic import CaptumExplainer
from xnn_lab.cam import GradCAM, GradCAMPlusPlus, retrain_gap_head
from xnn_lab.concepts import ConceptBottleneck, train_bottleneck
from xnn_lab.influence import hessian, influence, leave_one_out, per_example_gradients, self_influence, tracin
from xnn_lab.metrics import local_lipschitz, randomization_sanity_check
from xnn_lab.models import MLP, SmallCNN
from xnn_lab.protopnet import ProtoPNet, train_stage
from xnn_lab.senn import SENN, fit_senn, robustness_loss, robustness_residual

MODES = {"grad": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(3, widths=(4, 8)).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(4, hidden=(5,), out_features=3).double().eval()


def _images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.randn(12, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return X, torch.arange(12) % 3


def _loss(logits, y):
    return nn.functional.cross_entropy(logits, y, reduction="none")


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _senn() -> SENN:
    torch.manual_seed(0)
    return SENN(4, 3, concept_hidden=(5,), relevance_hidden=(5,)).double()


def _gradcam() -> GradCAM:
    return GradCAM(_cnn(), "features.4")


def _trains(train):
    """A case that trains the model it is given and returns its weights afterwards."""
    def run(model):
        train(model)
        return _weights(model)
    return run


# Each case: what is built before the grad mode is set (the models: nobody builds a model inside
# inference mode), and what runs inside it (the inputs are made there too).
CASES = {
    "gradcam": (_gradcam, lambda cam: cam(_images())),
    "gradcam++": (lambda: GradCAMPlusPlus(_cnn(), "features.4"), lambda cam: cam(_images(), target="all")),
    "captum-saliency": (lambda: CaptumExplainer(Saliency(_cnn())), lambda explainer: explainer(_images())),
    "captum-integrated-gradients": (lambda: CaptumExplainer(IntegratedGradients(_cnn()), n_steps=8),
                                    lambda explainer: explainer(_images())),
    "local-lipschitz-ascent": (_senn, lambda model: local_lipschitz(model.relevances, _rows()[0], 0.1,
                                                                    num_samples=2, steps=2).values),
    "sanity-check": (_gradcam, lambda cam: torch.stack(list(
        randomization_sanity_check(cam, _images()).correlations.values()))),
    "senn-robustness-loss": (_senn, lambda model: robustness_loss(model, _rows()[0])),
    "senn-robustness-residual": (_senn, lambda model: robustness_residual(model, _rows()[0])),
    "per-example-gradients": (_mlp, lambda model: per_example_gradients(model, _loss, _rows())),
    "hessian": (_mlp, lambda model: hessian(model, _loss, _rows(), 0.01)),
    "influence-cg": (_mlp, lambda model: influence(model, _loss, _rows(), _rows(), 0.01, damping=1.0, method="cg")),
    "self-influence": (_mlp, lambda model: self_influence(model, _loss, _rows(), 0.01)),
    "tracin": (_mlp, lambda model: tracin(model, _loss, [_mlp().state_dict()], _rows(), _rows(), 0.1)),
    "leave-one-out": (_mlp, lambda model: leave_one_out(model, _loss, _rows(), _rows(), [0, 1], 0.1,
                                                        max_iter=3)),
    "fit": (_mlp, _trains(lambda model: fit(model, _rows(), epochs=2, batch_size=4))),
    "fit-senn": (_senn, _trains(lambda model: fit_senn(model, _rows(), epochs=1, batch_size=4, lam=0.1))),
    "retrain-gap-head": (_cnn, lambda cnn: _weights(retrain_gap_head(cnn.features, (_images(), torch.arange(3)),
                                                                     epochs=2)[0])),
    "train-bottleneck": (lambda: ConceptBottleneck(3, 3, widths=(4,)),
                         _trains(lambda model: train_bottleneck(model, _images(), torch.arange(3), torch.eye(3),
                                                                mode="joint", epochs=1))),
    "protopnet-stage": (lambda: ProtoPNet(_cnn().features, 3, prototypes_per_class=1, prototype_dim=4),
                        _trains(lambda model: train_stage(model, (_images(), torch.arange(3)), "joint",
                                                          epochs=1))),
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_gradients_are_taken_under_any_grad_mode(case, mode):
    build, run = CASES[case]
    torch.manual_seed(0)
    expected = run(build())
    torch.manual_seed(0)
    built = build()
    with MODES[mode]():
        got = run(built)
    torch.testing.assert_close(got, expected, equal_nan=True)
