"""The wheel, as a user installs it: the zoo's checkpoints and cards, the ``xnn-lab`` entry point,
the metadata (license, extras, links), and commands that run from it alone."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from xnn_lab import zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already installed, and the registry may be far.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    (path,) = out.glob("xnn_lab-*.whl")
    return path


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_holds_every_checkpoint_card_and_the_entry_point(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for model in zoo.names():
        assert f"xnn_lab/zoo/checkpoints/{model}.safetensors" in names
        assert f"xnn_lab/zoo/checkpoints/{model}.json" in names
    assert "xnn-lab = xnn_lab.cli:main" in entry_points
    assert not any(name.startswith(("tests/", "tools/", "book/")) for name in names)


def test_the_metadata_names_the_license_the_extras_and_the_links(wheel):
    import xnn_lab

    meta = _metadata(wheel)
    assert meta["Version"] == xnn_lab.__version__
    assert meta["License-Expression"] == "MIT"
    assert {"grading", "widgets", "book", "test"} <= set(meta.get_all("Provides-Extra"))
    assert meta.get_all("Project-URL") and meta.get_all("Classifier")
    grading = [r for r in meta.get_all("Requires-Dist") if 'extra == "grading"' in r]
    assert any(r.startswith("nbgrader") for r in grading) and any(r.startswith("nbformat") for r in grading)


def test_commands_run_from_the_wheel_alone(wheel, tmp_path):
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked), "XNN_LAB_ZOO": str(tmp_path / "zoo")}

    def command(*argv):
        # What the entry point runs, from the unpacked wheel (outside the checkout).
        code = ("import sys, xnn_lab.cli as cli; assert cli.__file__.startswith(sys.argv[1]), cli.__file__; "
                "sys.exit(cli.main(sys.argv[2:]))")
        return subprocess.run([sys.executable, "-c", code, str(unpacked), *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    import xnn_lab

    run = command("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"xnn-lab {xnn_lab.__version__}", run.stderr
    run = command("zoo", "list")
    assert run.returncode == 0 and all(name in run.stdout for name in zoo.names()), run.stderr
    run = command("zoo", "check", "cancer_mlp")
    assert run.returncode == 0 and "cancer_mlp: ok" in run.stdout, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing written beside it
