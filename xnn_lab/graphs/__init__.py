"""Graph neural networks and their explanations (chapter 9), on PyTorch Geometric.

Data with known explanations, generated in code: BA-Shapes (:func:`make_ba_shapes`),
molecule-like graphs with a functional group (:func:`make_molecules`) and the Shapes images as
graphs of SLIC superpixels (:func:`make_superpixel_graphs`). Models: :class:`GCN` for nodes,
:class:`GIN` with a readout for graphs, trained by :func:`fit_gnn`; :func:`gcn_layer` is one
GCN layer written out. Explainers (``explainer(data, index=None, target=None) ->``
:class:`GraphExplanation`, batched over every explained node or graph): :class:`GNNExplainer`,
:class:`GradientSaliency`, :class:`IntegratedGradients` and :class:`RandomExplainer`; their
masks are scored by :func:`auroc`, :func:`precision_at_k` and :func:`fidelity`.
"""

from xnn_lab.graphs.data import (ATOM_TYPES, HOUSE_ROLES, SUPERPIXEL_FEATURES, SuperpixelGraphs, batch_of,
                                 make_ba_shapes, make_molecules, make_superpixel_graphs, node_maps)
from xnn_lab.graphs.explain import (GNNExplainer, GradientSaliency, GraphExplanation, IntegratedGradients,
                                    RandomExplainer, computation_subgraphs)
from xnn_lab.graphs.layers import gcn_layer
from xnn_lab.graphs.metrics import auroc, fidelity, precision_at_k, symmetrize, top_k_mask
from xnn_lab.graphs.models import GCN, GIN
from xnn_lab.graphs.train import accuracy, fit_gnn, predict_gnn

__all__ = ["ATOM_TYPES", "GCN", "GIN", "GNNExplainer", "GradientSaliency", "GraphExplanation", "HOUSE_ROLES",
           "IntegratedGradients", "RandomExplainer", "SUPERPIXEL_FEATURES", "SuperpixelGraphs", "accuracy",
           "auroc", "batch_of", "computation_subgraphs", "fidelity", "fit_gnn", "gcn_layer", "make_ba_shapes",
           "make_molecules", "make_superpixel_graphs", "node_maps", "precision_at_k", "predict_gnn",
           "symmetrize", "top_k_mask"]
