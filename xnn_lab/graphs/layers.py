"""Message passing written out: one GCN layer with plain tensor operations.

For a graph with adjacency :math:`A` and self-loops added, :math:`\\hat A = A + I` and
:math:`\\hat d_i = \\sum_j \\hat A_{ij}`, one GCN layer (Kipf and Welling, 2017) is

.. math:: h_i' = \\sum_{j \\in N(i) \\cup \\{i\\}} \\frac{1}{\\sqrt{\\hat d_i \\hat d_j}} W h_j + b,

that is: transform every node (*message* :math:`W h_j` scaled by the edge's normalisation),
sum the messages arriving at each node (*aggregate*), add the bias (*update*). PyTorch
Geometric's ``GCNConv`` computes the same; the tests check it.
"""

from __future__ import annotations

import torch

from xnn_lab._core.checks import check_tensor


def gcn_layer(x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """One GCN layer by hand: messages along edges, summed at their targets.

    Args:
        x: (N, F) node features.
        edge_index: (2, E) edges source -> target, without self-loops (they are added here).
        weight: (F', F), as ``nn.Linear`` stores it (``GCNConv.lin.weight``).
        bias: (F',) or None.

    Returns:
        (N, F') the new node states.
    """
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("edge_index", edge_index, ndim=2, integral=True)
    check_tensor("weight", weight, ndim=2, floating=True)
    if edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be (F', {x.shape[1]}) for x with {x.shape[1]} features, "
                         f"got {tuple(weight.shape)}")
    n = len(x)
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise ValueError(f"edge_index must hold node indices in [0, {n}), got "
                         f"[{int(edge_index.min())}, {int(edge_index.max())}]")
    loops = torch.arange(n, device=x.device)
    source = torch.cat([edge_index[0], loops])
    target = torch.cat([edge_index[1], loops])
    degree = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
        0, target, torch.ones_like(target, dtype=x.dtype))
    norm = degree[source].rsqrt() * degree[target].rsqrt()
    messages = (x @ weight.T)[source] * norm[:, None]
    out = torch.zeros(n, weight.shape[0], dtype=x.dtype, device=x.device).index_add_(0, target, messages)
    return out if bias is None else out + bias
