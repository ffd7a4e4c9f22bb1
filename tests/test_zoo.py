import json
import shutil

import pytest
import torch

from xnn_lab import zoo


@pytest.mark.parametrize("name", zoo.names())
def test_every_card_is_still_reached(name):
    """Load the shipped checkpoint, regenerate its evaluation data, and measure again."""
    for metric, (on_card, measured) in zoo.check(name, device="cpu").items():
        assert abs(on_card - measured) <= zoo.card(name)["tolerance"], metric


def test_training_reproduces_the_card(tmp_path):
    name = "cancer_mlp"
    _, info = zoo.train(name, directory=tmp_path, device="cpu", progress=False)
    shipped = zoo.card(name)
    assert info["architecture"] == shipped["architecture"] and info["recipe"] == shipped["recipe"]
    for metric, value in shipped["metrics"].items():
        assert abs(info["metrics"][metric] - value) <= shipped["tolerance"], metric
    model = zoo.load(name, directory=tmp_path, device="cpu")
    assert not model.training


def test_card_describes_the_checkpoint():
    for name in zoo.names():
        info = zoo.card(name)
        assert {"architecture", "data", "recipe", "metrics", "sha256", "trained_with"} <= set(info)
        assert (zoo.CHECKPOINT_DIR / f"{name}.safetensors").stat().st_size < 1_000_000


def _copy(name, tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.CHECKPOINT_DIR / f"{name}{suffix}", tmp_path)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    _copy("cancer_mlp", tmp_path)
    path = tmp_path / "cancer_mlp.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="does not match its card"):
        zoo.load("cancer_mlp", directory=tmp_path)
    card_path = tmp_path / "cancer_mlp.json"
    info = json.loads(card_path.read_text())
    info["sha256"] = zoo._sha256(path)
    card_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        zoo.load("cancer_mlp", directory=tmp_path)


def test_mismatched_architecture_gives_a_clear_error(tmp_path):
    _copy("cancer_mlp", tmp_path)
    card_path = tmp_path / "cancer_mlp.json"
    info = json.loads(card_path.read_text())
    info["architecture"]["config"]["hidden"] = [8]
    card_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="does not fit the architecture on its card"):
        zoo.load("cancer_mlp", directory=tmp_path)


def test_unknown_or_missing_models(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        zoo.load("resnet9000")
    with pytest.raises(FileNotFoundError, match="xnn-lab zoo train cancer_mlp"):
        zoo.load("cancer_mlp", directory=tmp_path)


def test_loaded_model_predicts_on_the_requested_device():
    model = zoo.load("shapes_cnn", device="cpu")
    assert next(model.parameters()).device == torch.device("cpu")
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
