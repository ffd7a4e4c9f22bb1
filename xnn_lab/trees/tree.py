"""A ReLU network as an exact decision tree (Aytekin, 2022): one oblique split per hidden unit, one
affine model per leaf, and the branches that no input can reach pruned by linear programs.

In the notation of chapter 4, layer :math:`l` computes :math:`z_l = W_l a_{l-1} + b_l` and
:math:`a_l = D_l z_l`, where the activation pattern :math:`D_l = \\operatorname{diag}(d_l)` has
:math:`d_{l,j} = 1` when :math:`z_{l,j} > 0` and the negative-side slope (0 for ReLU) otherwise.
Once the patterns of layers :math:`1 .. l-1` are fixed, :math:`z_l` is affine in the input,
:math:`z_l = \\hat W_l x + \\hat b_l` with :math:`\\hat W_l = W_l D_{l-1} \\hat W_{l-1}` and
:math:`\\hat b_l = W_l D_{l-1} \\hat b_{l-1} + b_l`: each hidden unit is a node testing
:math:`\\hat w_{l,j} \\cdot x + \\hat b_{l,j} > 0`, and each leaf (a full pattern) holds the
affine map :math:`\\hat W_L x + \\hat b_L` that the network computes in its region.

The figures of a tree, :func:`xnn_lab.viz.plot_tree` and :func:`xnn_lab.viz.plot_regions`, live
in :mod:`xnn_lab.viz`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn

from xnn_lab._core.checks import _describe, check_int, check_tensor

# A region is reachable when a ball of this radius (times the domain's scale) fits inside it:
# thinner regions are below what the LP solver can tell apart from empty ones.
_MIN_RADIUS = 1e-9
# HiGHS's default tolerances (1e-7) would blur walls closer than that: tighten them.
_LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
# Without a domain, a wall farther than this from the origin counts as out of reach: the LP could
# not place it (HiGHS reads numbers from 1e20 on as infinite), and no input of interest lies there.
_FAR = 1e9
# Pattern bits packed per int64 word, below 63 so that every packed word stays positive.
_BITS = 62
# Rows x outputs x inputs gathered at once by predict: bounds the memory of the batched matmul.
_GATHER_BUDGET = 2**22


@dataclass(frozen=True)
class _Hidden:
    """One hidden layer: an affine map followed by a (leaky) ReLU with the given negative slope."""

    weight: np.ndarray  # (width, in)
    bias: np.ndarray  # (width,)
    slope: float


def _parse(model) -> tuple[list[_Hidden], np.ndarray, np.ndarray]:
    """The hidden layers of ``model`` and its output affine map, in float64."""
    if not isinstance(model, nn.Sequential):
        raise TypeError("model must be an nn.Sequential of Linear and ReLU/LeakyReLU layers, "
                        f"got {type(model).__name__}")
    hidden: list[_Hidden] = []
    weight = bias = None  # the affine map since the last activation
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().to("cpu", torch.float64).numpy()
            b = (np.zeros(len(w)) if layer.bias is None
                 else layer.bias.detach().to("cpu", torch.float64).numpy())
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"model[{i}] has NaN or Inf weights: the network is broken (a diverged "
                                 "training run?), and so would be its tree")
            if weight is not None:  # consecutive Linear layers compose into one affine map
                if w.shape[1] != weight.shape[0]:
                    raise ValueError(f"model[{i}] is Linear with {w.shape[1]} inputs after a layer "
                                     f"with {weight.shape[0]} outputs")
                w, b = w @ weight, w @ bias + b
            elif hidden and w.shape[1] != len(hidden[-1].weight):
                raise ValueError(f"model[{i}] is Linear with {w.shape[1]} inputs after a layer "
                                 f"with {len(hidden[-1].weight)} outputs")
            weight, bias = w, b
        elif isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
            if weight is None:
                raise ValueError(f"model[{i}] is {type(layer).__name__} without a Linear layer before "
                                 "it; to_decision_tree expects Linear layers, each followed by at most "
                                 "one activation")
            slope = float(layer.negative_slope) if isinstance(layer, nn.LeakyReLU) else 0.0
            hidden.append(_Hidden(weight, bias, slope))
            weight = bias = None
        elif isinstance(layer, (nn.Identity, nn.Dropout)):  # identity maps in eval mode
            continue
        else:
            raise TypeError(f"model[{i}] is {type(layer).__name__}: to_decision_tree converts "
                            "piecewise-linear networks of Linear and ReLU/LeakyReLU layers only "
                            "(Identity and Dropout are skipped)")
    if not hidden and weight is None:
        raise ValueError("model must contain at least one Linear layer, got an empty network")
    if weight is None:  # the network ends with an activation: that activation is its output
        width = len(hidden[-1].weight)
        weight, bias = np.eye(width), np.zeros(width)
    return hidden, weight, bias


def _check_domain(domain, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """``domain`` as two float64 arrays (low, high) of shape (F,) with low < high."""
    if not isinstance(domain, (tuple, list)) or len(domain) != 2:
        raise TypeError(f"domain must be a (low, high) pair of numbers or of shape ({n_inputs},) "
                        f"tensors, got {_describe(domain)}")
    bounds = []
    for name, value in zip(("low", "high"), domain):
        try:
            array = torch.as_tensor(value, dtype=torch.float64).cpu().numpy()
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"domain's {name} must be a number or a tensor of shape ({n_inputs},), "
                            f"got {_describe(value)}") from error
        if array.ndim == 0:
            array = np.full(n_inputs, float(array))
        if array.shape != (n_inputs,):
            raise ValueError(f"domain's {name} must be a number or have shape ({n_inputs},) (one "
                             f"value per input of the model), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"domain's {name} must be finite, got {array}")
        bounds.append(array)
    low, high = bounds
    if not (low < high).all():
        j = int(np.argmax(low >= high))
        raise ValueError(f"domain must have low < high for every input, got low[{j}] = {low[j]} "
                         f">= high[{j}] = {high[j]}")
    return low, high


class _LPOracle:
    """Which sides of a split meet a region, by linear programs inside the optional domain box.

    A region is ``(G, h, centre, radius)``: ``{x : G x <= h}`` with unit-length rows of ``G``, and a
    ball known to lie inside it (inside the box too), which often answers without an LP.
    """

    def __init__(self, n_inputs: int, domain: tuple[np.ndarray, np.ndarray] | None):
        self.n_lps = 0
        self.domain = domain
        if domain is None:
            self.box_A, self.box_b = np.zeros((0, n_inputs + 1)), np.zeros(0)
            self.min_radius, self.cap = _MIN_RADIUS, 1.0  # any ball above min_radius counts alike
            self.root = (np.zeros((0, n_inputs)), np.zeros(0), np.zeros(n_inputs), 1.0)
        else:
            low, high = domain
            # x + t <= high and -x + t <= -low: the ball of radius t stays inside the box.
            eye, ones = np.eye(n_inputs), np.ones((n_inputs, 1))
            self.box_A = np.vstack([np.hstack([eye, ones]), np.hstack([-eye, ones])])
            self.box_b = np.concatenate([high, -low])
            self.min_radius = _MIN_RADIUS * max(1.0, np.abs(low).max(), np.abs(high).max())
            self.cap = None
            self.root = (np.zeros((0, n_inputs)), np.zeros(0), (low + high) / 2,
                         float((high - low).min() / 2))

    def _chebyshev(self, G: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
        """Centre and radius of the largest ball inside ``{G x <= h}`` and the box (radius < 0: empty)."""
        self.n_lps += 1
        n = G.shape[1]
        objective = np.zeros(n + 1)
        objective[-1] = -1.0  # maximise the radius t
        A = np.vstack([np.hstack([G, np.ones((len(G), 1))]), self.box_A])
        result = linprog(objective, A_ub=A, b_ub=np.concatenate([h, self.box_b]),
                         bounds=[(None, None)] * n + [(None, self.cap)], method="highs",
                         options=_LP_OPTIONS)
        if result.status != 0:  # t is free below, so the LP is always feasible and bounded
            raise RuntimeError(f"linprog failed on a region of the tree: {result.message}")
        return result.x[:n], float(result.x[-1])

    def split(self, region, unit: int, w: np.ndarray, b: float):
        """The parts of ``region`` where ``w . x + b <= 0`` and ``> 0``, each ``None`` when unreachable."""
        norm = float(np.linalg.norm(w))
        if self.domain is not None:
            # The range of w . x + b over the box: if the wall misses the box, the unit's sign is
            # the same everywhere in it (also when w = 0), and there is no test and no LP.
            low, high = self.domain
            if b + np.minimum(w * low, w * high).sum() > 0:
                return None, region
            if b + np.maximum(w * low, w * high).sum() <= 0:
                return region, None
        elif norm == 0.0 or abs(b) > _FAR * norm:  # constant, or a wall out of reach
            return (None, region) if b > 0 else (region, None)
        w, b = w / norm, b / norm
        G, h, centre, radius = region
        distance = float(w @ centre + b)  # signed distance of the known ball's centre to the wall
        sides = []
        for positive in (False, True):
            # <= 0: w.x + t <= -b; > 0: -w.x + t <= b (t: radius of a ball on that side)
            G_side, h_side = np.vstack([G, -w if positive else w]), np.append(h, b if positive else -b)
            inner = min(radius, distance if positive else -distance)
            if inner > self.min_radius:
                sides.append((G_side, h_side, centre, inner))
                continue
            ball_centre, ball_radius = self._chebyshev(G_side, h_side)
            sides.append((G_side, h_side, ball_centre, ball_radius))
        keep = [side if side[3] > self.min_radius else None for side in sides]
        if keep[0] is None and keep[1] is None:  # a region of about min_radius cut in two: keep the larger
            larger = int(sides[1][3] > sides[0][3])
            keep[larger] = sides[larger]
        return keep[0], keep[1]


class _DataOracle:
    """Which sides of a split the data rows visit; a region is the tensor of its rows' indices."""

    n_lps = 0

    def __init__(self, patterns: torch.Tensor):
        self.patterns = patterns
        self.root = torch.arange(len(patterns))

    def split(self, rows: torch.Tensor, unit: int, w: np.ndarray, b: float):
        on = self.patterns[rows, unit]
        return (rows[~on] if not on.all() else None), (rows[on] if on.any() else None)


def _grow(hidden: list[_Hidden], out_weight: np.ndarray, out_bias: np.ndarray, oracle,
          max_leaves: int) -> dict:
    """Grow the tree depth first, deciding the hidden units in order and skipping unreachable sides.

    A unit whose test has only one reachable side is no node (the test is redundant there), so the
    tree's nodes are exactly the splits with two reachable sides.
    """
    sizes = [len(layer.weight) for layer in hidden]
    n_units = sum(sizes)
    unit_layer = np.repeat(np.arange(len(sizes)), sizes)
    unit_index = np.concatenate([np.arange(s) for s in sizes]) if sizes else np.zeros(0, int)
    nodes = {"weight": [], "bias": [], "layer": [], "unit": [], "children": [], "parent": []}
    leaves = {"pattern": [], "weight": [], "bias": [], "parent": []}
    root = []

    def advance(bits: list[bool], zw: np.ndarray, zb: np.ndarray):
        """The effective map of the next unit's layer (the output's after the last unit)."""
        k = len(bits)
        if k < n_units and unit_index[k] != 0:
            return zw, zb
        layer = hidden[unit_layer[k - 1]]
        scale = np.where(bits[-len(layer.weight):], 1.0, layer.slope)
        W, b = ((hidden[unit_layer[k]].weight, hidden[unit_layer[k]].bias) if k < n_units
                else (out_weight, out_bias))
        return W @ (scale[:, None] * zw), W @ (scale * zb) + b

    def attach(parent: int, side: int, ref: int) -> None:
        if parent < 0:
            root.append(ref)
        else:
            nodes["children"][parent][side] = ref

    first = (hidden[0].weight, hidden[0].bias) if hidden else (out_weight, out_bias)
    stack = [(-1, 0, [], *first, oracle.root)]  # (parent node, side, pattern so far, map, region)
    while stack:
        parent, side, bits, zw, zb, region = stack.pop()
        while len(bits) < n_units:
            k = len(bits)
            j = unit_index[k]
            below, above = oracle.split(region, k, zw[j], float(zb[j]))
            if below is not None and above is not None:
                node = len(nodes["weight"])
                for key, value in (("weight", zw[j]), ("bias", float(zb[j])), ("layer", unit_layer[k]),
                                   ("unit", j), ("children", [-1, -1]), ("parent", (parent, side))):
                    nodes[key].append(value)
                attach(parent, side, node)
                # Push "> 0" first so that "<= 0" is grown first: leaves number left to right.
                for positive, part in ((True, above), (False, below)):
                    stack.append((node, int(positive), bits + [positive],
                                  *advance(bits + [positive], zw, zb), part))
                break
            bits = bits + [above is not None]
            zw, zb = advance(bits, zw, zb)
            region = above if above is not None else below
        else:
            leaf = len(leaves["pattern"])
            if leaf >= max_leaves:
                raise ValueError(
                    f"the tree has more than max_leaves={max_leaves} leaves (found after "
                    f"{oracle.n_lps} linear programs; a network with {n_units} hidden units can have "
                    f"up to 2**{n_units}); raise max_leaves to convert it anyway, or pass data=... "
                    "to keep only the regions the data visit")
            for key, value in (("pattern", bits), ("weight", zw), ("bias", zb), ("parent", (parent, side))):
                leaves[key].append(value)
            attach(parent, side, -1 - leaf)
    return {"nodes": nodes, "leaves": leaves, "root": root[0], "sizes": sizes}


def _format_affine(weight, bias: float, names, precision: int, max_terms: int | None) -> str:
    """``weight . x + bias`` as text, e.g. ``"0.53 x0 - 1.2 x1 + 0.3"``; zero weights left out."""
    weight = np.asarray(weight, dtype=float)
    order = np.flatnonzero(weight)
    more = 0
    if max_terms is not None and len(order) > max_terms:
        more = len(order) - max_terms
        order = order[np.argsort(-np.abs(weight[order]), kind="stable")[:max_terms]]
    terms = [(weight[j] < 0, f"{abs(weight[j]):.{precision}g} {names[j]}") for j in order]
    if more:
        terms.append((False, f"... ({more} smaller terms)"))
    if bias != 0 or not terms:
        terms.append((bias < 0, f"{abs(bias):.{precision}g}"))
    negative, first = terms[0]
    return ("-" if negative else "") + first + "".join(
        f" {'-' if negative else '+'} {text}" for negative, text in terms[1:])


def _names(feature_names, n_inputs: int) -> list[str]:
    if feature_names is None:
        return [f"x{j}" for j in range(n_inputs)]
    if isinstance(feature_names, str) or len(feature_names) != n_inputs:
        raise ValueError(f"feature_names must give one name per input ({n_inputs}), "
                         f"got {_describe(feature_names)}")
    return [str(name) for name in feature_names]


@dataclass(frozen=True)
class Rule:
    """One condition on the path to a leaf: ``weight . x + bias > 0`` if ``positive``, else ``<= 0``.

    Attributes:
        weight: the unit's effective weights :math:`\\hat w_{l,j}`, shape (F,), float64: the
            patterns of the earlier layers are folded in.
        bias: the effective bias :math:`\\hat b_{l,j}`.
        positive: the side of the split the path takes (the unit is active).
        layer: the hidden layer of the unit, from 0.
        unit: the unit's index in its layer, from 0.
    """

    weight: torch.Tensor
    bias: float
    positive: bool
    layer: int
    unit: int

    def holds(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each row of ``x``, shape (N, F), satisfies the rule; returns (N,) bool."""
        check_tensor("x", x, ndim=2, floating=True)
        value = x.to(torch.float64) @ self.weight.to(x.device) + self.bias
        return value > 0 if self.positive else value <= 0

    def format(self, feature_names=None, precision: int = 3, max_terms: int | None = None) -> str:
        """The rule as text, e.g. ``"0.53 x0 - 1.2 x1 + 0.3 > 0"``.

        Args:
            feature_names: F names for the inputs; ``x0``, ``x1``, ... by default.
            precision: significant digits of each number.
            max_terms: show only this many terms, the largest weights first.

        Returns:
            the text.
        """
        names = _names(feature_names, len(self.weight))
        affine = _format_affine(self.weight.numpy(), self.bias, names, precision, max_terms)
        return f"{affine} {'>' if self.positive else '<='} 0"

    def __str__(self) -> str:
        return self.format()


class DecisionTree:
    """A piecewise-linear network as a tree: oblique splits at the nodes, affine maps at the leaves.

    Built by :func:`to_decision_tree`. Nodes are numbered in depth-first order, leaves from left
    (every test false) to right; a child reference ``r >= 0`` is node ``r`` and ``r < 0`` is leaf
    ``-1 - r``.

    Attributes:
        n_inputs: F, the network's input width.
        n_outputs: O, its output width.
        layer_sizes: the widths of the hidden layers.
        n_units: U, the number of hidden units (the depth of the unpruned tree).
        n_leaves: L, the reachable regions kept as leaves.
        n_leaves_unpruned: ``2**U``, the leaves of the full tree before pruning.
        n_nodes: the splits (internal nodes); ``n_leaves - 1`` of them.
        depth: the most splits on a path from the root to a leaf.
        n_lps: linear programs solved while pruning (0 for a tree built from data).
        domain: the box ``(low, high)`` of float64 tensors (F,) the tree is exact on, or ``None``.
        method: ``"domain"`` (regions pruned by LPs) or ``"data"`` (regions visited by data).
        leaf_pattern: the activation pattern of each leaf, shape (L, U), bool.
        leaf_weight: the affine map of each leaf, :math:`\\hat W_L`, shape (L, O, F), float64.
        leaf_bias: its offset :math:`\\hat b_L`, shape (L, O), float64.
        node_weight: the effective weights tested at each node, shape (N, F), float64.
        node_bias: the effective biases, shape (N,), float64.
        node_layer: the hidden layer of each node's unit, shape (N,).
        node_unit: the unit's index in its layer, shape (N,).
        node_children: child references (``<= 0`` side, ``> 0`` side), shape (N, 2).
        root: the reference of the root (``-1``, leaf 0, when the tree has no split).
    """

    def __init__(self, hidden: list[_Hidden], grown: dict, n_lps: int,
                 domain: tuple[np.ndarray, np.ndarray] | None, method: str):
        nodes, leaves = grown["nodes"], grown["leaves"]
        self._hidden = [(torch.from_numpy(h.weight), torch.from_numpy(h.bias), h.slope) for h in hidden]
        self.layer_sizes = tuple(grown["sizes"])
        self.n_units = sum(self.layer_sizes)
        self.n_leaves = len(leaves["pattern"])
        self.n_leaves_unpruned = 2**self.n_units
        self.n_nodes = len(nodes["weight"])
        self.n_lps = n_lps
        self.method = method
        self.domain = None if domain is None else tuple(torch.from_numpy(b) for b in domain)
        self.leaf_pattern = torch.tensor(leaves["pattern"], dtype=torch.bool).reshape(self.n_leaves,
                                                                                       self.n_units)
        self.leaf_weight = torch.from_numpy(np.stack(leaves["weight"]))
        self.leaf_bias = torch.from_numpy(np.stack(leaves["bias"]))
        self.n_outputs, self.n_inputs = self.leaf_weight.shape[1:]
        self.node_weight = torch.from_numpy(np.array(nodes["weight"]).reshape(self.n_nodes, self.n_inputs))
        self.node_bias = torch.tensor(nodes["bias"], dtype=torch.float64)
        self.node_layer = torch.tensor(nodes["layer"], dtype=torch.long)
        self.node_unit = torch.tensor(nodes["unit"], dtype=torch.long)
        self.node_children = torch.tensor(nodes["children"], dtype=torch.long).reshape(self.n_nodes, 2)
        self.root = grown["root"]
        self._node_parent = nodes["parent"]
        self._leaf_parent = leaves["parent"]
        self._leaf_of = {key: leaf for leaf, key in enumerate(map(tuple, _pack(self.leaf_pattern).tolist()))}
        self.depth = max((len(self._path(leaf)) for leaf in range(self.n_leaves)), default=0)

    def __repr__(self) -> str:
        return (f"DecisionTree(inputs={self.n_inputs}, hidden={self.layer_sizes}, "
                f"leaves={self.n_leaves} of 2**{self.n_units}, depth={self.depth}, "
                f"method={self.method!r}, lps={self.n_lps})")

    def _check_x(self, x) -> torch.Tensor:
        check_tensor("x", x, ndim=(1, 2), floating=True)
        if x.shape[-1] != self.n_inputs:
            raise ValueError(f"x must have {self.n_inputs} features in its last dimension (the "
                             f"network's inputs), got {_describe(x)}")
        return x

    def activation_pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Which hidden units are active (pre-activation > 0) for each row, computed in float64.

        Args:
            x: inputs, shape (N, F) or (F,) (one row).

        Returns:
            the patterns, shape (N, U), bool, layer after layer.
        """
        return _patterns(self._hidden, self._check_x(x).to(torch.float64).reshape(-1, self.n_inputs))

    def leaf_index(self, x: torch.Tensor) -> torch.Tensor:
        """The leaf (region) of each row of ``x``.

        A row's activation pattern names its leaf. A row inside the domain whose pattern names no
        leaf lies on a region's wall, or in a region thinner than the LPs resolve; it goes down the
        tree's splits instead, to a region whose closure holds it (where, by continuity, that
        leaf's map equals the network).

        Args:
            x: inputs, shape (N, F) or (F,).

        Returns:
            leaf indices, shape (N,) (or a 0-dim tensor for one input), long, on ``x``'s device.

        Raises:
            ValueError: for a row in a region the tree does not hold: one the data did not visit
                (``method="data"``), or one outside the domain that the LPs pruned.
        """
        x64 = self._check_x(x).to(torch.float64).reshape(-1, self.n_inputs)
        keys, inverse = torch.unique(_pack(self.activation_pattern(x64)), dim=0, return_inverse=True)
        found = torch.tensor([self._leaf_of.get(tuple(key), -1) for key in keys.tolist()],
                             dtype=torch.long, device=x64.device)
        leaf = found[inverse]
        missing = leaf < 0
        if missing.any():
            if self.method == "data":
                row = int(missing.nonzero()[0])
                raise ValueError(f"x[{row}] ({int(missing.sum())} of {len(x64)} rows) falls in a region "
                                 "that the data given to to_decision_tree did not visit; convert with "
                                 "domain=... (or domain=None) to cover every region")
            if self.domain is not None:
                low, high = (bound.to(x64.device) for bound in self.domain)
                outside = missing & ((x64 < low) | (x64 > high)).any(1)
                if outside.any():
                    row = int(outside.nonzero()[0])
                    raise ValueError(f"x[{row}] ({int(outside.sum())} of {len(x64)} rows) lies outside "
                                     "the tree's domain, in a region that does not meet the domain and "
                                     "was pruned; convert with a domain that contains it, or domain=None")
            leaf[missing] = self._descend(x64[missing])
        return leaf.reshape(x.shape[:-1])

    def _descend(self, x: torch.Tensor) -> torch.Tensor:
        """Leaves reached by following the splits, all rows one level at a time."""
        ref = torch.full((len(x),), self.root, dtype=torch.long, device=x.device)
        weight, bias, children = (t.to(x.device) for t in (self.node_weight, self.node_bias,
                                                           self.node_children))
        inner = ref >= 0
        while inner.any():
            node = ref[inner]
            positive = (x[inner] * weight[node]).sum(1) + bias[node] > 0
            ref[inner] = children[node, positive.long()]
            inner = ref >= 0
        return -1 - ref

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs, computed by the tree: each row's leaf, then that leaf's affine map.

        Exact (up to float64 rounding) for every row inside the domain, and for any row whose
        region is a leaf, inside the domain or not.

        Args:
            x: inputs, shape (N, F) or (F,).

        Returns:
            outputs, shape (N, O) (or (O,)), in ``x``'s dtype, on its device.
        """
        leaf = self.leaf_index(x).reshape(-1)
        x64 = x.to(torch.float64).reshape(-1, self.n_inputs)
        weight, bias = self.leaf_weight.to(x.device), self.leaf_bias.to(x.device)
        chunk = max(1, _GATHER_BUDGET // (self.n_outputs * self.n_inputs))
        out = torch.cat([torch.einsum("noi,ni->no", weight[leaf[i:i + chunk]], x64[i:i + chunk])
                         + bias[leaf[i:i + chunk]] for i in range(0, len(x64), chunk)])
        return out.reshape(*x.shape[:-1], self.n_outputs).to(x.dtype)

    def _path(self, leaf: int) -> list[tuple[int, int]]:
        """The (node, side) pairs from the root down to ``leaf``."""
        path = []
        parent, side = self._leaf_parent[leaf]
        while parent >= 0:
            path.append((parent, side))
            parent, side = self._node_parent[parent]
        return path[::-1]

    def rules(self, leaf: int) -> list[Rule]:
        """The conditions on the path from the root to ``leaf``: inside the domain, the leaf's region.

        Args:
            leaf: a leaf index, ``0 <= leaf < n_leaves``.

        Returns:
            one :class:`Rule` per split on the path, root first.
        """
        leaf = check_int("leaf", leaf, minimum=0, maximum=self.n_leaves - 1)
        return [Rule(self.node_weight[node], float(self.node_bias[node]), bool(side),
                     int(self.node_layer[node]), int(self.node_unit[node]))
                for node, side in self._path(leaf)]

    def pattern_text(self, leaf: int) -> str:
        """A leaf's activation pattern as text: one digit per unit, ``|`` between layers.

        Args:
            leaf: a leaf index.

        Returns:
            the text, e.g. ``"101|01"`` for hidden layers of 3 and 2 units.
        """
        leaf = check_int("leaf", leaf, minimum=0, maximum=self.n_leaves - 1)
        digits = "".join("1" if bit else "0" for bit in self.leaf_pattern[leaf].tolist())
        starts = np.cumsum((0,) + self.layer_sizes)
        return "|".join(digits[a:b] for a, b in zip(starts[:-1], starts[1:]))

    def leaf_text(self, leaf: int, feature_names=None, precision: int = 3,
                  max_terms: int | None = None) -> str:
        """A leaf's affine model as text, one ``yk = ...`` per output, separated by ``"; "``.

        Args:
            leaf: a leaf index.
            feature_names: F names for the inputs; ``x0``, ``x1``, ... by default.
            precision: significant digits of each number.
            max_terms: show only this many terms per output, the largest weights first.

        Returns:
            the text, e.g. ``"y0 = 0.5 x0 - 2 x1 + 1; y1 = -0.5 x0 + 2 x1 - 1"``.
        """
        leaf = check_int("leaf", leaf, minimum=0, maximum=self.n_leaves - 1)
        names = _names(feature_names, self.n_inputs)
        return "; ".join(f"y{k} = " + _format_affine(self.leaf_weight[leaf, k].numpy(),
                                                      float(self.leaf_bias[leaf, k]), names,
                                                      precision, max_terms)
                         for k in range(self.n_outputs))

    def node_text(self, node: int, feature_names=None, precision: int = 3,
                  max_terms: int | None = None) -> str:
        """A node's test as text: the effective affine map :math:`\\hat w_{l,j} \\cdot x + \\hat b_{l,j}`.

        Args:
            node: a node index, ``0 <= node < n_nodes``.
            feature_names: F names for the inputs; ``x0``, ``x1``, ... by default.
            precision: significant digits of each number.
            max_terms: show only this many terms, the largest weights first.

        Returns:
            the text, e.g. ``"0.53 x0 - 1.2 x1 + 0.3"``; the test is that it is ``> 0``.
        """
        if self.n_nodes == 0:
            raise ValueError("node: the tree has no nodes (a single leaf), got a node index")
        node = check_int("node", node, minimum=0, maximum=self.n_nodes - 1)
        return _format_affine(self.node_weight[node].numpy(), float(self.node_bias[node]),
                              _names(feature_names, self.n_inputs), precision, max_terms)

    def to_text(self, feature_names=None, max_depth: int | None = 6, precision: int = 3,
                max_terms: int | None = None) -> str:
        """The tree as indented text: a line per side of each split, and per leaf (as ``export_text``).

        Args:
            feature_names: F names for the inputs; ``x0``, ``x1``, ... by default.
            max_depth: deeper subtrees are summarised by their number of leaves; ``None``: no limit.
            precision: significant digits of each number.
            max_terms: show only this many terms per affine expression, the largest weights first.

        Returns:
            the text, lines separated by ``"\\n"``.
        """
        if max_depth is not None:
            check_int("max_depth", max_depth, minimum=0)
        names = _names(feature_names, self.n_inputs)
        lines = []
        stack: list = [(self.root, 0)]  # subtrees to render, or lines ready to emit
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                lines.append(item)
                continue
            ref, depth = item
            indent = "|   " * depth + "|--- "
            if ref < 0:
                leaf = -1 - ref
                lines.append(f"{indent}leaf {leaf} [{self.pattern_text(leaf)}]: "
                             + self.leaf_text(leaf, names, precision, max_terms))
            elif max_depth is not None and depth >= max_depth:
                lines.append(f"{indent}... ({self.count_leaves(ref)} leaves)")
            else:
                affine = self.node_text(ref, names, precision, max_terms)
                unit = f"    (layer {int(self.node_layer[ref])}, unit {int(self.node_unit[ref])})"
                below, above = self.node_children[ref].tolist()
                # Popped in reverse: the "<= 0" line, its subtree, the "> 0" line, its subtree.
                stack += [(above, depth + 1), f"{indent}{affine} > 0",
                          (below, depth + 1), f"{indent}{affine} <= 0{unit}"]
        return "\n".join(lines)

    def count_leaves(self, ref: int) -> int:
        """The number of leaves under the node or leaf ``ref``."""
        count, stack = 0, [ref]
        while stack:
            ref = stack.pop()
            if ref < 0:
                count += 1
            else:
                stack += self.node_children[ref].tolist()
        return count


def _patterns(hidden: list[tuple[torch.Tensor, torch.Tensor, float]], x: torch.Tensor) -> torch.Tensor:
    """The activation patterns (N, U) of float64 inputs (N, F): the network's forward pass, layer by layer."""
    bits = []
    for weight, bias, slope in hidden:
        z = x @ weight.to(x.device).T + bias.to(x.device)
        on = z > 0
        bits.append(on)
        x = torch.where(on, z, slope * z)
    return torch.cat(bits, 1) if bits else torch.zeros(len(x), 0, dtype=torch.bool, device=x.device)


def _pack(patterns: torch.Tensor) -> torch.Tensor:
    """Activation patterns (N, U) as int64 words (N, ceil(U / 62)), one bit per unit."""
    n, units = patterns.shape
    words = max(1, -(-units // _BITS))
    padded = torch.zeros(n, words * _BITS, dtype=torch.long, device=patterns.device)
    padded[:, :units] = patterns.long()
    powers = 2 ** torch.arange(_BITS, dtype=torch.long, device=patterns.device)
    return (padded.reshape(n, words, _BITS) * powers).sum(-1)


def to_decision_tree(model: nn.Sequential, domain=None, *, data: torch.Tensor | None = None,
                     max_units: int = 100, max_leaves: int = 1000) -> DecisionTree:
    """Convert a ReLU (or LeakyReLU) network into the exact decision tree it computes.

    Each hidden unit, in order, is a split on its effective hyperplane; each leaf is an activation
    pattern with its affine map. The tree is grown depth first and a side of a split is kept only
    if some input reaches it: inside the ``domain`` box (a linear program per undecided side, with
    scipy's HiGHS), or among the rows of ``data`` (no LPs). A test that only one side passes is
    redundant there and is no node, so the tree never enumerates the ``2**U`` patterns.

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` layers, each followed by at most one
            ``nn.ReLU`` or ``nn.LeakyReLU``; ``nn.Identity`` and ``nn.Dropout`` are skipped (the
            tree is the network in eval mode).
        domain: the box ``(low, high)`` of inputs to cover, each a number or shape (F,); ``None``:
            all of :math:`\\mathbb{R}^F` (walls farther than 1e9 from the origin count as out of
            reach). Not together with ``data``.
        data: inputs, shape (N, F): keep only the regions these rows visit (exact on them, and on
            any input in those regions).
        max_units: the most hidden units to convert; a larger network raises at once.
        max_leaves: the most leaves; the growth raises as soon as it finds one more.

    Returns:
        the :class:`DecisionTree`.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential``, or holds another layer type.
        ValueError: a bad ``domain`` or ``data``, or a network beyond ``max_units`` or ``max_leaves``.
    """
    check_int("max_units", max_units, minimum=1)
    check_int("max_leaves", max_leaves, minimum=1)
    hidden, out_weight, out_bias = _parse(model)
    n_inputs = hidden[0].weight.shape[1] if hidden else out_weight.shape[1]
    n_units = sum(len(layer.weight) for layer in hidden)
    if n_units > max_units:
        raise ValueError(f"model has {n_units} hidden units, more than max_units={max_units}: its full "
                         f"tree has 2**{n_units} leaves, and even the pruned one is likely too large to "
                         "grow or read; raise max_units to try anyway")
    if data is not None:
        if domain is not None:
            raise ValueError("give domain or data, not both: a tree built from data covers the "
                             "regions its rows visit")
        check_tensor("data", data, ndim=2, floating=True)
        if data.shape[1] != n_inputs or len(data) == 0:
            raise ValueError(f"data must have shape (N, {n_inputs}) with N >= 1, got {_describe(data)}")
        if not torch.isfinite(data).all():
            raise ValueError("data must be finite, got NaN or infinite values")
        hidden_torch = [(torch.from_numpy(h.weight), torch.from_numpy(h.bias), h.slope) for h in hidden]
        oracle = _DataOracle(_patterns(hidden_torch, data.detach().to("cpu", torch.float64)))
        bounds, method = None, "data"
    else:
        bounds = None if domain is None else _check_domain(domain, n_inputs)
        oracle, method = _LPOracle(n_inputs, bounds), "domain"
    grown = _grow(hidden, out_weight, out_bias, oracle, max_leaves)
    return DecisionTree(hidden, grown, oracle.n_lps, bounds, method)

