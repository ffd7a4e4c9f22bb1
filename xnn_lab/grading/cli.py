"""The ``xnn-lab grade`` and ``xnn-lab exercises`` subcommands."""

from __future__ import annotations

import argparse
import sys


def _grade(args: argparse.Namespace) -> int:
    from xnn_lab.grading.grader import Limits, format_table, grade, write_csv, write_json

    limits = Limits(cell_timeout=args.timeout, check_timeout=args.check_timeout,
                    memory_bytes=int(args.memory_gb * 2**30) if args.memory_gb > 0 else None,
                    notebook_timeout=args.notebook_timeout)
    results = grade(args.paths, chapter=args.chapter, seed=args.seed, limits=limits, workers=args.workers)
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from xnn_lab.grading.generate import run

    return run(args)


def add_parsers(subparsers) -> None:
    """Add ``grade`` and ``exercises`` to the ``xnn-lab`` command's subparsers."""
    grade_parser = subparsers.add_parser("grade", help="grade submitted notebooks, each in its own kernel")
    grade_parser.add_argument("paths", nargs="+", help="notebooks, or folders of notebooks")
    grade_parser.add_argument("--json", help="write one object per notebook (score, max_score, questions) here")
    grade_parser.add_argument("--csv", help="write one row per notebook (points of each question) here")
    grade_parser.add_argument("--chapter", help="the chapter, e.g. 02_cam (default: read from each file name)")
    grade_parser.add_argument("--seed", type=int, help="seed of the random trials (default: a fresh one)")
    grade_parser.add_argument("--workers", type=int, help="notebooks graded at once (default: CPUs, at most 4)")
    grade_parser.add_argument("--timeout", type=float, default=60, help="seconds per notebook cell")
    grade_parser.add_argument("--check-timeout", type=float, default=30, help="seconds per question's check")
    grade_parser.add_argument("--notebook-timeout", type=float, default=600, help="seconds per notebook in all")
    grade_parser.add_argument("--memory-gb", type=float, default=6,
                              help="address-space limit of each kernel in GiB (0: none; torch alone takes ~3.5)")
    grade_parser.set_defaults(run=_grade)

    from xnn_lab.grading.generate import add_arguments

    exercises_parser = subparsers.add_parser("exercises", help="generate exercises/ from solutions/ (nbgrader)")
    add_arguments(exercises_parser)
    exercises_parser.set_defaults(run=_exercises)


def main(argv: list[str] | None = None) -> int:
    """``python -m xnn_lab.grading.cli grade|exercises ...`` (the same as ``xnn-lab grade|exercises``)."""
    parser = argparse.ArgumentParser(prog="python -m xnn_lab.grading.cli")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
