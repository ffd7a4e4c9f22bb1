"""Graded questions of ``solutions/04_interpretable_by_design.ipynb``: a ReLU network as a decision tree.

References: :func:`xnn_lab.trees.to_decision_tree` (built from the trial's rows, ``data=``, or from
a box, ``domain=``) and its :class:`~xnn_lab.trees.DecisionTree`: activation patterns, each leaf's
affine map and the number of leaves.
"""

from __future__ import annotations

import functools

import torch

from xnn_lab.grading.question import Question
from xnn_lab.grading.questions._random import generator, module
from xnn_lab.models import MLP


def _network_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (rows, features, hidden, outputs, activation) in enumerate(
            [(6, 2, (3, 3), 2, "relu"), (20, 5, (6, 4, 3), 3, "relu"), (9, 3, (4,), 1, "leaky_relu"),
             (40, 2, (8, 8), 2, "relu")]):
        net = module(lambda: MLP(features, hidden=hidden, out_features=outputs, activation=activation), seed * 10 + i)
        trials.append((net, torch.randn(rows, features, generator=g, dtype=torch.float64)))
    return trials


def _tree(model, x):
    from xnn_lab.trees import to_decision_tree

    return to_decision_tree(model, data=x)


def activation_pattern_reference(model, x):
    """:meth:`xnn_lab.trees.DecisionTree.activation_pattern`."""
    return _tree(model, x).activation_pattern(x)


def local_linear_map_reference(model, x):
    """Each row's leaf (:meth:`~xnn_lab.trees.DecisionTree.leaf_index`) and that leaf's weight and bias."""
    tree = _tree(model, x)
    leaf = tree.leaf_index(x)
    return tree.leaf_weight[leaf], tree.leaf_bias[leaf]


def count_regions_reference(model, x):
    """The number of leaves of the tree the rows visit."""
    return _tree(model, x).n_leaves


@functools.lru_cache(maxsize=1)
def reachable_regions_reference() -> int:
    """Leaves of ``to_decision_tree`` over the box [-2, 2]^2 of ``MLP(2, hidden=(3, 3), out_features=2)`` built after ``torch.manual_seed(0)``."""
    from xnn_lab.trees import to_decision_tree

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLP(2, hidden=(3, 3), out_features=2)
    return to_decision_tree(net, domain=(-2.0, 2.0)).n_leaves


# The tree of a network knows each row's pattern, region and affine map: the first three questions may not use it.
TREE = ("xnn_lab.trees.to_decision_tree", "xnn_lab.trees.DecisionTree")

QUESTIONS = (
    Question("activation_pattern", 1, "activation_pattern", activation_pattern_reference, _network_inputs,
             forbidden=TREE),
    Question("local_linear_map", 2, "local_linear_map", local_linear_map_reference, _network_inputs, forbidden=TREE),
    Question("count_regions", 1, "count_regions", count_regions_reference, _network_inputs, forbidden=TREE),
    Question("reachable_regions", 1, "reachable_regions", reachable_regions_reference),
)
