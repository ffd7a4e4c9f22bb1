import re

import pytest

from xnn_lab.bench import bench_cam, bench_influence
from xnn_lab.models import SmallCNN

RATIOS = ("xnn_lab/floor", "xnn_lab/captum", "cam_all/cam_one time", "deletion/forward", "insertion/forward")



def test_bench_cam_prints_throughputs_and_ratios(capsys):
    result = bench_cam("resnet18", batch_size=2, image_size=32, num_classes=10, steps=2, repeats=1, device="cpu")
    out = capsys.readouterr().out
    assert "bench cam: resnet18 on cpu, batch 2, 32x32, layer 'layer4', 10 classes" in out
    for pattern in (r"[\d.]+x floor", r"[\d.]+x captum", r"[\d.]+x the time of one class", r"[\d.]+x forward"):
        assert re.search(pattern, out), pattern
    assert all(result[key] > 0 for key in RATIOS)
    assert result["xnn_lab/floor"] == pytest.approx(result["xnn_lab"] / result["floor"])


def test_bench_cam_takes_a_module_and_checks_its_arguments(capsys):
    result = bench_cam(SmallCNN(3, widths=(4, 8)), layer="features", batch_size=2, image_size=16, steps=1,
                       repeats=1, device="cpu")
    assert "bench cam: SmallCNN on cpu" in capsys.readouterr().out and set(RATIOS) <= set(result)
    with pytest.raises(ValueError, match="model must name a torchvision classifier"):
        bench_cam("no_such_net")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bench_cam("resnet18", batch_size=0)


def test_bench_influence_prints_times_against_captum(capsys):
    result = bench_influence(hidden=4, repeats=1, device="cpu")
    out = capsys.readouterr().out
    assert "bench influence: digits, float64, lambda 0.01, on cpu" in out
    assert re.search(r"[\d.]+x the time of xnn_lab", out)
    assert result["network_parameters"] == 64 * 4 + 4 + 4 + 1
    assert result["captum/xnn_lab time"] == pytest.approx(result["captum_naive_s"] / result["logreg_exact_s"])
    assert all(result[key] > 0 for key in ("logreg_exact_s", "softmax_exact_s", "network_exact_s", "network_cg_s"))
