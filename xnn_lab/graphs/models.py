"""The graph neural networks of chapter 9: a GCN for nodes and a GIN with a readout for graphs.

Both take ``forward(x, edge_index, batch=None)`` and return logits; neither uses edge
features, so an explainer's edge mask (PyG's ``set_masks``) reaches every message.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GCNConv, GINConv, global_add_pool, global_mean_pool

from xnn_lab._core.checks import check_choice, check_int


class GCN(nn.Module):
    """Node classifier: ``num_layers`` GCN layers (Kipf and Welling) and a linear head.

    As in GNNExplainer's BA-Shapes model (Ying et al., 2019), the head reads the concatenated
    outputs of all layers, :math:`[h^{(1)}, \\dots, h^{(L)}]`, with
    :math:`h^{(l)} = \\mathrm{ReLU}(\\hat D^{-1/2} \\hat A \\hat D^{-1/2} h^{(l-1)} W^{(l)})`.

    Args:
        in_channels: node features F.
        num_classes: C.
        hidden_channels: width of every layer.
        num_layers: L, the hops a node's prediction sees.
    """

    def __init__(self, in_channels: int, num_classes: int, *, hidden_channels: int = 20,
                 num_layers: int = 3):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, minimum=1)
        num_classes = check_int("num_classes", num_classes, minimum=2)
        hidden_channels = check_int("hidden_channels", hidden_channels, minimum=1)
        self.num_layers = check_int("num_layers", num_layers, minimum=1)
        widths = [in_channels] + [hidden_channels] * self.num_layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(hidden_channels * self.num_layers, num_classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch=None) -> torch.Tensor:
        """(N, F) features and (2, E) edges to (N, C) logits."""
        outputs = []
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index))
            outputs.append(x)
        return self.head(torch.cat(outputs, dim=-1))


class GIN(nn.Module):
    """Graph classifier: ``num_layers`` GIN layers (Xu et al.), a readout and an MLP head.

    Each layer is :math:`h_v' = \\mathrm{MLP}\\big((1 + \\epsilon) h_v + \\sum_{u \\in N(v)} h_u\\big)`;
    the readout sums (``"add"``) or averages (``"mean"``) every layer's node states over the graph
    and the head maps their concatenation to class scores.

    Args:
        in_channels: node features F.
        num_classes: C.
        hidden_channels: width of every layer.
        num_layers: message-passing layers.
        readout: ``"add"`` or ``"mean"``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, hidden_channels: int = 32,
                 num_layers: int = 3, readout: str = "add"):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, minimum=1)
        num_classes = check_int("num_classes", num_classes, minimum=2)
        hidden_channels = check_int("hidden_channels", hidden_channels, minimum=1)
        self.num_layers = check_int("num_layers", num_layers, minimum=1)
        self.readout = check_choice("readout", readout, ("add", "mean"))
        widths = [in_channels] + [hidden_channels] * self.num_layers
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b)), train_eps=True)
            for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Sequential(nn.Linear(hidden_channels * self.num_layers, hidden_channels),
                                  nn.ReLU(), nn.Linear(hidden_channels, num_classes))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        """(N, F) features, (2, E) edges and (N,) graph ids to (graphs, C) logits."""
        if batch is None:
            batch = torch.zeros(len(x), dtype=torch.long, device=x.device)
        pool = global_add_pool if self.readout == "add" else global_mean_pool
        pooled = []
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index))
            pooled.append(pool(x, batch))
        return self.head(torch.cat(pooled, dim=-1))

