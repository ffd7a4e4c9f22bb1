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


def _package_files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(zoo.CHECKPOINT_DIR.iterdir())}


def test_training_writes_to_the_user_folder_never_into_the_package(tmp_path, monkeypatch, capsys):
    from xnn_lab.cli import main

    monkeypatch.setenv("XNN_LAB_ZOO", str(tmp_path / "my-zoo"))
    monkeypatch.chdir(tmp_path)
    shipped = _package_files()
    assert main(["zoo", "train", "cancer_mlp", "--quiet"]) == 0
    assert _package_files() == shipped
    assert sorted(p.name for p in (tmp_path / "my-zoo").iterdir()) == ["cancer_mlp.json", "cancer_mlp.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-zoo"]  # nothing written to the current folder
    # Without a directory, load and check take the user's model where there is one.
    mine = json.loads((tmp_path / "my-zoo" / "cancer_mlp.json").read_text())
    assert zoo.card("cancer_mlp") == mine
    assert main(["zoo", "check", "cancer_mlp"]) == 0
    # A second training needs --force; refused before any training, and nothing changes.
    capsys.readouterr()
    assert main(["zoo", "train", "cancer_mlp", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="overwrite"):
        zoo.train("cancer_mlp", progress=False)
    assert main(["zoo", "train", "cancer_mlp", "--quiet", "--force"]) == 0
    assert _package_files() == shipped


def test_user_folder_defaults_outside_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("XNN_LAB_ZOO", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert zoo.user_directory() == tmp_path / "xnn_lab" / "zoo"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.user_directory() == tmp_path / "home" / ".local" / "share" / "xnn_lab" / "zoo"
    assert zoo.CHECKPOINT_DIR not in zoo.user_directory().parents


@pytest.mark.parametrize("field", ["sha256", "architecture", "metrics", "tolerance"])
def test_a_card_without_a_field_names_it(tmp_path, field):
    for suffix in (".json", ".safetensors"):
        shutil.copy(zoo.CHECKPOINT_DIR / f"cancer_mlp{suffix}", tmp_path)
    card = json.loads((tmp_path / "cancer_mlp.json").read_text())
    del card[field]
    (tmp_path / "cancer_mlp.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=f"lacks field '{field}'"):
        zoo.load("cancer_mlp", directory=tmp_path)
