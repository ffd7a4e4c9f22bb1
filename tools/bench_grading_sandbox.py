"""What the grading sandbox costs: the same batch graded with and without it, in one process.

    python tools/bench_grading_sandbox.py [--chapter 02_cam] [--copies 20] [--workers 2] [--repeats 2]

grades ``--copies`` copies of ``solutions/CHAPTER.ipynb`` with ``--workers`` workers, sandboxed
(bubblewrap, the default of ``xnn-lab grade``) and with ``sandbox=False``, alternating ``--repeats``
times, and prints each run's wall time, the median of each mode, their ratio and the sandbox's
cost per submission ((sandboxed - unsandboxed) / copies). Every run must give every copy full
marks. A benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default="02_cam")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("XNN_LAB_QUICK", "1")
    from xnn_lab.grading.grader import grade

    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="xnn-bench-grade-") as folder:
        for i in range(args.copies):
            shutil.copyfile(ROOT / "solutions" / f"{args.chapter}.ipynb",
                            Path(folder) / f"s{i:03d}_{args.chapter}.ipynb")
        for repeat in range(args.repeats):
            for sandbox in (True, False) if repeat % 2 == 0 else (False, True):
                start = time.perf_counter()
                results = grade([folder], seed=repeat, workers=args.workers, sandbox=sandbox)
                seconds = time.perf_counter() - start
                if not all(r.score == r.max_score > 0 for r in results):
                    print(f"not every copy scored full marks (sandbox={sandbox})", file=sys.stderr)
                    return 1
                times[sandbox].append(seconds)
                print(f"run {repeat + 1} {'sandboxed  ' if sandbox else 'unsandboxed'}: {args.copies} submissions of "
                      f"{args.chapter}, {args.workers} workers: {seconds:.1f} s", flush=True)
    sandboxed, plain = statistics.median(times[True]), statistics.median(times[False])
    print(f"median sandboxed {sandboxed:.1f} s, unsandboxed {plain:.1f} s, ratio {sandboxed / plain:.2f}, "
          f"sandbox cost {(sandboxed - plain) / args.copies:.2f} s per submission "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
