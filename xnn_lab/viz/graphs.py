"""Figures of chapter 9: a graph explanation drawn as its part of the graph.

Every function draws with matplotlib (any backend, Agg included), takes tensors on any device,
and returns the figure or axes it drew on; none calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xnn_lab._core.checks import check_int, check_tensor


def plot_graph(edge_index: torch.Tensor, num_nodes: int, *, edge_values: torch.Tensor | None = None,
               node_colors: Sequence | None = None, highlight_edges: torch.Tensor | None = None,
               ax: Axes | None = None, title: str | None = None, seed: int = 0,
               cmap: str = "viridis") -> Axes:
    """Draw a graph with a spring layout, edges coloured by ``edge_values``.

    Args:
        edge_index: (2, E) edges (both directions of an undirected edge are drawn once, with the
            larger of their two values).
        num_nodes: N.
        edge_values: (E,) values for the edge colours (darker: lower), or None.
        node_colors: N matplotlib colours, or None (grey).
        highlight_edges: (E,) bool: edges drawn dashed and red underneath (e.g. the ground truth).
        ax: where to draw; a new figure when None.
        title: the axes' title.
        seed: seeds the layout.
        cmap: the colormap of the edge values.
    """
    import networkx as nx

    check_tensor("edge_index", edge_index, ndim=2, integral=True)
    num_nodes = check_int("num_nodes", num_nodes, minimum=1)
    edges = edge_index.detach().cpu()
    values = None if edge_values is None else check_tensor("edge_values", edge_values, ndim=1).detach().float().cpu()
    if values is not None and len(values) != edges.shape[1]:
        raise ValueError(f"edge_values must have one value per edge ({edges.shape[1]}), got {len(values)}")
    if node_colors is not None and len(node_colors) != num_nodes:
        raise ValueError(f"node_colors must give one colour per node ({num_nodes}), got {len(node_colors)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    graph = nx.Graph()
    graph.add_nodes_from(range(num_nodes))
    best: dict[tuple[int, int], float] = {}
    truth: set[tuple[int, int]] = set()
    for e, (u, v) in enumerate(edges.t().tolist()):
        key = (min(u, v), max(u, v))
        value = 1.0 if values is None else float(values[e])
        best[key] = max(best.get(key, -np.inf), value)
        if highlight_edges is not None and bool(highlight_edges[e]):
            truth.add(key)
    graph.add_edges_from(best)
    position = nx.spring_layout(graph, seed=seed)
    if truth:
        nx.draw_networkx_edges(graph, position, edgelist=sorted(truth), ax=ax, width=5, edge_color="tab:red",
                               alpha=0.35)
    keys = list(best)
    shown = np.array([best[k] for k in keys])
    nx.draw_networkx_edges(graph, position, edgelist=keys, ax=ax, width=2,
                           edge_color=shown if values is not None else "black",
                           edge_cmap=plt.get_cmap(cmap), edge_vmin=float(shown.min()) if len(shown) else 0,
                           edge_vmax=float(shown.max()) if len(shown) else 1)
    nx.draw_networkx_nodes(graph, position, ax=ax, node_size=60,
                           node_color=list(node_colors) if node_colors is not None else "lightgrey",
                           edgecolors="black", linewidths=0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_explanations(explanation, parts: Sequence[int], *, truth: torch.Tensor | None = None,
                      node_colors: Sequence | None = None, titles: Sequence[str] | None = None,
                      active_only: bool = True, ncols: int = 4, size: float = 3.0) -> Figure:
    """Draw several parts of a :class:`~xnn_lab.graphs.GraphExplanation`, edges by their mask.

    Args:
        explanation: the explanation.
        parts: which parts (explained nodes or graphs) to draw.
        truth: (E',) bool ground truth over the explanation's edges, drawn underneath in red.
        node_colors: N' colours over the explanation's nodes, or None (grey, the explained node
            of a node task in red).
        titles: one per part.
        active_only: draw only the active edges (the computation graph) and their nodes.
        ncols, size: grid columns and the side of each panel in inches.
    """
    parts = [check_int("parts", int(p), minimum=0) for p in parts]
    if not parts:
        raise ValueError("parts must name at least one part")
    if titles is not None and len(titles) != len(parts):
        raise ValueError(f"titles must give one title per part ({len(parts)}), got {len(titles)}")
    ncols = min(check_int("ncols", ncols, minimum=1), len(parts))
    nrows = -(-len(parts) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for ax in axes.flat[len(parts):]:
        fig.delaxes(ax)
    edge_group = explanation.edge_group.cpu()
    node_group = explanation.node_group.cpu()
    for i, (part, ax) in enumerate(zip(parts, axes.flat)):
        chosen = edge_group == part
        if active_only:
            chosen &= explanation.active.cpu()
        edge_index = explanation.edge_index.cpu()[:, chosen]
        nodes = (node_group == part).nonzero()[:, 0]
        keep = torch.unique(torch.cat([edge_index.flatten(), nodes[:0]])) if active_only else nodes
        if active_only and explanation.centre is not None:
            keep = torch.unique(torch.cat([keep, explanation.centre.cpu()[part:part + 1]]))
        renumber = torch.full((len(node_group),), -1, dtype=torch.long)
        renumber[keep] = torch.arange(len(keep))
        if node_colors is not None:
            colors = [node_colors[int(n)] for n in keep]
        elif explanation.centre is not None:
            centre = int(explanation.centre[part])
            colors = ["tab:red" if int(n) == centre else "lightgrey" for n in keep]
        else:
            colors = None
        plot_graph(renumber[edge_index], len(keep), edge_values=explanation.edge_mask.cpu()[chosen],
                   node_colors=colors, highlight_edges=None if truth is None else truth.cpu()[chosen],
                   ax=ax, title=None if titles is None else titles[i])
    fig.tight_layout()
    return fig
