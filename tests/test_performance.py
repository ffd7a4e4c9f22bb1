"""Benchmark records and the Performance page: records round-trip, the page shows every figure of
every record with its machine and date, and the committed page is the one the records give."""

import json
from pathlib import Path

import pytest

from tools import chapters, performance
from tools.performance import TABLES, load_records, render_page
from xnn_lab.bench import save_record
from xnn_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_record_round_trips_and_renders_every_row(tmp_path):
    results = {key: 1.5 + i for i, (key, *_rest) in enumerate(TABLES["influence"]["rows"])}
    record = save_record(tmp_path / "influence-cpu.json", "influence", {"hidden": 16}, results, "cpu")
    assert record["hardware"]["device"] == "cpu" and record["settings"] == {"hidden": 16}
    (loaded,) = load_records(tmp_path)
    assert loaded == record
    page = render_page([loaded])
    assert page.startswith("# Performance") and TABLES["influence"]["title"] in page
    assert TABLES["cam"]["title"] not in page  # no record, no table
    for key, label, fmt, _ in TABLES["influence"]["rows"]:
        row = next(line for line in page.splitlines() if line.startswith(f"| {label} |"))
        assert fmt.format(results[key]) in row
    assert f"CPU, {record['hardware']['cores']} cores<br>{record['date']}" in page


def test_page_puts_cpu_before_gpu_and_marks_missing_figures(tmp_path):
    for name, device in (("b-gpu", "cuda"), ("a-cpu", "cpu")):
        record = {"benchmark": "protopnet", "date": "2026-01-01", "settings": {"n": 8},
                  "hardware": {"device": device, "cpu": "x86_64", "cores": "2", "torch": "2.x"},
                  "results": {"epoch_s": 2.0, "push_s": 1.0}}
        if device == "cuda":
            record["hardware"]["gpu"] = "NVIDIA H100"
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    page = render_page(load_records(tmp_path))
    header = next(line for line in page.splitlines() if "NVIDIA H100" in line)
    assert header.index("CPU, 2 cores") < header.index("NVIDIA H100")
    assert "| push / epoch time | n/a | n/a | <= 1 |" in page


def test_bad_records_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="benchmark must be one of"):
        save_record(tmp_path / "x.json", "nope", {}, {}, "cpu")
    with pytest.raises(ValueError, match="folder must be a directory"):
        load_records(tmp_path / "missing")
    (tmp_path / "bad.json").write_text(json.dumps({"benchmark": "cam"}))
    with pytest.raises(ValueError, match="is not a benchmark record"):
        load_records(tmp_path)


def test_cli_bench_writes_a_record_that_the_page_shows(tmp_path, capsys):
    out = tmp_path / "records" / "cam-cpu.json"
    assert main(["bench", "cam", "--model", "resnet18", "--batch-size", "2", "--image-size", "32",
                 "--num-classes", "10", "--steps", "1", "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["settings"] == {"model": "resnet18", "layer": "layer4", "batch_size": 2, "image_size": 32,
                                  "num_classes": 10, "steps": 1}
    assert record["results"]["xnn_lab/floor"] > 0
    page = tmp_path / "performance.md"
    assert performance.main([str(out.parent), "--output", str(page)]) == 0
    assert f"{record['results']['xnn_lab/floor']:.2f}" in page.read_text()


def test_cli_chapters_writes_a_record_with_one_row_per_chapter(tmp_path, capsys):
    paths = []
    for stem, source in (("01_first", "x = sum(range(10))"), ("02_second", "import time\ntime.sleep(0.2)")):
        path = tmp_path / f"{stem}.ipynb"
        path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": source}], "metadata": {},
                                    "nbformat": 4, "nbformat_minor": 5}))
        paths.append(str(path))
    out = tmp_path / "records" / "chapters-cpu.json"
    assert chapters.main(["--quick", *paths, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "chapters" and record["settings"] == {"mode": "quick", "jobs": 1}
    results = record["results"]
    assert set(results) == {"01_first", "02_second", "all (wall)"}
    assert results["02_second"] >= 0.2 and results["all (wall)"] >= results["01_first"] + results["02_second"]
    page = render_page(load_records(out.parent)).splitlines()
    labels = [line.split(" | ")[0] for line in page if ": seconds |" in line]
    assert labels == ["| 01_first: seconds", "| 02_second: seconds", "| all (wall): seconds"]
    assert f"| 02_second: seconds | {results['02_second']:.1f} |  |" in page


def test_a_failed_chapter_writes_no_record(tmp_path, capsys):
    path = tmp_path / "01_broken.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "1 / 0"}], "metadata": {},
                                "nbformat": 4, "nbformat_minor": 5}))
    out = tmp_path / "chapters.json"
    assert chapters.main(["--jobs", "2", str(path), "--json", str(out)]) == 1
    assert not out.exists() and "ZeroDivisionError" in capsys.readouterr().err


def test_committed_page_is_generated_from_the_committed_records():
    records = load_records(ROOT / "benchmarks")
    assert {r["benchmark"] for r in records} == set(TABLES)
    assert (ROOT / "book" / "performance.md").read_text() == render_page(records), (
        "book/performance.md is stale: run `python tools/performance.py`")


def test_cli_bench_refuses_options_of_other_benchmarks(capsys):
    assert main(["bench", "influence", "--model", "resnet18", "--n", "8"]) == 2
    assert "bench influence does not take --model, --n" in capsys.readouterr().err
