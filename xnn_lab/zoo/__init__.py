"""Project-trained checkpoints: a safetensors file and a JSON card per model.

``load(name)`` gives the trained model; ``train(name)`` reproduces it from its recipe;
``check(name)`` measures it again against the metrics on its card.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from xnn_lab._core.checks import check_choice
from xnn_lab._core.runtime import device as default_device
from xnn_lab._core.runtime import seed_everything
from xnn_lab._core.training import fit
from xnn_lab.zoo.recipes import ARCHITECTURES, RECIPES, Recipe, measure

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

__all__ = ["CHECKPOINT_DIR", "RECIPES", "card", "check", "load", "names", "train"]


def names() -> list[str]:
    """Names of the zoo's models."""
    return sorted(RECIPES)


def _recipe(name: str) -> Recipe:
    check_choice("name", name, names())
    return RECIPES[name]


def _paths(name: str, directory: Path | str | None) -> tuple[Path, Path]:
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(name: str, directory: Path | str | None = None) -> dict:
    """The JSON card of model ``name``: architecture config, data and seed, recipe, metrics reached."""
    _recipe(name)
    _, card_path = _paths(name, directory)
    if not card_path.exists():
        raise FileNotFoundError(f"no card for {name!r} at {card_path}: run `xnn-lab zoo train {name}`")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the card {card_path} is not valid JSON: {err}") from err


def load(name: str, *, device: torch.device | str | None = None, directory: Path | str | None = None) -> nn.Module:
    """Load zoo model ``name`` in eval mode on ``device`` (``xnn_lab.device()`` by default).

    The file's SHA-256 must match its card, and its tensors the architecture on the card;
    a corrupt or mismatched file raises ``ValueError`` saying which.
    """
    info = card(name, directory)
    weights_path, _ = _paths(name, directory)
    if not weights_path.exists():
        raise FileNotFoundError(f"no weights for {name!r} at {weights_path}: run `xnn-lab zoo train {name}`")
    if _sha256(weights_path) != info["sha256"]:
        raise ValueError(f"{weights_path} does not match its card (SHA-256 differs): the file is corrupt "
                         f"or from another training run; run `xnn-lab zoo train {name}`")
    architecture = info["architecture"]
    if architecture["class"] not in ARCHITECTURES:
        raise ValueError(f"the card of {name!r} names an unknown architecture {architecture['class']!r}")
    model = ARCHITECTURES[architecture["class"]](**architecture["config"])
    try:
        state = load_file(weights_path)
    except SafetensorError as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not fit the architecture on its card: {err}") from err
    return model.to(device or default_device()).eval()


def train(name: str, *, directory: Path | str | None = None, device: torch.device | str | None = None,
          progress: bool = True) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` from its recipe and write its checkpoint and card to ``directory``
    (the package's checkpoint folder by default).

    Returns:
        the trained model (eval mode) and its card.
    """
    recipe = _recipe(name)
    seed_everything(recipe.training["seed"])
    model = recipe.build()
    start = time.perf_counter()
    history = fit(model, recipe.split("train"), recipe.split("val"), device=torch.device(device or default_device()),
                  progress=progress, **recipe.training)
    seconds = time.perf_counter() - start
    metrics = measure(recipe, model)
    weights_path, card_path = _paths(name, directory)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights_path)
    info = {
        "name": name,
        "description": recipe.description,
        "architecture": {"class": recipe.architecture, "config": recipe.config},
        "data": recipe.data,
        "recipe": recipe.training,
        "metrics": metrics,
        "tolerance": recipe.tolerance,
        "best_epoch": history.best_epoch,
        "sha256": _sha256(weights_path),
        "trained_with": {"torch": torch.__version__, "device": str(next(model.parameters()).device),
                         "machine": platform.machine(), "seconds": round(seconds, 1),
                         "date": time.strftime("%Y-%m-%d")},
    }
    card_path.write_text(json.dumps(info, indent=2) + "\n")
    return model, info


def check(name: str, *, directory: Path | str | None = None,
          device: torch.device | str | None = None) -> dict[str, tuple[float, float]]:
    """Measure model ``name`` again on freshly generated data.

    Returns:
        ``{metric: (on_card, measured)}``.

    Raises:
        AssertionError: a metric differs from its card by more than the card's tolerance.
    """
    info = card(name, directory)
    model = load(name, device=device, directory=directory)
    measured = measure(_recipe(name), model)
    result = {m: (info["metrics"][m], measured[m]) for m in info["metrics"]}
    off = {m: v for m, v in result.items() if abs(v[0] - v[1]) > info["tolerance"]}
    if off:
        raise AssertionError(f"{name}: metrics no longer match the card (on card, measured): {off}")
    return result
