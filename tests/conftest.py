import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("XNN_LAB_QUICK", "1")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
