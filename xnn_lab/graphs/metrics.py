"""Scoring graph explanations against ground truth and by fidelity.

- :func:`auroc`: ROC AUC of a mask against a true mask (ties count one half), pooled or per
  group; equal to ``torch_geometric.explain.metric.groundtruth_metrics(..., "auroc")``.
- :func:`precision_at_k`: the share of true elements among the k highest-scored, per group.
- :func:`top_k_mask`: the k highest-scored elements of each group, as a hard mask.
- :func:`symmetrize`: one value per undirected edge, the mean of its two directions.
- :func:`fidelity`: :math:`\\mathrm{fid}_+` and :math:`\\mathrm{fid}_-` of an explanation (the
  prediction without / with only the explanation), as PyG's ``fidelity`` for model explanations.
"""

from __future__ import annotations

import torch
from torch import nn

from xnn_lab._core.checks import check_finite, check_int, check_tensor
from xnn_lab._core.state import model_device, model_state


def _scores_and_labels(scores, labels, group):
    check_tensor("scores", scores, ndim=1)
    check_finite("scores", scores)
    check_tensor("labels", labels, ndim=1)
    if labels.dtype != torch.bool:
        raise TypeError(f"labels must be a bool tensor, got dtype {labels.dtype}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    if group is None:
        group = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    else:
        check_tensor("group", group, ndim=1, integral=True)
        if group.shape != scores.shape:
            raise ValueError(f"group must have the shape of scores {tuple(scores.shape)}, "
                             f"got {tuple(group.shape)}")
        if len(group) and group.min() < 0:
            raise ValueError("group must hold non-negative group ids")
    return scores.detach().double(), labels.to(scores.device), group.to(scores.device)


def _sort_within_groups(scores: torch.Tensor, group: torch.Tensor, descending: bool) -> torch.Tensor:
    order = scores.argsort(descending=descending, stable=True)
    return order[group[order].argsort(stable=True)]


def auroc(scores: torch.Tensor, labels: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """ROC AUC: the chance that a true element scores above a false one (ties count 1/2).

    Computed from ranks (Mann-Whitney U): tied scores share their mean rank.

    Args:
        scores: (M,) explanation mask values.
        labels: (M,) bool ground truth.
        group: optional (M,) group ids (0..G-1): one AUROC per group.

    Returns:
        a 0-d tensor (pooled) or (G,) per group; NaN where a group lacks true or false elements.
    """
    pooled = group is None
    scores, labels, group = _scores_and_labels(scores, labels, group)
    count = int(group.max()) + 1 if len(group) else 1
    order = _sort_within_groups(scores, group, descending=False)
    s, g, y = scores[order], group[order], labels[order]
    # runs of equal (group, score) share the mean of their 1-based positions within the group
    new_run = torch.ones(len(s), dtype=torch.bool, device=s.device)
    new_run[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    run = torch.cumsum(new_run, 0) - 1
    position = torch.arange(1, len(s) + 1, dtype=torch.float64, device=s.device)
    group_start = torch.zeros(count, dtype=torch.float64, device=s.device)
    sizes = torch.bincount(g, minlength=count)
    group_start[1:] = torch.cumsum(sizes, 0)[:-1].double()
    position = position - group_start[g]
    runs = int(run[-1]) + 1 if len(run) else 0
    run_sum = torch.zeros(runs, dtype=torch.float64, device=s.device).index_add_(0, run, position)
    run_len = torch.bincount(run, minlength=runs).double()
    rank = (run_sum / run_len)[run]
    positives = torch.bincount(g, weights=y.double(), minlength=count)
    negatives = sizes.double() - positives
    rank_sum = torch.zeros(count, dtype=torch.float64, device=s.device).index_add_(0, g, rank * y)
    result = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    result = torch.where((positives > 0) & (negatives > 0), result, torch.nan)
    return result[0] if pooled else result


def top_k_mask(scores: torch.Tensor, k: int, group: torch.Tensor | None = None) -> torch.Tensor:
    """A bool mask of the ``k`` highest scores of each group (all of a smaller group); ties are
    broken by position (the earlier element wins)."""
    k = check_int("k", k, minimum=1)
    check_tensor("scores", scores, ndim=1)
    check_finite("scores", scores)
    if group is None:
        group = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    check_tensor("group", group, ndim=1, integral=True)
    if group.shape != scores.shape:
        raise ValueError(f"group must have the shape of scores {tuple(scores.shape)}, got {tuple(group.shape)}")
    order = _sort_within_groups(scores.detach(), group, descending=True)
    g = group[order]
    count = int(group.max()) + 1 if len(group) else 1
    starts = torch.zeros(count, dtype=torch.long, device=scores.device)
    starts[1:] = torch.cumsum(torch.bincount(g, minlength=count), 0)[:-1]
    rank = torch.arange(len(order), device=scores.device) - starts[g]
    mask = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    mask[order[rank < k]] = True
    return mask


def precision_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int,
                   group: torch.Tensor | None = None) -> torch.Tensor:
    """Share of true elements among the ``k`` highest-scored (per group; ties broken by position).

    Args:
        scores: (M,) explanation mask values.
        labels: (M,) bool ground truth.
        k: how many top elements count (a smaller group counts all of its elements).
        group: optional (M,) group ids: one precision per group.

    Returns:
        a 0-d tensor, or (G,) per group.
    """
    pooled = group is None
    scores, labels, group = _scores_and_labels(scores, labels, group)
    top = top_k_mask(scores, k, group)
    count = int(group.max()) + 1 if len(group) else 1
    hits = torch.bincount(group, weights=(top & labels).double(), minlength=count)
    chosen = torch.bincount(group, weights=top.double(), minlength=count)
    result = hits / chosen
    return result[0] if pooled else result


def fidelity(model: nn.Module, explanation, node_mask: torch.Tensor | None = None,
             edge_mask: torch.Tensor | None = None) -> tuple[float, float]:
    """Fidelity of explanations (GraphFramEx; PyG's ``fidelity`` for model explanations).

    With :math:`\\hat y_k` the model's prediction on explained node or graph k,
    :math:`\\mathrm{fid}_+ = 1 - \\frac{1}{K}\\sum_k 1[\\hat y_k^{G \\setminus S} = \\hat y_k]`
    (the prediction changes when the explanation :math:`S` is removed: high is good) and
    :math:`\\mathrm{fid}_- = 1 - \\frac{1}{K}\\sum_k 1[\\hat y_k^{S} = \\hat y_k]` (it changes
    when only the explanation is kept: low is good). Keeping scales the features by the node
    mask and the messages by the edge mask; removing uses one minus the masks; without a node
    mask the features stay as they are. Pass hard masks (:func:`top_k_mask`) for the usual reading.

    Args:
        model: the explained model.
        explanation: a :class:`~xnn_lab.graphs.GraphExplanation` (its parts are re-run).
        node_mask: (N',) or (N', F) masks over its nodes, or None.
        edge_mask: (E',) masks over its edges (default: the explanation's ``edge_mask``).

    Returns:
        ``(fid_plus, fid_minus)`` as floats.
    """
    from torch_geometric.explain.algorithm.utils import clear_masks

    from xnn_lab.graphs.explain import _install_edge_mask

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not all(hasattr(explanation, name) for name in ("x", "edge_index", "node_group", "centre")):
        raise TypeError(f"explanation must be a GraphExplanation, got {type(explanation).__name__}")
    n, e = len(explanation.x), explanation.edge_index.shape[1]
    if edge_mask is None:
        edge_mask = explanation.edge_mask
    check_tensor("edge_mask", edge_mask, ndim=1)
    check_finite("edge_mask", edge_mask)
    if len(edge_mask) != e:
        raise ValueError(f"edge_mask must have one value per edge ({e}), got {len(edge_mask)}")
    if node_mask is not None:
        check_tensor("node_mask", node_mask, ndim=(1, 2))
        check_finite("node_mask", node_mask)
        if len(node_mask) != n:
            raise ValueError(f"node_mask must have one row per node ({n}), got {len(node_mask)}")
        if node_mask.ndim == 1:
            node_mask = node_mask[:, None]
    device = model_device(model)
    x, edge_index = explanation.x.to(device), explanation.edge_index.to(device)
    edge_mask = edge_mask.to(device).float()

    def predict(nodes, edges):
        _install_edge_mask(model, edges, edge_index, apply_sigmoid=False)
        try:
            features = x if nodes is None else x * nodes.to(device)
            if explanation.centre is not None:
                return model(features, edge_index)[explanation.centre.to(device)].argmax(1)
            return model(features, edge_index, explanation.node_group.to(device)).argmax(1)
        finally:
            clear_masks(model)

    with model_state(model, requires_grad=False), torch.no_grad():
        predicted = predict(None, torch.ones_like(edge_mask))
        kept = predict(node_mask, edge_mask)
        removed = predict(None if node_mask is None else 1 - node_mask, 1 - edge_mask)
    fid_plus = 1 - (removed == predicted).float().mean().item()
    fid_minus = 1 - (kept == predicted).float().mean().item()
    return fid_plus, fid_minus


def symmetrize(edge_mask: torch.Tensor, edge_index: torch.Tensor,
               active: torch.Tensor | None = None) -> torch.Tensor:
    """Give both directions of every edge the mean of their two mask values.

    GNNExplainer's paper masks a symmetric adjacency matrix, one value per undirected edge; PyG
    (and every batched explainer here) learns one value per direction. Scoring the mean of the
    two scores each undirected edge once, as the paper does. With ``active``, only the active
    directions are averaged (an edge whose reverse lies outside the computation graph keeps its
    own value), so that a random mask stays at chance; an edge stored in one direction only, or
    an inactive one, keeps its value.

    Args:
        edge_mask: (E,) values.
        edge_index: (2, E) the edges they belong to (an explanation's ``edge_index``).
        active: optional (E,) bool, the directions that count (an explanation's ``active``).

    Returns:
        (E,) the symmetrised mask.
    """
    check_tensor("edge_mask", edge_mask, ndim=1)
    check_finite("edge_mask", edge_mask)
    check_tensor("edge_index", edge_index, ndim=2, integral=True)
    if edge_index.shape != (2, len(edge_mask)):
        raise ValueError(f"edge_index must be (2, {len(edge_mask)}) for the mask, got {tuple(edge_index.shape)}")
    if active is None:
        active = torch.ones(len(edge_mask), dtype=torch.bool, device=edge_mask.device)
    check_tensor("active", active, ndim=1)
    if active.dtype != torch.bool or len(active) != len(edge_mask):
        raise ValueError(f"active must be a bool tensor of shape ({len(edge_mask)},), got {active.dtype} "
                         f"{tuple(active.shape)}")
    if not len(edge_mask):
        return edge_mask.clone()
    nodes = int(edge_index.max()) + 1
    low, high = edge_index.min(0).values, edge_index.max(0).values
    _, pair = torch.unique(low * nodes + high, return_inverse=True)
    weight = active.to(edge_mask.dtype)
    sums = torch.zeros(int(pair.max()) + 1, dtype=edge_mask.dtype, device=edge_mask.device)
    counts = torch.zeros_like(sums).index_add_(0, pair, weight)
    sums.index_add_(0, pair, edge_mask * weight)
    return torch.where(active, sums[pair] / counts[pair].clamp(min=1), edge_mask)
