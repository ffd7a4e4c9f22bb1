"""How each zoo model is made: architecture, data, training and the metrics on its card."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from xnn_lab.data import load_breast_cancer, make_shapes
from xnn_lab.models import MLP, SmallCNN
from xnn_lab._core.training import evaluate

ARCHITECTURES: dict[str, type[nn.Module]] = {"SmallCNN": SmallCNN, "MLP": MLP}


@dataclass(frozen=True)
class Recipe:
    """A reproducible zoo entry.

    ``data`` describes the data set and its seed, ``training`` holds the keyword arguments of
    ``xnn_lab.fit``, ``metrics`` maps a metric name to the evaluation split it is measured on.
    """

    name: str
    description: str
    architecture: str
    config: dict
    data: dict
    training: dict
    metrics: dict[str, str]
    tolerance: float = 0.01

    def build(self) -> nn.Module:
        return ARCHITECTURES[self.architecture](**self.config)

    def split(self, split: str):
        """The data of one split ("train", "val", "test", "clean_test")."""
        return DATASETS[self.data["set"]](self.data, split)


def _shapes(spec: dict, split: str):
    n = spec[f"n_{split}"] if f"n_{split}" in spec else spec["n_test"]
    return make_shapes(n, split=split, spurious=spec.get("spurious", False), seed=spec["seed"])


def _breast_cancer(spec: dict, split: str):
    return load_breast_cancer(split=split)


DATASETS: dict[str, Callable[[dict, str], object]] = {"shapes": _shapes, "breast_cancer": _breast_cancer}


def measure(recipe: Recipe, model: nn.Module) -> dict[str, float]:
    """Measure every metric of ``recipe`` on freshly generated data."""
    return {metric: round(evaluate(model, recipe.split(split))["accuracy"], 4)
            for metric, split in recipe.metrics.items()}


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        name="shapes_cnn",
        description="SmallCNN trained on the Shapes set (no watermark): classifies the target shape.",
        architecture="SmallCNN",
        config={"num_classes": 5, "in_channels": 3, "widths": [16, 32, 64, 64]},
        data={"set": "shapes", "spurious": False, "seed": 0, "n_train": 4000, "n_val": 500, "n_test": 1000},
        training={"epochs": 20, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-4, "seed": 0},
        metrics={"test_accuracy": "test"},
    ),
    Recipe(
        name="shapes_cnn_shortcut",
        description="SmallCNN trained on the spurious Shapes set, where a watermark's position predicts "
                    "the class in 95% of training images, for 8 epochs: it learns the shortcut first.",
        architecture="SmallCNN",
        config={"num_classes": 5, "in_channels": 3, "widths": [16, 32, 64, 64]},
        data={"set": "shapes", "spurious": True, "seed": 0, "n_train": 4000, "n_val": 500, "n_test": 1000},
        training={"epochs": 8, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-4, "seed": 0},
        metrics={"test_accuracy": "test", "clean_test_accuracy": "clean_test"},
    ),
    Recipe(
        name="cancer_mlp",
        description="MLP (30-32-16-2, ReLU) on scikit-learn's breast cancer data, standardised features.",
        architecture="MLP",
        config={"in_features": 30, "hidden": [32, 16], "out_features": 2, "activation": "relu"},
        data={"set": "breast_cancer"},
        training={"epochs": 60, "lr": 1e-3, "batch_size": 32, "weight_decay": 1e-4, "seed": 0},
        metrics={"test_accuracy": "test"},
        tolerance=0.02,
    ),
]}
