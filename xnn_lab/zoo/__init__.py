"""Project-trained checkpoints: a safetensors file and a JSON card per model.

``load(name)`` gives the trained model; ``train(name)`` reproduces it from its recipe;
``check(name)`` measures it again against the metrics on its card.

Two folders hold checkpoints. The package ships one (:data:`CHECKPOINT_DIR`), which is never
written to unless asked by name; models you train go to your own folder,
:func:`user_directory` (``$XNN_LAB_ZOO``, else ``$XDG_DATA_HOME/xnn_lab/zoo``, else
``~/.local/share/xnn_lab/zoo``). Without a ``directory``, ``load`` and ``check`` take a model
from your folder when it is there, and the shipped one otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from xnn_lab._core.checks import check_choice, check_device
from xnn_lab._core.runtime import device as default_device
from xnn_lab._core.runtime import seed_everything
from xnn_lab._core.training import fit
from xnn_lab.zoo.recipes import ARCHITECTURES, RECIPES, Recipe, measure

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

__all__ = ["CHECKPOINT_DIR", "RECIPES", "card", "check", "load", "names", "train", "user_directory"]

# What a card must hold for load (and check) to trust it.
_CARD_FIELDS = {"sha256": str, "architecture": dict, "metrics": dict, "tolerance": (int, float)}


def names() -> list[str]:
    """Names of the zoo's models."""
    return sorted(RECIPES)


def _recipe(name: str) -> Recipe:
    check_choice("name", name, names())
    return RECIPES[name]


def user_directory() -> Path:
    """Where :func:`train` writes by default: ``$XNN_LAB_ZOO``, else ``$XDG_DATA_HOME/xnn_lab/zoo``,
    else ``~/.local/share/xnn_lab/zoo``."""
    if os.environ.get("XNN_LAB_ZOO"):
        return Path(os.environ["XNN_LAB_ZOO"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "xnn_lab" / "zoo"


def _folder(directory) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {directory!r} ({type(directory).__name__})")
    return Path(directory).expanduser()


def _find(name: str, directory: Path | str | None) -> Path:
    """The folder that holds model ``name``: ``directory``, else the user's folder when it has the
    model, else the package's."""
    if directory is not None:
        folder = _folder(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"directory {str(folder)!r} is not a folder")
        return folder
    mine = user_directory()
    return mine if (mine / f"{name}.json").exists() else CHECKPOINT_DIR


def _paths(name: str, directory: Path | str | None) -> tuple[Path, Path]:
    folder = _find(name, directory)
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(name: str, directory: Path | str | None = None) -> dict:
    """The JSON card of model ``name``: architecture config, data and seed, recipe, metrics reached."""
    _recipe(name)
    _, card_path = _paths(name, directory)
    if not card_path.exists():
        raise FileNotFoundError(f"no card for {name!r} at {card_path}: run `xnn-lab zoo train {name}`")
    try:
        info = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the card {card_path} is not valid JSON: {err}") from err
    if not isinstance(info, dict):
        raise ValueError(f"the card {card_path} must hold a JSON object, got {type(info).__name__}")
    for field, kind in _CARD_FIELDS.items():
        if not isinstance(info.get(field), kind):
            problem = "lacks" if field not in info else "has a malformed"
            raise ValueError(f"the card {card_path} {problem} field {field!r}: it is damaged or hand-edited; "
                             f"run `xnn-lab zoo train {name}` to write it again")
    architecture = info["architecture"]
    if not isinstance(architecture.get("class"), str) or not isinstance(architecture.get("config"), dict):
        raise ValueError(f"the card {card_path} has a malformed field 'architecture': it needs 'class' and "
                         "'config'")
    return info


def load(name: str, *, device: torch.device | str | None = None, directory: Path | str | None = None) -> nn.Module:
    """Load zoo model ``name`` in eval mode on ``device`` (``xnn_lab.device()`` by default).

    The file's SHA-256 must match its card, and its tensors the architecture on the card;
    a corrupt or mismatched file raises ``ValueError`` saying which.
    """
    device = check_device("device", device)
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
          progress: bool = True, overwrite: bool = False) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` from its recipe and write its checkpoint and card to ``directory``
    (:func:`user_directory` by default; created if missing).

    Args:
        overwrite: replace a checkpoint already in ``directory``; without it, an existing one
            raises ``FileExistsError`` before any training.

    Returns:
        the trained model (eval mode) and its card.
    """
    recipe = _recipe(name)
    device = check_device("device", device)
    folder = user_directory() if directory is None else _folder(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"directory {str(folder)!r} is a file, not a folder")
    weights_path, card_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not overwrite and (weights_path.exists() or card_path.exists()):
        raise FileExistsError(f"{name!r} is already in {folder}: pass overwrite=True (`--force`) to replace it")
    seed_everything(recipe.training["seed"])
    model = recipe.build()
    start = time.perf_counter()
    history = fit(model, recipe.split("train"), recipe.split("val"), device=device or default_device(),
                  progress=progress, **recipe.training)
    seconds = time.perf_counter() - start
    metrics = measure(recipe, model)
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
