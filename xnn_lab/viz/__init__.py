"""Every figure of the book: image grids, heatmap overlays, ICE/PD curves, training histories,
and each method's own figures. The algorithms never import matplotlib; only this package does.

Every function draws with matplotlib (any backend, Agg included), takes tensors on any device,
and returns the figure or axes it drew on; none calls ``plt.show()``.
"""

from xnn_lab.viz._images import overlay, plot_history, plot_ice, show_images, show_overlays
from xnn_lab.viz.prototypes import draw_patch, plot_prototype_explanations, plot_pushed_prototypes
from xnn_lab.viz.trees import plot_regions, plot_tree

__all__ = ["overlay", "plot_history", "plot_ice", "show_images", "show_overlays",
           "draw_patch", "plot_prototype_explanations", "plot_pushed_prototypes",
           "plot_regions", "plot_tree"]

from xnn_lab.viz.graphs import plot_explanations, plot_graph  # noqa: E402  (chapter 9)
__all__ += ["plot_explanations", "plot_graph"]
