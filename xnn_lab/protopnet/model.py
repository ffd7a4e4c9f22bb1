r"""ProtoPNet ("this looks like that"): a backbone, 1x1 add-on layers, class-specific prototypes and
a linear last layer over prototype similarities.

For an image x the backbone and add-on layers give a latent grid :math:`\mathbf{z} = f(\mathbf{x})`
of shape (D, h, w), whose h w cells are the *patches*. Prototype :math:`\mathbf{p}_j` (shape
(D, 1, 1)) is compared with every patch, and its similarity score is

.. math:: g_{\mathbf{p}_j}(\mathbf{z}) = \max_{\tilde{\mathbf{z}} \in \text{patches}(\mathbf{z})}
   \log \frac{\|\tilde{\mathbf{z}} - \mathbf{p}_j\|_2^2 + 1}{\|\tilde{\mathbf{z}} - \mathbf{p}_j\|_2^2 + \epsilon};

the logits are :math:`h(g) = W g`, a last layer without bias. :meth:`ProtoPNet.explain` returns the
logits with their evidence (:class:`ProtoPNetExplanation`); the forward pass returns the logits alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from xnn_lab._core.checks import check_finite, check_float, check_int, check_tensor
from xnn_lab._core.state import model_state

# Weights of the last layer at initialisation (Chen et al. 2019): +1 from a prototype to its own
# class, -0.5 to every other class.
OWN_CLASS_WEIGHT, OTHER_CLASS_WEIGHT = 1.0, -0.5


def log_similarity(distances: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""The slide's similarity :math:`\log((d + 1) / (d + \epsilon))` of squared distances d.

    Decreasing in d for :math:`\epsilon < 1`: large (:math:`\log(1/\epsilon)`) at d = 0, near
    :math:`1/d` for large d. Any shape in, the same shape out.

    Args:
        distances: squared distances d >= 0, finite.
        epsilon: the small constant > 0 that keeps the similarity finite at d = 0.
    """
    check_tensor("distances", distances, floating=True)
    check_finite("distances", distances)
    if distances.numel() and float(distances.min()) < 0:
        raise ValueError(f"distances must be squared distances (>= 0), got a minimum of {float(distances.min())}")
    return _log_similarity(distances, check_float("epsilon", epsilon, minimum=0.0, open_min=True))


def _log_similarity(distances: torch.Tensor, epsilon: float) -> torch.Tensor:
    return torch.log((distances + 1) / (distances + epsilon))


class _Scores(NamedTuple):
    """What the forward pass and the loss need: logits and the distances they come from."""

    logits: torch.Tensor
    similarities: torch.Tensor
    min_distances: torch.Tensor
    distances: torch.Tensor


class ProtoPNetExplanation(NamedTuple):
    """A ProtoPNet's prediction and its evidence, for B images, M prototypes and C classes.

    Attributes:
        logits: (B, C), :math:`W g`.
        similarities: (B, M), the similarity score g of each prototype (that of its nearest patch).
        min_distances: (B, M), the squared distance of each prototype to its nearest patch.
        distances: (B, M, h, w), the squared distance of each prototype to every patch.
        contributions: (B, C, M), :math:`g_j W_{cj}`: what prototype j adds to the logit of class c;
            ``contributions.sum(-1)`` is ``logits``.
    """

    logits: torch.Tensor
    similarities: torch.Tensor
    min_distances: torch.Tensor
    distances: torch.Tensor
    contributions: torch.Tensor


@dataclass(frozen=True)
class ReceptiveField:
    """Where the latent cells of a backbone look in the input, per axis (rows, columns).

    Cell r of an axis is centred on input pixel coordinate ``start + r * jump`` (pixel i spans
    [i - 0.5, i + 0.5]) and sees ``size`` pixels around it (fewer at the image border).

    Attributes:
        size: (rows, columns) receptive-field size in pixels.
        jump: (rows, columns) distance in pixels between neighbouring cells (the total stride).
        start: (rows, columns) centre of cell 0, in pixel coordinates.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def boxes(self, cells: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Receptive-field boxes of latent cells, clipped to the image.

        Args:
            cells: (..., 2) integer (row, column) cell indices.
            image_size: (H, W) of the input images.

        Returns:
            (..., 4) int64 boxes (top, left, bottom, right), bottom and right exclusive.
        """
        cells = check_tensor("cells", cells, integral=True)
        if cells.shape[-1:] != (2,):
            raise ValueError(f"cells must have a last dimension of 2 (row, column), got shape {tuple(cells.shape)}")
        size = torch.tensor(self.size, dtype=torch.float64, device=cells.device)
        centre = torch.tensor(self.start, dtype=torch.float64, device=cells.device) + \
            cells.double() * torch.tensor(self.jump, dtype=torch.float64, device=cells.device)
        first = torch.ceil(centre - (size - 1) / 2).long()          # first pixel inside the field
        last = torch.floor(centre + (size - 1) / 2).long() + 1      # one past the last
        limit = torch.tensor(image_size, device=cells.device)
        first, last = first.clamp(min=0), torch.minimum(last, limit)
        return torch.stack([first[..., 0], first[..., 1], last[..., 0], last[..., 1]], dim=-1)


def _check_model(model) -> ProtoPNet:
    """``model`` itself, if it is a :class:`ProtoPNet`; a TypeError naming what it is otherwise."""
    if not isinstance(model, ProtoPNet):
        raise TypeError(f"model must be an xnn_lab.protopnet.ProtoPNet, got {type(model).__name__}")
    return model


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
              nn.Dropout, nn.Dropout2d, nn.GroupNorm, nn.InstanceNorm2d)


def _spatial_layers(module: nn.Module) -> list[nn.Module]:
    """The layers that move or widen the receptive field, in the order the input meets them.

    Sequential containers are unrolled; residual blocks (torchvision's BasicBlock and Bottleneck:
    ``conv1``, ``conv2``[, ``conv3``] and an optional ``downsample``) count by their main path,
    whose field contains the shortcut's.
    """
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return [module]
    if isinstance(module, _POINTWISE):
        return []
    if isinstance(module, nn.Sequential):
        return [layer for child in module for layer in _spatial_layers(child)]
    convs = [getattr(module, f"conv{i}", None) for i in (1, 2, 3)]
    if isinstance(convs[0], nn.Conv2d) and isinstance(convs[1], nn.Conv2d):
        return [conv for conv in convs if conv is not None]
    raise ValueError(f"cannot compute the receptive field through a {type(module).__name__}: the backbone "
                     "must be built from Sequential containers, Conv2d, pooling, pointwise layers and "
                     "residual blocks with conv1, conv2[, conv3]")


def receptive_field(backbone: nn.Module) -> ReceptiveField:
    """The receptive field of a backbone's output cells, by kernel/stride/padding arithmetic.

    Each layer with kernel k, stride s, padding p and dilation d maps (size, jump, start) to
    (size + (d (k - 1)) jump, jump s, start + (d (k - 1) / 2 - p) jump), from (1, 1, 0) at the input.

    Args:
        backbone: a module made of the layers :func:`_spatial_layers` accepts.

    Returns:
        a :class:`ReceptiveField`.

    Raises:
        ValueError: for a layer whose geometry is unknown (e.g. adaptive pooling).
    """
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    for layer in _spatial_layers(backbone):
        kernel, stride, padding = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
        dilation = _pair(getattr(layer, "dilation", 1))
        for axis in (0, 1):
            span = dilation[axis] * (kernel[axis] - 1)
            start[axis] += (span / 2 - padding[axis]) * jump[axis]
            size[axis] += span * jump[axis]
            jump[axis] *= stride[axis]
    return ReceptiveField(tuple(size), tuple(jump), tuple(start))


def backbone_features(model: nn.Module) -> nn.Module:
    """The convolutional feature extractor of a classifier: what ProtoPNet puts under its prototypes.

    ``model.features`` for :class:`xnn_lab.models.SmallCNN` (and torchvision's VGG, DenseNet, ...);
    for a torchvision ResNet, its layers up to ``layer4``, without ``avgpool`` and ``fc``.

    Args:
        model: the classifier; its modules are shared, not copied.

    Returns:
        a module mapping images (B, 3, H, W) to feature maps (B, K, h, w).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return features
    names = [name for name, _ in model.named_children()]
    if "avgpool" in names and "fc" in names:
        return nn.Sequential(*[child for name, child in model.named_children() if name not in ("avgpool", "fc")])
    raise ValueError(f"model must have a 'features' module or be a ResNet-like model with 'avgpool' and 'fc', "
                     f"got a {type(model).__name__} with children {names}")


class ProtoPNet(nn.Module):
    r"""Backbone -> add-on 1x1 convolutions (ending in a sigmoid) -> prototype layer -> last layer.

    ``prototypes_per_class`` prototypes belong to each class (prototype j to class
    ``prototype_classes[j]``); the last layer :math:`W` (C, M) starts at +1 from a prototype to its
    own class and -0.5 to the others, without bias. Squared distances to all patches come from the
    expansion :math:`\|\mathbf{z}\|^2 - 2\, \mathbf{z} \cdot \mathbf{p} + \|\mathbf{p}\|^2`, one matrix
    product for all prototypes and patches.

    Args:
        features: the backbone, images (B, in_channels, H, W) -> (B, K, h, w); e.g.
            ``SmallCNN(...).features`` or :func:`backbone_features` of a torchvision ResNet.
        num_classes: C, at least 2.
        prototypes_per_class: m; M = m C prototypes in all.
        prototype_dim: D, channels of the latent patches and prototypes.
        feature_channels: K; found by running the backbone once on a small image when ``None``.
        in_channels: channels of the input images.
        epsilon: the :math:`\epsilon` of the similarity, in (0, 1).
    """

    def __init__(self, features: nn.Module, num_classes: int, prototypes_per_class: int = 5, prototype_dim: int = 64,
                 feature_channels: int | None = None, in_channels: int = 3, epsilon: float = 1e-4):
        super().__init__()
        if not isinstance(features, nn.Module):
            raise TypeError(f"features must be a torch.nn.Module, got {type(features).__name__}")
        num_classes = check_int("num_classes", num_classes, minimum=2)
        prototypes_per_class = check_int("prototypes_per_class", prototypes_per_class, minimum=1)
        prototype_dim = check_int("prototype_dim", prototype_dim, minimum=1)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.epsilon = check_float("epsilon", epsilon, minimum=0.0, open_min=True)
        if self.epsilon >= 1:
            raise ValueError(f"epsilon must be < 1 (else the similarity does not fall with distance), got {epsilon}")
        if feature_channels is None:
            feature_channels = self._probe_channels(features)
        feature_channels = check_int("feature_channels", feature_channels, minimum=1)
        self.features = features
        self.add_on = nn.Sequential(nn.Conv2d(feature_channels, prototype_dim, 1), nn.ReLU(),
                                    nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Sigmoid())
        self.num_classes = num_classes
        num_prototypes = num_classes * prototypes_per_class
        # Uniform in [0, 1): the range of the sigmoid's outputs, where the latent patches live.
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, prototype_dim, 1, 1))
        self.register_buffer("prototype_classes", torch.arange(num_classes).repeat_interleave(prototypes_per_class))
        self.last_layer = nn.Linear(num_prototypes, num_classes, bias=False)
        with torch.no_grad():
            self.last_layer.weight.copy_(self.class_identity().T * (OWN_CLASS_WEIGHT - OTHER_CLASS_WEIGHT)
                                         + OTHER_CLASS_WEIGHT)

    def _probe_channels(self, features: nn.Module) -> int:
        # In eval mode: a probe in train mode would move the backbone's batch-norm statistics.
        with model_state(features), torch.no_grad():
            probe = next(features.parameters(), torch.empty(0))
            out = features(torch.zeros(1, self.in_channels, 64, 64, dtype=probe.dtype, device=probe.device))
        if out.ndim != 4:
            raise ValueError(f"features must map images to (B, K, h, w) feature maps, got an output of shape "
                             f"{tuple(out.shape)}")
        return out.shape[1]

    @property
    def num_prototypes(self) -> int:
        """M, the number of prototypes."""
        return self.prototypes.shape[0]

    def class_identity(self) -> torch.Tensor:
        """(M, C) float one-hot: row j marks the class prototype j belongs to."""
        return nn.functional.one_hot(self.prototype_classes, self.num_classes).to(self.prototypes.dtype)

    def receptive_field(self) -> ReceptiveField:
        """Where each latent cell looks in the input (the add-on layers are 1x1 and add nothing)."""
        return receptive_field(self.features)

    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=4, floating=True)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        return x

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The latent patches z = f(x): images (B, C_in, H, W) -> (B, D, h, w), values in (0, 1)."""
        return self.add_on(self.features(self._check_images(x)))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        r"""Squared distances :math:`\|\tilde{\mathbf{z}} - \mathbf{p}_j\|_2^2` of every prototype to every patch.

        Args:
            z: latent patches, shape (B, D, h, w).

        Returns:
            (B, M, h, w), clamped at 0 against rounding.
        """
        check_tensor("z", z, ndim=4, floating=True)
        if z.shape[1] != self.prototypes.shape[1]:
            raise ValueError(f"z must have {self.prototypes.shape[1]} channels (the prototype dimension D), "
                             f"got shape {tuple(z.shape)}")
        prototypes = self.prototypes[:, :, 0, 0]                                    # (M, D)
        z_squared = (z * z).sum(dim=1, keepdim=True)                               # (B, 1, h, w)
        # One matrix product for all patches and prototypes (a 1x1 convolution in effect); a matmul
        # rather than conv2d because cuDNN convolutions run in TF32 on recent GPUs by default,
        # whose rounding (about 1e-3 here) would swamp small distances.
        cross = torch.einsum("bdhw,md->bmhw", z, prototypes)                        # (B, M, h, w)
        p_squared = (prototypes * prototypes).sum(dim=1)[:, None, None]
        return (z_squared - 2 * cross + p_squared).clamp_min(0)

    def similarity(self, distances: torch.Tensor) -> torch.Tensor:
        r"""The similarity :math:`\log((d + 1) / (d + \epsilon))` of squared distances, any shape."""
        return _log_similarity(distances, self.epsilon)

    def _scores(self, z: torch.Tensor) -> _Scores:
        """Logits, similarities and distances of latent patches z (B, D, h, w): the forward pass,
        and all the loss needs."""
        distances = self.distances(z)
        # The similarity falls with distance, so its max over patches is the similarity of the
        # min-pooled distance: one log per prototype instead of one per patch.
        min_distances = distances.flatten(2).min(dim=2).values
        similarities = self.similarity(min_distances)
        return _Scores(self.last_layer(similarities), similarities, min_distances, distances)

    def explain(self, x: torch.Tensor) -> ProtoPNetExplanation:
        """The logits of images x (B, C_in, H, W) with their evidence, in the model's current mode.

        Returns:
            a :class:`ProtoPNetExplanation`: logits (B, C), similarities and min_distances (B, M),
            distances (B, M, h, w) and contributions (B, C, M).
        """
        return self.from_latent(self.latent(check_finite("x", self._check_images(x))))

    def from_latent(self, z: torch.Tensor) -> ProtoPNetExplanation:
        """What :meth:`explain` returns, from latent patches z (B, D, h, w) instead of images."""
        scores = self._scores(z)
        # g_j W_cj for every image, class and prototype; their sum over j is the logit W g.
        contributions = scores.similarities[:, None, :] * self.last_layer.weight[None]
        return ProtoPNetExplanation(*scores, contributions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C) of images x (B, C_in, H, W)."""
        return self._scores(self.latent(x)).logits

    @torch.no_grad()
    def keep_prototypes(self, keep: torch.Tensor) -> None:
        """Remove prototypes: keep only those where ``keep`` (M,) bool is true, with their columns of W.

        Every class must keep at least one prototype. The new parameters keep the old ones'
        ``requires_grad`` flags, and the new last layer the old one's train/eval flag.
        """
        check_tensor("keep", keep, ndim=1)
        if keep.dtype != torch.bool or keep.shape[0] != self.num_prototypes:
            raise ValueError(f"keep must be a bool tensor of shape ({self.num_prototypes},), got {keep.dtype} "
                             f"of shape {tuple(keep.shape)}")
        keep = keep.to(self.prototypes.device)
        kept_classes = self.prototype_classes[keep]
        if kept_classes.unique().numel() < self.num_classes:
            raise ValueError("keep must leave every class at least one prototype")
        old_prototypes, old_layer = self.prototypes, self.last_layer
        self.prototypes = nn.Parameter(old_prototypes[keep].clone(), requires_grad=old_prototypes.requires_grad)
        self.prototype_classes = kept_classes.clone()
        last_layer = nn.Linear(int(keep.sum()), self.num_classes, bias=False).to(old_prototypes)
        last_layer.weight.copy_(old_layer.weight[:, keep])
        last_layer.weight.requires_grad_(old_layer.weight.requires_grad)
        last_layer.train(old_layer.training)
        self.last_layer = last_layer
