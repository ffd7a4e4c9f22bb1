"""Explaining a GNN's predictions: GNNExplainer, gradient saliency, Integrated Gradients and a
random baseline, batched over many explained nodes or graphs.

Every explainer is a callable ``explainer(data, index=None, target=None) -> GraphExplanation``:

- a **node task**: ``data`` is one ``Data`` and ``index`` the nodes to explain. Each explained
  node gets its own copy of its computation subgraph (the nodes within ``num_hops`` hops and the
  edges among them, :func:`computation_subgraphs`); the copies form one disjoint graph, so one
  forward and one backward pass explain every node at once and each node's masks are its own.
- a **graph task**: ``data`` is a list of ``Data`` (or a ``Batch``); every graph is explained.

``target`` is the class explained per node or graph (default: the model's prediction, a
*model* explanation in PyTorch Geometric's terms). Edge masks reach the model through PyG's
``set_masks``, which scales every message of every ``MessagePassing`` layer by its edge's mask;
node masks scale the node features. No explainer moves the model, changes its modes or flags,
or leaves gradients or edge masks in it.
"""

from __future__ import annotations

from math import sqrt
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.nn import MessagePassing

from xnn_lab._core.checks import check_finite, check_float, check_int, check_tensor
from xnn_lab._core.state import model_device, model_state
from xnn_lab.graphs.data import batch_of


class GraphExplanation(NamedTuple):
    """Explanations of K nodes or graphs, as masks over one disjoint graph of K parts.

    Attributes:
        node_mask: (N',) importance of every node of every part.
        edge_mask: (E',) importance of every edge of every part.
        node_group, edge_group: (N',), (E',) the part (0..K-1) each node and edge belongs to.
        node_id, edge_id: (N',), (E',) each node's and edge's index in the input (for a graph
            task: in the input's ``Batch``).
        edge_index: (2, E') the parts' edges, in the parts' own node numbering.
        active: (E',) bool: the edge lies in the computation graph of its part's prediction (its
            message reaches the explained node within ``num_hops`` layers; every edge for a
            graph task). Outside it every mask is zero.
        feature_mask: (N', F) per-feature attributions (gradient methods), else None.
        target: (K,) the classes explained.
        centre: (K,) the explained node's position among the N' nodes (node task), else None.
        x: (N', F) the parts' node features, so that the parts can be run again (fidelity).
    """

    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    node_group: torch.Tensor
    edge_group: torch.Tensor
    node_id: torch.Tensor
    edge_id: torch.Tensor
    edge_index: torch.Tensor
    active: torch.Tensor
    feature_mask: torch.Tensor | None
    target: torch.Tensor
    centre: torch.Tensor | None
    x: torch.Tensor


class _Parts(NamedTuple):
    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    edge_group: torch.Tensor
    node_id: torch.Tensor
    edge_id: torch.Tensor
    active: torch.Tensor
    centre: torch.Tensor | None
    count: int
    node_local: torch.Tensor   # index of each node in the graph its explanation sees whole
    edge_local: torch.Tensor
    node_total: list           # per part: nodes and edges of that graph
    edge_total: list


def computation_subgraphs(data: Data, index: torch.Tensor, num_hops: int) -> _Parts:
    """Copies of each node's computation subgraph, as one disjoint graph (vectorised).

    The subgraph of node c holds every edge u -> v whose target v lies within ``num_hops`` hops
    of c, and the nodes at its ends. The edges with v within ``num_hops - 1`` hops are *active*:
    their messages reach c within ``num_hops`` layers. The others keep every node within
    ``num_hops`` hops at its full in-degree, so that a model that normalises by degree (GCN)
    gives c exactly the output it has on the whole graph.

    Args:
        data: a graph with ``x`` (N, F) and ``edge_index`` (2, E).
        index: (K,) the nodes, each in [0, N).
        num_hops: the number of message-passing layers of the model.

    Returns:
        the parts: ``x``, ``edge_index``, ``batch`` (part of each node), ``edge_group``,
        ``node_id``, ``edge_id``, ``active``, ``centre`` and ``count`` (K), and the bookkeeping
        that maps each part back onto the whole graph.
    """
    num_hops = check_int("num_hops", num_hops, minimum=1)
    n = data.num_nodes
    index = _check_index(index, n)
    source, target = data.edge_index
    device = data.edge_index.device
    reach = torch.zeros(len(index), n, dtype=torch.bool, device=device)
    reach[torch.arange(len(index), device=device), index] = True
    within = [reach]
    for _ in range(num_hops):
        # u joins when an edge u -> v leads to a node v already reached
        hits = torch.zeros(len(index), n, device=device).index_add_(
            1, source, within[-1][:, target].float())
        within.append(within[-1] | (hits > 0))
    edge_part, edge = within[-1][:, target].nonzero(as_tuple=True)
    inside = within[-1].clone()
    inside[edge_part, source[edge]] = True
    part, node = inside.nonzero(as_tuple=True)
    position = torch.full((len(index), n), -1, dtype=torch.long, device=device)
    position[part, node] = torch.arange(len(part), device=device)
    edge_index = torch.stack([position[edge_part, source[edge]], position[edge_part, target[edge]]])
    active = within[-2][edge_part, target[edge]]
    centre = position[torch.arange(len(index), device=device), index]
    count = len(index)
    return _Parts(data.x[node], edge_index, part, edge_part, node, edge, active, centre, count,
                  node, edge, [n] * count, [data.edge_index.shape[1]] * count)


def _check_index(index, n: int) -> torch.Tensor:
    if isinstance(index, int) and not isinstance(index, bool):
        index = torch.tensor([index])
    check_tensor("index", index, ndim=1, integral=True)
    if len(index) == 0:
        raise ValueError("index must name at least one node, got an empty tensor")
    if index.min() < 0 or index.max() >= n:
        raise ValueError(f"index must hold node indices in [0, {n}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    return index


def _parts(data, index, num_hops: int | None, device: torch.device) -> _Parts:
    if index is not None:
        if not isinstance(data, Data) or isinstance(data, Batch):
            raise TypeError(f"data must be one torch_geometric Data for a node task (index given), "
                            f"got {type(data).__name__}")
        if num_hops is None:
            raise ValueError("num_hops: the model has no num_layers attribute; pass num_hops")
        index = _check_index(index, data.num_nodes)
        return computation_subgraphs(data.to(device), index.to(device), num_hops)
    if isinstance(data, Data) and not isinstance(data, Batch) and "train_mask" in data:
        raise ValueError("index must name the nodes to explain for a node task (data has train_mask)")
    batch = batch_of(data).to(device)
    nodes = torch.arange(batch.num_nodes, device=device)
    edges = torch.arange(batch.num_edges, device=device)
    edge_group = batch.batch[batch.edge_index[0]]
    node_total = torch.bincount(batch.batch, minlength=batch.num_graphs)
    edge_total = torch.bincount(edge_group, minlength=batch.num_graphs)
    node_start = torch.cumsum(node_total, 0) - node_total
    edge_start = torch.cumsum(edge_total, 0) - edge_total
    return _Parts(batch.x, batch.edge_index, batch.batch, edge_group, nodes, edges,
                  torch.ones(batch.num_edges, dtype=torch.bool, device=device), None, batch.num_graphs,
                  nodes - node_start[batch.batch], edges - edge_start[edge_group],
                  node_total.tolist(), edge_total.tolist())


def _scores(model: nn.Module, parts: _Parts, x: torch.Tensor) -> torch.Tensor:
    """(K, C) logits of the explained nodes or graphs."""
    if parts.centre is not None:
        return model(x, parts.edge_index)[parts.centre]
    return model(x, parts.edge_index, parts.batch)


def _install_edge_mask(model: nn.Module, mask: torch.Tensor, edge_index: torch.Tensor, *,
                       apply_sigmoid: bool) -> torch.Tensor:
    """PyG's ``set_masks``, returning the tensor the layers really use: on a layer that once held
    a ``Parameter`` mask (after PyG's own GNNExplainer ran), ``set_masks`` wraps the mask in a new
    ``Parameter``, a new leaf that gradients and optimisers must address instead."""
    set_masks(model, mask, edge_index, apply_sigmoid=apply_sigmoid)
    for module in model.modules():
        if isinstance(module, MessagePassing) and module.explain:
            return module._edge_mask
    raise ValueError("model must contain a torch_geometric MessagePassing layer to take edge masks")


def _group_sum(values: torch.Tensor, group: torch.Tensor, count: int) -> torch.Tensor:
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add_(0, group, values)


class _Explainer:
    """What every explainer shares: the model, its depth, the parts, the target."""

    def __init__(self, model: nn.Module, *, num_hops: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if num_hops is None:
            num_hops = getattr(model, "num_layers", None)
        self.num_hops = None if num_hops is None else check_int("num_hops", num_hops, minimum=1)

    def __call__(self, data, index=None, target=None) -> GraphExplanation:
        device = model_device(self.model)
        parts = _parts(data, index, self.num_hops, device)
        check_finite("data.x", parts.x)
        with model_state(self.model, requires_grad=False):
            try:
                with torch.no_grad():
                    scores = _scores(self.model, parts, parts.x)
                target = _check_target(target, scores)
                return self._explain(parts, target.to(device))
            finally:
                clear_masks(self.model)

    def _explain(self, parts: _Parts, target: torch.Tensor) -> GraphExplanation:
        raise NotImplementedError

    def _result(self, parts: _Parts, node_mask, edge_mask, feature_mask, target) -> GraphExplanation:
        active = parts.active
        return GraphExplanation(node_mask.detach(), (edge_mask * active).detach(), parts.batch,
                                parts.edge_group, parts.node_id, parts.edge_id, parts.edge_index, active,
                                None if feature_mask is None else feature_mask.detach(), target,
                                parts.centre, parts.x)


def _check_target(target, scores: torch.Tensor) -> torch.Tensor:
    """The classes to explain: ``target``, checked against the (K, C) scores, or the predicted ones."""
    predicted = scores.argmax(1)
    if target is None:
        return predicted
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full_like(predicted, target)
    check_tensor("target", target, ndim=1, integral=True)
    if len(target) != len(predicted):
        raise ValueError(f"target must hold one class per explained node or graph ({len(predicted)}), "
                         f"got {len(target)}")
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= scores.shape[1]:
        raise ValueError(f"target must hold classes in [0, {scores.shape[1]}) for a model with "
                         f"{scores.shape[1]} outputs, got {low if low < 0 else high}")
    return target.to(predicted.device)


def _entropy(m: torch.Tensor, eps: float) -> torch.Tensor:
    return -m * torch.log(m + eps) - (1 - m) * torch.log(1 - m + eps)


class GNNExplainer(_Explainer):
    """GNNExplainer (Ying et al., 2019), batched: a soft edge mask and a node mask per explanation.

    For each explained node or graph it learns an edge mask :math:`\\sigma(M)` and a node mask
    :math:`\\sigma(m)` that keep the prediction of the target class while being small and nearly
    binary, by Adam on

    .. math::

        -\\log p(y \\mid G \\odot \\sigma(M), X \\odot \\sigma(m))
        + \\alpha_e \\sum \\sigma(M) + \\beta_e \\overline{H(\\sigma(M))}

        + \\alpha_n \\overline{\\sigma(m)} + \\beta_n \\overline{H(\\sigma(m))},

    the sums and means taken over the elements that receive a gradient at the first step (the
    computation graph), where the returned masks are kept (zero elsewhere). This is PyTorch
    Geometric's ``GNNExplainer`` (``node_mask_type="object"``, ``edge_mask_type="object"``,
    model explanation, raw logits) with its default coefficients, run on every explanation at
    once: the parts are disjoint and Adam works element by element, so explanation k equals
    PyG's run on the whole graph (node task: for that one node; graph task: on that one graph)
    with the global seed set to ``seed + k``, restricted to the part (a test checks it).

    Args:
        model: ``model(x, edge_index, batch=None) -> logits`` built of PyG ``MessagePassing`` layers.
        epochs: optimisation steps.
        lr: Adam's learning rate.
        num_hops: the model's message-passing depth (default: ``model.num_layers``).
        seed: explanation k starts from masks drawn with seed ``seed + k``.
        edge_size, edge_ent, node_feat_size, node_feat_ent: the coefficients
            :math:`\\alpha_e, \\beta_e, \\alpha_n, \\beta_n`.
        node_mask: learn the node mask too (PyG's ``node_mask_type="object"``); ``False``:
            edges only (``node_mask_type=None``), and the returned node mask is all ones.
    """

    def __init__(self, model: nn.Module, *, epochs: int = 100, lr: float = 0.01,
                 num_hops: int | None = None, seed: int = 0, edge_size: float = 0.005,
                 edge_ent: float = 1.0, node_feat_size: float = 1.0, node_feat_ent: float = 0.1,
                 node_mask: bool = True):
        super().__init__(model, num_hops=num_hops)
        if not isinstance(node_mask, bool):
            raise TypeError(f"node_mask must be a bool, got {node_mask!r} ({type(node_mask).__name__})")
        self.learn_node_mask = node_mask
        self.epochs = check_int("epochs", epochs, minimum=1)
        self.lr = check_float("lr", lr, minimum=0.0, open_min=True)
        self.seed = check_int("seed", seed, minimum=0)
        self.coeffs = {name: check_float(name, value, minimum=0.0) for name, value in
                       (("edge_size", edge_size), ("edge_ent", edge_ent),
                        ("node_feat_size", node_feat_size), ("node_feat_ent", node_feat_ent))}

    def _initial_masks(self, parts: _Parts) -> tuple[torch.Tensor, torch.Tensor]:
        # Explanation k draws PyG's initial masks for the whole graph it explains (seed + k)
        # and keeps the entries of its part.
        node_init = torch.empty(len(parts.x), 1)
        edge_init = torch.empty(parts.edge_index.shape[1])
        gain = torch.nn.init.calculate_gain("relu")
        node_local, edge_local = parts.node_local.cpu(), parts.edge_local.cpu()
        node_order = torch.argsort(parts.batch.cpu(), stable=True)
        edge_order = torch.argsort(parts.edge_group.cpu(), stable=True)
        node_sizes = torch.bincount(parts.batch.cpu(), minlength=parts.count).tolist()
        edge_sizes = torch.bincount(parts.edge_group.cpu(), minlength=parts.count).tolist()
        node_rows, edge_rows = node_order.split(node_sizes), edge_order.split(edge_sizes)
        for k in range(parts.count):
            g = torch.Generator().manual_seed(self.seed + k)
            n, e = parts.node_total[k], parts.edge_total[k]
            node_all = torch.randn(n, 1, generator=g) * 0.1
            edge_all = torch.randn(e, generator=g) * (gain * sqrt(2.0 / (2 * n)))
            node_init[node_rows[k]] = node_all[node_local[node_rows[k]]]
            edge_init[edge_rows[k]] = edge_all[edge_local[edge_rows[k]]]
        device = parts.x.device
        return node_init.to(device), edge_init.to(device)

    def _explain(self, parts: _Parts, target: torch.Tensor) -> GraphExplanation:
        node_init, edge_init = self._initial_masks(parts)
        node_param = node_init.requires_grad_(self.learn_node_mask)
        edge_param = _install_edge_mask(self.model, edge_init.requires_grad_(True), parts.edge_index,
                                        apply_sigmoid=True)
        unit_group = parts.edge_group
        optimizer = torch.optim.Adam([node_param, edge_param] if self.learn_node_mask else [edge_param],
                                     lr=self.lr)
        if not self.learn_node_mask:
            node_param = torch.full_like(node_init, torch.inf)
        eps, c = 1e-15, self.coeffs
        count = parts.count
        node_count = edge_count = hard_node = hard_edge = None
        with torch.enable_grad():
            for epoch in range(self.epochs):
                optimizer.zero_grad()
                scores = _scores(self.model, parts, parts.x * node_param.sigmoid())
                loss = F.cross_entropy(scores, target, reduction="sum")
                if hard_edge is not None:
                    m = edge_param.sigmoid()
                    loss = loss + c["edge_size"] * (m * hard_edge).sum()
                    ent = _group_sum(_entropy(m, eps) * hard_edge, unit_group, count) / edge_count
                    loss = loss + c["edge_ent"] * ent.sum()
                    if self.learn_node_mask:
                        m = node_param.sigmoid()[:, 0]
                        size = _group_sum(m * hard_node, parts.batch, count) / node_count
                        ent = _group_sum(_entropy(m, eps) * hard_node, parts.batch, count) / node_count
                        loss = loss + c["node_feat_size"] * size.sum() + c["node_feat_ent"] * ent.sum()
                loss.backward()
                optimizer.step()
                if epoch == 0:
                    hard_edge = (edge_param.grad != 0).float()
                    hard_node = ((node_param.grad[:, 0] != 0).float() if self.learn_node_mask
                                 else torch.ones(len(node_param), device=node_param.device))
                    edge_count = _group_sum(hard_edge, unit_group, count).clamp(min=1)
                    node_count = _group_sum(hard_node, parts.batch, count).clamp(min=1)
        if hard_edge is None:
            raise AssertionError("unreachable: epochs >= 1")
        edge_mask = edge_param.detach().sigmoid() * hard_edge
        node_mask = node_param.detach().sigmoid()[:, 0] * hard_node
        return self._result(parts, node_mask, edge_mask, None, target)


class GradientSaliency(_Explainer):
    """Gradient saliency: :math:`|\\partial y^c / \\partial M_e|` for every edge's mask (all ones)
    and :math:`|\\partial y^c / \\partial x_{vi}|` for every node feature, in one backward pass.

    The node mask sums the feature mask over the features. As captum's ``Saliency`` through
    PyG's ``CaptumExplainer`` (a test checks it).

    Args:
        model: ``model(x, edge_index, batch=None) -> logits`` of PyG ``MessagePassing`` layers.
        num_hops: the model's message-passing depth (default: ``model.num_layers``).
    """

    def _gradients(self, parts: _Parts, target: torch.Tensor, scale: float):
        x = (parts.x * scale).requires_grad_(True)
        edges = torch.full((parts.edge_index.shape[1],), scale, device=x.device, requires_grad=True)
        edges = _install_edge_mask(self.model, edges, parts.edge_index, apply_sigmoid=False)
        with torch.enable_grad():
            scores = _scores(self.model, parts, x)
            return torch.autograd.grad(scores.gather(1, target[:, None]).sum(), (x, edges),
                                       allow_unused=True)

    def _explain(self, parts: _Parts, target: torch.Tensor) -> GraphExplanation:
        x_grad, edge_grad = self._gradients(parts, target, 1.0)
        features = x_grad.abs()
        return self._result(parts, features.sum(1), edge_grad.abs(), features, target)


class IntegratedGradients(GradientSaliency):
    """Integrated Gradients (Sundararajan et al., 2017) on node features and edges together.

    Along the straight path from the baseline (features zero, every edge mask zero) to the
    input (features ``x``, every edge mask one), the attribution of input :math:`z_i` is
    :math:`(z_i - z'_i) \\frac{1}{S} \\sum_{s} \\partial y^c / \\partial z_i
    \\big|_{z' + \\alpha_s (z - z')}` with the midpoint rule :math:`\\alpha_s = (s + 1/2) / S`,
    captum's ``"riemann_middle"``. The edge mask keeps the signed attributions (positive: the
    edge's message raises the class score); the node mask sums the features' attributions.

    Args:
        model: ``model(x, edge_index, batch=None) -> logits`` of PyG ``MessagePassing`` layers.
        steps: S.
        num_hops: the model's message-passing depth (default: ``model.num_layers``).
    """

    def __init__(self, model: nn.Module, *, steps: int = 32, num_hops: int | None = None):
        super().__init__(model, num_hops=num_hops)
        self.steps = check_int("steps", steps, minimum=1)

    def _explain(self, parts: _Parts, target: torch.Tensor) -> GraphExplanation:
        x_total = torch.zeros_like(parts.x)
        edge_total = torch.zeros(parts.edge_index.shape[1], device=parts.x.device)
        for s in range(self.steps):
            x_grad, edge_grad = self._gradients(parts, target, (s + 0.5) / self.steps)
            x_total += x_grad
            edge_total += edge_grad
        features = parts.x * x_total / self.steps
        return self._result(parts, features.sum(1), edge_total / self.steps, features, target)


class RandomExplainer(_Explainer):
    """The baseline every explainer must beat: uniform random node and edge masks.

    Args:
        model: the model (used only for the default target and the computation graphs).
        num_hops: the model's message-passing depth (default: ``model.num_layers``).
        seed: the masks are drawn from a generator seeded with it.
    """

    def __init__(self, model: nn.Module, *, num_hops: int | None = None, seed: int = 0):
        super().__init__(model, num_hops=num_hops)
        self.seed = check_int("seed", seed, minimum=0)

    def _explain(self, parts: _Parts, target: torch.Tensor) -> GraphExplanation:
        g = torch.Generator().manual_seed(self.seed)
        node_mask = torch.rand(len(parts.x), generator=g).to(parts.x.device)
        edge_mask = torch.rand(parts.edge_index.shape[1], generator=g).to(parts.x.device)
        return self._result(parts, node_mask, edge_mask, None, target)
