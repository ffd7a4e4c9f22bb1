import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
# The repository tooling (tools/) is not installed with the package; its tests import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XNN_LAB_QUICK", "1")
# Models a developer trained into their own zoo folder must not stand in for the shipped ones.
os.environ["XNN_LAB_ZOO"] = tempfile.mkdtemp(prefix="xnn-lab-zoo-")
atexit.register(shutil.rmtree, os.environ["XNN_LAB_ZOO"], True)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests use tiny tensors: more threads only add synchronisation, which costs seconds
    when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
