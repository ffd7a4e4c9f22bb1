"""Run book chapters as plain Python scripts, timed: for machines without Jupyter (a GPU box).

Repository tooling, not installed: ``python tools/chapters.py book/0*.ipynb [--quick] [--jobs N]
[--json FILE] [--require-cuda]``; the Makefile's ``bench`` and ``gpu-check`` call it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the package may not be installed
    sys.path.insert(0, str(ROOT))


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
    """Execute a chapter's code in a fresh namespace, in its own folder; return the seconds taken.

    The working folder, open figures and PyTorch's thread count are restored afterwards, so a
    chapter that sets them (chapter 4 runs on one thread) does not slow the next one down.
    """
    import matplotlib.pyplot as plt
    import torch

    path = Path(path).resolve()
    code = compile(chapter_source(path), str(path), "exec")
    os.environ["XNN_LAB_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("MPLBACKEND", "Agg")
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(path.parent)
    start = time.perf_counter()
    try:
        exec(code, {"__name__": "__main__", "__file__": str(path)})
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        plt.close("all")
    return time.perf_counter() - start


class ChapterRun(NamedTuple):
    """One chapter's run, as ``run_chapters`` yields it.

    Attributes:
        path: the notebook, as given.
        seconds: wall-clock seconds it took.
        error: the end of the chapter's output when it failed, else None.
    """

    path: str
    seconds: float
    error: str | None


def _run_in_subprocess(path: str, quick: bool, threads: int) -> ChapterRun:
    # A fresh interpreter per chapter: chapters share no state, and each gets its share of the cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), path] + (["--quick"] if quick else [])
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    return ChapterRun(path, seconds, None if done.returncode == 0 else done.stdout[-4000:])


def run_chapters(paths: list[str], *, quick: bool = False, jobs: int = 1) -> Iterator[ChapterRun]:
    """Run chapters, ``jobs`` at a time, each in its own interpreter with ``cpu_count // jobs`` threads
    (its time includes starting it); yield the runs in the order of ``paths``. With ``jobs=1`` they run
    one after another in this process, and the first failure raises."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs == 1:
        for path in paths:
            yield ChapterRun(path, run_chapter(path, quick=quick), None)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(_run_in_subprocess, path, quick, threads) for path in paths]
        for future in futures:
            yield future.result()


def main(argv: list[str] | None = None) -> int:
    """Run the chapters given on the command line; print each one's time; optionally save a record."""
    parser = argparse.ArgumentParser(description="Run book chapters as scripts and print their timings.")
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--quick", action="store_true", help="quick mode (XNN_LAB_QUICK=1)")
    parser.add_argument("--require-cuda", action="store_true", help="fail when no GPU is visible")
    parser.add_argument("--jobs", type=int, default=1,
                        help="chapters run at once, each in its own process (default 1: in this one)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also save the timings, mode, date and hardware as a record")
    args = parser.parse_args(argv)
    missing = [path for path in args.notebooks if not Path(path).is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    import torch

    from xnn_lab import device

    print(f"device: {device()}" + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    if args.require_cuda and not torch.cuda.is_available():
        print("error: --require-cuda given but CUDA is not available", file=sys.stderr)
        return 1
    start = time.perf_counter()
    runs = []
    for run in run_chapters(args.notebooks, quick=args.quick, jobs=args.jobs):
        runs.append(run)
        status = "ok" if run.error is None else "FAILED"
        print(f"{run.path}: {run.seconds:.1f} s ({'quick' if args.quick else 'full'} mode) {status}", flush=True)
        if run.error is not None:
            print(run.error, file=sys.stderr)
    wall = time.perf_counter() - start
    print(f"all chapters: {wall:.1f} s wall, {args.jobs} at a time")
    failed = [run.path for run in runs if run.error is not None]
    if failed:
        print(f"error: {len(failed)} chapter(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.json:
        from xnn_lab.bench import save_record

        results = {Path(run.path).stem: run.seconds for run in runs}
        results["all (wall)"] = wall
        settings = {"mode": "quick" if args.quick else "full", "jobs": args.jobs}
        save_record(args.json, "chapters", settings, results, device())
        print(f"record written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
