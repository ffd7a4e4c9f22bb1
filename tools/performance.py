"""The book's Performance page, built from benchmark records (repository tooling, not installed).

``xnn-lab bench WHAT --json FILE`` and ``tools/chapters.py --json FILE`` save what they measured
as a record (:func:`xnn_lab.bench.save_record`). ``python tools/performance.py`` turns every record
in ``benchmarks/`` into ``book/performance.md``, one table per benchmark with one column per
record, so each figure on the page carries the date and the machine that gave it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the package may not be installed
    sys.path.insert(0, str(ROOT))

from xnn_lab.bench import RECORDED


# What the page shows of each benchmark: (result key, row label, format, target). Keys a record
# lacks show as "n/a", so records written before a key was added still render. A table whose rows
# are None shows every result key of its records, as seconds (the chapters: one row per chapter).
TABLES: dict[str, dict] = {
    "cam": {
        "title": "Grad-CAM and CAM (`xnn-lab bench cam`)",
        "about": "Random-weight torchvision model, random images, fp32; each time is the best of several rounds "
                 "run in turn. The floor is the least work Grad-CAM needs, written inline: one forward with a "
                 "hook, `autograd.grad` to the layer, pooling and upsampling.",
        "rows": [
            ("floor", "floor, img/s", "{:.1f}", ""),
            ("xnn_lab", "xnn_lab GradCAM, img/s", "{:.1f}", ""),
            ("captum", "captum LayerGradCam + interpolate, img/s", "{:.1f}", ""),
            ("xnn_lab/floor", "xnn_lab / floor", "{:.2f}", ">= 0.95"),
            ("xnn_lab/captum", "xnn_lab / captum", "{:.2f}", ">= 1"),
            ("cam_one", "CAM one class, img/s", "{:.1f}", ""),
            ("cam_all", "CAM all classes, img/s", "{:.1f}", ""),
            ("cam_all/cam_one time", "CAM time, all classes / one class", "{:.2f}", "<= 2"),
            ("maps_all", "a new tensor of the all-class maps, filled, img/s", "{:.1f}", ""),
            ("forward", "forward only, img/s", "{:.1f}", ""),
            ("deletion/forward", "deletion / forward throughput", "{:.2f}", ">= 0.5"),
            ("insertion/forward", "insertion / forward throughput", "{:.2f}", ">= 0.5"),
        ],
    },
    "influence": {
        "title": "Influence functions (`xnn-lab bench influence`)",
        "about": "Digits (scikit-learn), float64, lambda 0.01, each model at its optimum. Influence of every "
                 "training point on every test point: the chapter's logistic regression (1 against 7), a softmax "
                 "regression on all ten digits, a tanh MLP 64-16-1 (all parameters); captum's "
                 "NaiveInfluenceFunction on the same logistic regression for comparison.",
        "rows": [
            ("logreg_exact_s", "logistic regression, all pairs, exact: seconds", "{:.3f}", "< 1 on CPU"),
            ("logreg_pairs", "logistic regression: pairs", "{:.0f}", ""),
            ("captum_naive_s", "captum NaiveInfluenceFunction, same pairs: seconds", "{:.3f}", ""),
            ("softmax_exact_s", "softmax regression, 10 digits, all pairs, exact: seconds", "{:.3f}", ""),
            ("softmax_pairs", "softmax regression: pairs", "{:.0f}", ""),
            ("captum/xnn_lab time", "captum / xnn_lab time", "{:.1f}", ""),
            ("network_exact_s", "MLP, all parameters, all pairs, exact: seconds", "{:.3f}", ""),
            ("network_cg_s", "MLP, all parameters, all pairs, CG: seconds", "{:.3f}", ""),
            ("network_parameters", "MLP parameters", "{:.0f}", ""),
        ],
    },
    "protopnet": {
        "title": "ProtoPNet push (`xnn-lab bench protopnet`)",
        "about": "One training epoch and one push over the same Parts training set, same model and device.",
        "rows": [
            ("epoch_s", "one training epoch: seconds", "{:.3f}", ""),
            ("push_s", "one push: seconds", "{:.3f}", ""),
            ("push/epoch", "push / epoch time", "{:.2f}", "<= 1"),
        ],
    },
    "graphs": {
        "title": "Explaining every BA-Shapes house node (`xnn-lab bench graphs`)",
        "about": "Chapter 9: a three-layer GCN (random weights) on BA-Shapes; every house node explained in one "
                 "call, each on its own copy of its computation graph. PyG's GNNExplainer explains one node per "
                 "call; it is timed on a few nodes and scaled to all of them.",
        "rows": [
            ("nodes", "house nodes explained", "{:.0f}", ""),
            ("gnnexplainer_s", "GNNExplainer, 100 steps, all nodes: seconds", "{:.3f}", ""),
            ("saliency_s", "gradient saliency, all nodes: seconds", "{:.3f}", ""),
            ("integrated_gradients_s", "Integrated Gradients, 32 steps, all nodes: seconds", "{:.3f}", ""),
            ("pyg_gnnexplainer_s", "PyG GNNExplainer, one node per call (scaled): seconds", "{:.3f}", ""),
            ("pyg/xnn_lab gnnexplainer", "PyG one by one / batched time", "{:.1f}", ""),
        ],
    },
    "chapters": {
        "title": "Chapters (`tools/chapters.py`)",
        "about": "Each chapter's code run as a script in the mode named in the settings: seconds from its first "
                 "cell to its last, training included. With jobs 1 the chapters ran one after another in one "
                 "process (only the first paid for importing the libraries they share); with more, that many at a time, each in a "
                 "new process of its own (imports included), sharing the machine. Targets: at most 90 s per "
                 "chapter in quick mode on a laptop CPU; about a minute per chapter in full mode on one GPU.",
        "rows": None,
    },
}


def load_records(folder: str | Path) -> list[dict]:
    """Every ``*.json`` record in ``folder``, sorted by benchmark, device type and file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be a directory of benchmark records, got {str(folder)!r}")
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        missing = {"benchmark", "date", "hardware", "settings", "results"} - set(record)
        if missing or record["benchmark"] not in RECORDED:
            raise ValueError(f"{path} is not a benchmark record (missing {sorted(missing)} or unknown benchmark)")
        records.append(record)
    return sorted(records, key=lambda r: (r["benchmark"], r["hardware"]["device"] != "cpu"))


def _machine(record: dict) -> str:
    hw = record["hardware"]
    name = hw.get("gpu") or f"CPU, {hw['cores']} cores"
    return f"{name}<br>{record['date']}, torch {hw['torch']}"


def _settings(record: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(record["settings"].items()))


def render_page(records: list[dict]) -> str:
    """The Performance page (MyST markdown) for ``records``."""
    lines = ["# Performance", "",
             "Every figure below was measured by `xnn-lab bench ... --json FILE` (or `tools/chapters.py ... --json "
             "FILE`) and turned into this page by "
             "`tools/performance.py`; nothing here is typed by hand. `make bench` records the benchmarks on "
             "this machine's CPU, `make gpu-check` on a GPU. Each column is one run on one machine, named with "
             "its date; ratios come from times measured in the same run. The CPU runs are on the project's "
             "2-core test machine, which other processes may share, so its absolute figures are pessimistic; "
             "the ratios are what the targets are about.", ""]
    if not any(r["hardware"]["device"] == "cuda" for r in records):
        lines += ["No GPU run is recorded yet: run `make gpu-check RECORDS=benchmarks` on a machine with a GPU, "
                  "then `python tools/performance.py`.", ""]
    for benchmark, table in TABLES.items():
        chosen = [r for r in records if r["benchmark"] == benchmark]
        if not chosen:
            continue
        lines += [f"## {table['title']}", "", table["about"], ""]
        lines.append("| | " + " | ".join(_machine(r) for r in chosen) + " | target |")
        lines.append("| --- " * (len(chosen) + 2) + "|")
        lines.append("| settings | " + " | ".join(_settings(r) for r in chosen) + " | |")
        rows = table["rows"] or [(key, f"{key}: seconds", "{:.1f}", "")
                                 for key in sorted({key for r in chosen for key in r["results"]})]
        for key, label, fmt, target in rows:
            values = [fmt.format(r["results"][key]) if key in r["results"] else "n/a" for r in chosen]
            lines.append(f"| {label} | " + " | ".join(values) + f" | {target} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python tools/performance.py [RECORDS] [--output PAGE]``: write the page from the records."""
    parser = argparse.ArgumentParser(description="Write the book's Performance page from benchmark records.")
    parser.add_argument("records", nargs="?", default=str(ROOT / "benchmarks"), help="folder of records")
    parser.add_argument("--output", default=str(ROOT / "book" / "performance.md"))
    args = parser.parse_args(argv)
    try:
        records = load_records(args.records)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.output).write_text(render_page(records))
    print(f"{args.output}: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
