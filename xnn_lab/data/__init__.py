"""Data with ground truth, generated in code or shipped by scikit-learn; nothing is downloaded.

Every set is an in-memory dataset whose ``tensors`` are ``(X, y)``, so ``xnn_lab.fit``
takes it directly.
"""

from xnn_lab.data.parts import PartsData, make_parts
from xnn_lab.data.shapes import SHAPE_CLASSES, ShapesData, make_shapes
from xnn_lab.data.tabular import TabularData, load_breast_cancer, load_digits

__all__ = ["SHAPE_CLASSES", "PartsData", "ShapesData", "TabularData", "load_breast_cancer", "load_digits",
           "make_parts", "make_shapes"]
