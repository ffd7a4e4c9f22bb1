"""Self-explaining neural network (SENN): concepts h(x), relevances theta(x), an additive aggregator."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from xnn_lab._core.checks import check_choice, check_finite, check_int, check_tensor
from xnn_lab.models.mlp import MLP


class SENNExplanation(NamedTuple):
    """What ``SENN.explain`` returns for a batch: the prediction and the evidence it is made of.

    Attributes:
        logits: f(x), shape (B, C); ``logits[b, c] = sum_i relevances[b, i, c] * concepts[b, i]``.
        concepts: h(x), shape (B, k).
        relevances: theta(x), shape (B, k, C): the relevance of concept i for class c at x.
        reconstruction: the decoder's x_hat, shape (B, F), or ``None`` when the concepts are the
            input features themselves.
    """

    logits: torch.Tensor
    concepts: torch.Tensor
    relevances: torch.Tensor
    reconstruction: torch.Tensor | None


def _check_widths(name: str, widths) -> tuple[int, ...]:
    if not isinstance(widths, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of layer widths, got {widths!r}")
    for i, width in enumerate(widths):
        check_int(f"{name}[{i}]", width, minimum=1)
    return tuple(widths)


class SENN(nn.Module):
    r"""A self-explaining neural network :math:`f(x) = g(\theta(x)_1 h(x)_1, \ldots, \theta(x)_k h(x)_k)`.

    Three parts, as on the lecture's SENN slide (Alvarez-Melis and Jaakkola, 2018):

    - the conceptizer :math:`h(x) \in \mathbb{R}^k`: an MLP encoder with an MLP decoder that
      reconstructs :math:`\hat{x}` from the concepts (an autoencoder, trained with a sparsity
      penalty on :math:`h`), or, with ``num_concepts=None``, the input features themselves
      (:math:`h(x) = x`, the choice for tabular data whose features already mean something);
    - the parametrizer :math:`\theta(x) \in \mathbb{R}^{k \times C}`: an MLP giving the relevance
      of each concept for each class;
    - the aggregator, additive and without bias:
      :math:`f_c(x) = \sum_i \theta_{ic}(x) h_i(x)`, so each logit splits exactly into one
      contribution per concept.

    ``forward`` returns the logits, so ``xnn_lab.evaluate`` and ``predict`` take a SENN
    like any classifier; ``explain`` returns a :class:`SENNExplanation`: the logits with the
    concepts, relevances and reconstruction they are computed from.

    Args:
        in_features: input width F (flatten images first).
        num_classes: number of classes C, at least 2.
        num_concepts: number of learned concepts k, or ``None`` to use the F input features as
            the concepts (no autoencoder).
        concept_hidden: hidden widths of the encoder; the decoder mirrors them.
        relevance_hidden: hidden widths of the parametrizer.
        activation: the MLPs' activation, "relu", "leaky_relu" or "tanh".
    """

    def __init__(self, in_features: int, num_classes: int, num_concepts: int | None = None, *,
                 concept_hidden: tuple[int, ...] = (64,), relevance_hidden: tuple[int, ...] = (64, 64),
                 activation: str = "relu"):
        super().__init__()
        check_int("in_features", in_features, minimum=1)
        check_int("num_classes", num_classes, minimum=2)
        if num_concepts is not None:
            check_int("num_concepts", num_concepts, minimum=1)
        concept_hidden = _check_widths("concept_hidden", concept_hidden)
        relevance_hidden = _check_widths("relevance_hidden", relevance_hidden)
        check_choice("activation", activation, ("relu", "leaky_relu", "tanh"))
        self.config = {"in_features": in_features, "num_classes": num_classes, "num_concepts": num_concepts,
                       "concept_hidden": list(concept_hidden), "relevance_hidden": list(relevance_hidden),
                       "activation": activation}
        self.in_features = in_features
        self.num_classes = num_classes
        self.learns_concepts = num_concepts is not None
        self.num_concepts = num_concepts if self.learns_concepts else in_features
        if self.learns_concepts:
            self.encoder: nn.Module = MLP(in_features, concept_hidden, num_concepts, activation)
            self.decoder: nn.Module | None = MLP(num_concepts, concept_hidden[::-1], in_features, activation)
        else:
            self.encoder, self.decoder = nn.Identity(), None
        self.parametrizer = MLP(in_features, relevance_hidden, self.num_concepts * num_classes, activation)

    def _check_input(self, name: str, x: torch.Tensor, *, finite: bool = True) -> None:
        """The shape of ``x``, and with ``finite`` its values: not in ``forward``, which
        ``torch.func`` transforms such as vmap run, where a check that reads values cannot."""
        check_tensor(name, x, ndim=2, floating=True)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{name} must have {self.in_features} features (shape (B, {self.in_features})), "
                             f"got shape {tuple(x.shape)}")
        if finite:
            check_finite(name, x)

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """The concepts h(x), shape (B, k), of inputs x (B, F); no input check (used under vmap)."""
        return self.encoder(x)

    def relevances(self, x: torch.Tensor) -> torch.Tensor:
        """The relevances theta(x), shape (B, k, C), of inputs x (B, F); no input check (used under vmap)."""
        return self.parametrizer(x).unflatten(-1, (self.num_concepts, self.num_classes))

    @staticmethod
    def aggregate(concepts: torch.Tensor, relevances: torch.Tensor) -> torch.Tensor:
        """The additive aggregator f_c = sum_i theta_ic h_i: (B, k) and (B, k, C) give (B, C)."""
        return torch.einsum("bk,bkc->bc", concepts, relevances)

    def decode(self, concepts: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction x_hat (B, F) of concepts (B, k); only for learned concepts."""
        if self.decoder is None:
            raise ValueError("decode needs learned concepts (num_concepts set); this SENN uses the input "
                             "features as its concepts and has no decoder")
        check_tensor("concepts", concepts, ndim=2, floating=True)
        if concepts.shape[1] != self.num_concepts:
            raise ValueError(f"concepts must have shape (B, {self.num_concepts}), got {tuple(concepts.shape)}")
        return self.decoder(concepts)

    def explain(self, x: torch.Tensor) -> SENNExplanation:
        """Prediction and explanation of inputs x (B, F), differentiable (the SENN loss trains on it).

        Returns:
            a ``SENNExplanation``: logits (B, C), concepts (B, k), relevances (B, k, C) and the
            reconstruction (B, F), or ``None`` for it when the concepts are the input features.
        """
        self._check_input("x", x)
        concepts, relevances = self.concepts(x), self.relevances(x)
        reconstruction = self.decoder(concepts) if self.decoder is not None else None
        return SENNExplanation(self.aggregate(concepts, relevances), concepts, relevances, reconstruction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores f(x), shape (B, C), for inputs x (B, F)."""
        self._check_input("x", x, finite=False)
        return self.aggregate(self.concepts(x), self.relevances(x))
