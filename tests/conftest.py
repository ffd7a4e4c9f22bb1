import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("XNN_LAB_QUICK", "1")


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
