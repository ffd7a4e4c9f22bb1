"""Chapter 4: a ReLU network is exactly a decision tree (Aytekin, 2022).

:func:`to_decision_tree` converts a network of Linear and (Leaky)ReLU layers into the
:class:`DecisionTree` it computes: one oblique split per hidden unit, one affine model per leaf,
the unreachable branches pruned by linear programs (or kept only where data go). Each leaf's path
is a list of :class:`Rule`. The figures, ``plot_tree`` and ``plot_regions``, are in
:mod:`xnn_lab.viz`.
"""

from xnn_lab.trees.tree import DecisionTree, Rule, to_decision_tree

__all__ = ["DecisionTree", "Rule", "to_decision_tree"]
