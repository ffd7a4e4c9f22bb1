"""Figures of a ReLU network's decision tree (chapter 4): the tree itself, and its regions.

``plot_tree`` draws the tree left to right, root first and one row per leaf, so that every line of
text runs along the page; its text is sized to the axes, and ``max_depth`` folds deeper subtrees
into one box each, so that a tree stays readable at the book's page width. ``plot_regions``
colours the plane by leaf; ``plot_tree`` gives each leaf's box the same colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextPath

from xnn_lab._core.checks import check_float, check_int

if TYPE_CHECKING:  # imported when drawn: ``xnn_lab.viz`` need not load scipy's LP solver
    from xnn_lab.trees import DecisionTree

# The book's page is about 9 inches wide in HTML: a new figure is no wider, so that it is shown at
# its own size and its text at the size chosen here.
_PAGE_WIDTH = 9.0
# Text sizes in points: a new figure's default, the largest chosen to fill a given axes, and the
# smallest drawn at all (below that, fold the tree with max_depth instead).
_FONTSIZE, _MAX_FONTSIZE, _MIN_FONTSIZE = 9.0, 10.0, 5.0
# Layout in em (multiples of the font size): box padding, the gap between columns (room for the
# elbow lines and the yes/no label over each branch's last segment), the space between rows, and
# the line height.
_PAD, _GAP, _ROW_SPACE, _LINE = 0.3, 3.4, 0.8, 1.2
# Agg's hinting draws small text up to ~10% wider than the fonts' outlines measure.
_HINTING = 1.1
# A node's test is wrapped at term boundaries to lines of about this many characters.
_NODE_WRAP = 24
# Regions' fill opacity, shared by both figures so that a leaf's box matches its region.
_ALPHA = 0.55


def _check_tree(tree) -> DecisionTree:
    from xnn_lab.trees import DecisionTree

    if not isinstance(tree, DecisionTree):
        raise TypeError(f"tree must be a DecisionTree, got {type(tree).__name__}")
    return tree


def _leaf_colours(leaves: np.ndarray, cmap: str) -> tuple[np.ndarray, object]:
    """Each leaf's colour index in ``cmap``, and the colormap.

    Consecutive leaves are often neighbours: 7 is coprime with tab20's 20 colours, whose neighbours
    come in similar pairs, so stepping by 7 spreads them apart.
    """
    colours = plt.get_cmap(cmap)
    return (leaves * 7) % colours.N, colours


def _wrap(expression: str, width: int) -> str:
    """Break ``"a x0 - b x1 + c > 0 ?"`` into lines of about ``width`` characters, between terms."""
    words = expression.split(" ")
    # A term is a sign and what follows it ("- 0.41 x1"); a name may hold spaces of its own.
    terms, current = [], []
    for word in words:
        if word in ("+", "-") and current:
            terms.append(" ".join(current))
            current = []
        current.append(word)
    terms.append(" ".join(current))
    lines = [terms[0]]
    for term in terms[1:]:
        if len(lines[-1]) + 1 + len(term) > width:
            lines.append(term)
        else:
            lines[-1] += " " + term
    return "\n".join(lines)


def _text_size(text: str, prop: FontProperties) -> tuple[float, int]:
    """Width of the widest line of ``text`` in em (at 1 pt), and its number of lines."""
    lines = text.split("\n")
    widths = [TextPath((0, 0), line, size=1, prop=prop).get_extents().width if line.strip() else 0.0
              for line in lines]
    return _HINTING * max(widths), len(lines)


def plot_tree(tree: DecisionTree, ax: Axes | None = None, feature_names=None, precision: int = 2,
              max_terms: int | None = 3, max_depth: int | None = None, max_leaves: int = 32,
              fontsize: float | None = None, cmap: str | None = "tab20") -> Axes:
    """Draw a tree left to right: each node with its test, each leaf with its pattern and model.

    The root is on the left; every leaf has a row of its own on the right, with its activation
    pattern and its affine model (one line per output). A node's test reads
    :math:`\\hat w \\cdot x + \\hat b > 0` ?; its upper branch is "no", its lower one "yes".

    Args:
        tree: a :class:`~xnn_lab.trees.DecisionTree`.
        ax: the axes to draw on; by default a new figure sized to the tree at ``fontsize`` (at most
            the book's page width, 9 inches, the text shrunk to fit).
        feature_names: F names for the inputs; ``x0``, ``x1``, ... by default.
        precision: significant digits of each number.
        max_terms: show only this many terms per expression, the largest weights first.
        max_depth: draw the splits down to this depth; each deeper subtree becomes one box that
            counts its leaves. ``None``: the whole tree.
        max_leaves: refuse to draw more rows (leaves and folded subtrees) than this; use
            ``max_depth``, :meth:`~xnn_lab.trees.DecisionTree.to_text` or :func:`plot_regions`.
        fontsize: text size in points; by default 9 in a new figure, and the largest (up to 10)
            that fits a given ``ax``.
        cmap: colour each leaf's box as :func:`plot_regions` colours its region (the same
            colormap); ``None``: every leaf box light green.

    Returns:
        the axes.

    Raises:
        ValueError: the tree (cut at ``max_depth``) has more than ``max_leaves`` rows.
    """
    _check_tree(tree)
    check_int("max_leaves", max_leaves, minimum=1)
    if max_depth is not None:
        check_int("max_depth", max_depth, minimum=0)
    if fontsize is not None:
        fontsize = check_float("fontsize", fontsize, minimum=0.0, open_min=True)

    # The drawn tree, depth first, "no" side first: nodes, leaves and folded subtrees (rows).
    nodes: dict[int, tuple[int, int, int]] = {}  # node -> (depth, child below, child above)
    rows: list[tuple[int, int]] = []  # (ref, leaves under it); a folded node keeps its ref >= 0
    stack = [(tree.root, 0)]
    while stack:
        ref, depth = stack.pop()
        if ref >= 0 and (max_depth is None or depth < max_depth):
            below, above = tree.node_children[ref].tolist()
            nodes[ref] = (depth, below, above)
            stack += [(above, depth + 1), (below, depth + 1)]
        else:
            rows.append((ref, tree.count_leaves(ref)))
        if len(rows) > max_leaves:
            cut = "" if max_depth is None else f" at max_depth={max_depth}"
            raise ValueError(f"plot_tree draws at most max_leaves={max_leaves} rows, got a tree with "
                             f"{tree.n_leaves} leaves, more than that{cut}; pass max_depth=... to fold "
                             "the deeper subtrees, or use tree.to_text(max_depth=...) or plot_regions")

    texts = {}
    for ref, count in rows:
        if ref < 0:
            leaf = -1 - ref
            model = tree.leaf_text(leaf, feature_names, precision, max_terms).replace("; ", "\n")
            texts[ref] = f"leaf {leaf}  [{tree.pattern_text(leaf)}]\n{model}"
        else:
            texts[ref] = f"{count} leaves below"
    for ref in nodes:
        test = tree.node_text(ref, feature_names, precision, max_terms) + " > 0 ?"
        texts[ref] = _wrap(test, _NODE_WRAP)

    # Columns: one per node depth, then the rows' column; widths in em from the fonts' metrics.
    prop = FontProperties()
    n_columns = 1 + max((depth for depth, _, _ in nodes.values()), default=-1) + 1
    widths, row_lines, node_lines = np.zeros(n_columns), 1, 1
    for ref, text in texts.items():
        width, lines = _text_size(text, prop)
        column = nodes[ref][0] if ref in nodes else n_columns - 1
        widths[column] = max(widths[column], width + 2 * _PAD)
        if ref in nodes:
            node_lines = max(node_lines, lines)
        else:
            row_lines = max(row_lines, lines)
    # Two nodes of one column sit at least two rows apart (each spans a subtree of two rows or more).
    row_height = max(_LINE * row_lines, _LINE * node_lines / 2) + 2 * _PAD + _ROW_SPACE
    width_em = widths.sum() + _GAP * (n_columns - 1)
    height_em = row_height * len(rows)

    if ax is None:
        size = _FONTSIZE if fontsize is None else fontsize
        scale = min(1.0, _PAGE_WIDTH * 72 / (width_em * size))
        fontsize = size * scale
        _, ax = plt.subplots(figsize=(width_em * fontsize / 72 + 0.1, height_em * fontsize / 72 + 0.1))
        ax.set_position((0.0, 0.0, 1.0, 1.0))
    elif fontsize is None:
        box = ax.get_window_extent()
        room_w, room_h = (box.width / ax.figure.dpi * 72, box.height / ax.figure.dpi * 72)
        fontsize = float(np.clip(min(room_w / width_em, room_h / height_em), _MIN_FONTSIZE,
                                 _MAX_FONTSIZE))

    # Coordinates in em: x from the left, y downwards from the top row (plotted as -y).
    lefts = np.concatenate([[0.0], np.cumsum(widths[:-1] + _GAP)])
    y = {ref: (k + 0.5) * row_height for k, (ref, _) in enumerate(rows)}
    for ref in reversed(list(nodes)):  # children before parents: depth first order, reversed
        _, below, above = nodes[ref]
        y[ref] = (y[below] + y[above]) / 2
    # Where the text of each item is anchored: nodes centred in their column, rows left-aligned.
    x = {ref: lefts[nodes[ref][0]] + widths[nodes[ref][0]] / 2 if ref in nodes
         else lefts[-1] + _PAD for ref in texts}

    leaf_refs = np.array([-1 - ref for ref, _ in rows if ref < 0])
    face = {ref: "#eeeeee" for ref, _ in rows}
    face.update({ref: "#e8eef8" for ref in nodes})
    if cmap is None:
        face.update({-1 - leaf: "#e8f4e8" for leaf in leaf_refs})
    elif len(leaf_refs):
        index, colours = _leaf_colours(leaf_refs, cmap)
        for leaf, k in zip(leaf_refs, index):
            rgb = np.array(to_rgb(colours(k)))
            face[-1 - leaf] = tuple(_ALPHA * rgb + (1 - _ALPHA))  # as drawn over white

    line = {"color": "0.5", "linewidth": 0.8, "zorder": 1}
    for ref, (depth, below, above) in nodes.items():
        bus = lefts[depth] + widths[depth] + 0.3 * _GAP  # the rest: room for the labels
        for child, label in ((below, "no"), (above, "yes")):
            end = x[child] if child in nodes else lefts[-1]
            ax.plot([x[ref], bus, bus, end], [-y[ref], -y[ref], -y[child], -y[child]], **line)
            ax.text(bus + 0.15, -y[child] + 0.1, label, fontsize=0.85 * fontsize, ha="left",
                    va="bottom", color="0.3", zorder=2)
    box = {"boxstyle": f"round,pad={_PAD}", "linewidth": 0.8}
    for ref, text in texts.items():
        ax.text(x[ref], -y[ref], text, fontsize=fontsize, zorder=3, va="center",
                ha="center" if ref in nodes else "left", multialignment="left",
                bbox={**box, "facecolor": face[ref]})
    ax.set_xlim(-0.05 * _GAP, width_em + 0.05 * _GAP)
    ax.set_ylim(-height_em, 0)
    ax.set_axis_off()
    return ax


def plot_regions(tree: DecisionTree, ax: Axes | None = None, xlim=None, ylim=None,
                 resolution: int = 300, cmap: str = "tab20", labels: bool = False) -> Axes:
    """Colour the plane by the tree's regions (a 2-input network's linear regions), walls in black.

    Args:
        tree: a :class:`~xnn_lab.trees.DecisionTree` of a network with 2 inputs, built with a
            domain (or ``domain=None``) that covers the window.
        ax: the axes to draw on; a new figure when ``None``.
        xlim, ylim: the window ``(min, max)`` on each input; the tree's domain by default.
        resolution: grid points per axis.
        cmap: a qualitative colormap; regions cycle through its colours (as in :func:`plot_tree`).
        labels: write each leaf's number in its region (regions too small to hold it are skipped).

    Returns:
        the axes.
    """
    _check_tree(tree)
    if tree.n_inputs != 2:
        raise ValueError(f"plot_regions draws networks with 2 inputs, got tree.n_inputs = {tree.n_inputs}")
    check_int("resolution", resolution, minimum=2)
    limits = []
    for name, value, j in (("xlim", xlim, 0), ("ylim", ylim, 1)):
        if value is None:
            if tree.domain is None:
                raise ValueError(f"{name} is needed when the tree has no domain, got None")
            value = (float(tree.domain[0][j]), float(tree.domain[1][j]))
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not value[0] < value[1]:
            raise ValueError(f"{name} must be a (min, max) pair with min < max, got {value!r}")
        limits.append((float(value[0]), float(value[1])))
    xs = torch.linspace(*limits[0], resolution, dtype=torch.float64)
    ys = torch.linspace(*limits[1], resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    region = tree.leaf_index(grid).reshape(resolution, resolution).numpy()
    colour_index, colours = _leaf_colours(region, cmap)
    wall = np.zeros_like(region, dtype=bool)
    wall[:, 1:] |= region[:, 1:] != region[:, :-1]
    wall[1:, :] |= region[1:, :] != region[:-1, :]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    extent = (*limits[0], *limits[1])
    ax.imshow(colour_index, origin="lower", extent=extent, cmap=colours, vmin=0, vmax=colours.N - 1,
              interpolation="nearest", alpha=_ALPHA, aspect="auto")
    ax.imshow(np.ma.masked_where(~wall, wall), origin="lower", extent=extent, cmap="gray_r",
              vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    if labels:
        points = grid.numpy()
        flat = region.reshape(-1)
        for leaf in np.unique(flat):
            inside = flat == leaf
            # A region is convex, so the mean of its grid points lies in it; one of under 1% of
            # the window is too thin to hold a label without covering its neighbours.
            if inside.mean() >= 0.01:
                cx, cy = points[inside].mean(0)
                ax.text(cx, cy, str(int(leaf)), ha="center", va="center", fontsize=9,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8,
                              "linewidth": 0})
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    return ax
