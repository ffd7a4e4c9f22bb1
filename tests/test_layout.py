"""The package's shape: one subpackage per method with a flat public face, algorithms without
matplotlib, repository tooling outside the installed package."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import xnn_lab

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("agnostic", "cam", "metrics", "trees", "protopnet", "senn", "concepts", "influence", "graphs")
ALGORITHMS = ("xnn_lab", "xnn_lab.data", "xnn_lab.models", "xnn_lab.zoo", "xnn_lab.bench",
              *(f"xnn_lab.{name}" for name in METHODS))


def test_no_algorithm_imports_matplotlib():
    code = (f"import sys\nfor name in {ALGORITHMS!r}:\n    __import__(name)\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
            "assert not loaded, loaded[:3]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", METHODS)
def test_each_method_has_a_flat_public_face(name):
    package = importlib.import_module(f"xnn_lab.{name}")
    assert hasattr(package, "__path__"), f"xnn_lab.{name} is a subpackage"
    assert package.__all__, f"xnn_lab.{name} lists its public names"
    for public in package.__all__:
        assert hasattr(package, public), f"xnn_lab.{name}.{public}"


def test_repository_tooling_is_not_in_the_package():
    for gone in ("chapters", "performance", "train", "stability", "prototypes", "protopnet_training",
                 "senn_training"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"xnn_lab.{gone}")
    assert (ROOT / "tools" / "chapters.py").is_file() and (ROOT / "tools" / "performance.py").is_file()
    assert {"fit", "evaluate", "predict", "History", "Step", "device"} <= set(xnn_lab.__all__)
