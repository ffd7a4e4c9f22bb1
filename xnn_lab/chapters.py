"""Run book chapters as plain Python scripts, timed: for machines without Jupyter (a GPU box)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def chapter_source(path: Path | str) -> str:
    """The code cells of notebook ``path`` joined into one script (lines starting with % or ! dropped)."""
    path = Path(path)
    try:
        notebook = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"path {path} is not a readable notebook: {err}") from err
    cells = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
             for c in notebook.get("cells", []) if c.get("cell_type") == "code"]
    lines = [ln for cell in cells for ln in cell.splitlines() + [""] if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def run_chapter(path: Path | str, *, quick: bool = False) -> float:
    """Execute a chapter's code in a fresh namespace, in its own folder; return the seconds taken."""
    path = Path(path).resolve()
    code = compile(chapter_source(path), str(path), "exec")
    os.environ["XNN_LAB_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("MPLBACKEND", "Agg")
    cwd = Path.cwd()
    os.chdir(path.parent)
    start = time.perf_counter()
    try:
        exec(code, {"__name__": "__main__", "__file__": str(path)})
    finally:
        os.chdir(cwd)
        import matplotlib.pyplot as plt

        plt.close("all")
    return time.perf_counter() - start
