"""The ``xnn-lab grade`` and ``xnn-lab exercises`` subcommands.

Nothing heavy is imported here at module level (no torch, no nbformat), so that ``--help`` is fast;
user errors are raised as ``xnn_lab._core.errors.UsageError``, which ``xnn-lab`` prints as
``xnn-lab: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

NOT_ISOLATED = ("xnn-lab grade: --no-sandbox: the submissions are NOT isolated: each kernel runs as your user, "
                "can read and write what you can, reach the network, see and signal the grader and the other "
                "kernels, and call every function of xnn_lab (including the grader's references). Grade only "
                "notebooks you trust this way.")


def _usage_error(message: str) -> Exception:
    from xnn_lab._core.errors import UsageError

    return UsageError(message)


def _grade(args: argparse.Namespace) -> int:
    for flag, value in (("--timeout", args.timeout), ("--check-timeout", args.check_timeout),
                        ("--notebook-timeout", args.notebook_timeout)):
        if not value > 0:
            raise _usage_error(f"{flag} must be a positive number of seconds, got {value:g}")
    if args.memory_gb < 0:
        raise _usage_error(f"--memory-gb must be 0 (no limit) or positive, got {args.memory_gb:g}")
    if args.workers is not None and args.workers < 1:
        raise _usage_error(f"--workers must be at least 1, got {args.workers}")
    if args.chapter is not None:
        from xnn_lab.grading.questions import chapters

        if args.chapter not in chapters():
            raise _usage_error(f"--chapter must be one of {chapters()}, got {args.chapter!r}")
    if args.no_sandbox:
        print(NOT_ISOLATED, file=sys.stderr)
    else:
        from xnn_lab.grading.sandbox import SandboxUnavailable, require_bwrap

        try:
            require_bwrap()
        except SandboxUnavailable as err:
            raise _usage_error(f"cannot grade: {err}") from None
    from xnn_lab.grading.grader import Limits, format_table, grade, write_csv, write_json

    limits = Limits(cell_timeout=args.timeout, check_timeout=args.check_timeout,
                    memory_bytes=int(args.memory_gb * 2**30) if args.memory_gb > 0 else None,
                    notebook_timeout=args.notebook_timeout)
    try:
        results = grade(args.paths, chapter=args.chapter, seed=args.seed, limits=limits, workers=args.workers,
                        sandbox=not args.no_sandbox)
    except ValueError as err:  # a missing notebook or folder, an unknown chapter: the caller's mistake
        raise _usage_error(str(err)) from None
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from xnn_lab.grading.generate import run

    try:
        return run(args)
    except ValueError as err:  # no solutions folder, a notebook nbgrader cannot read
        raise _usage_error(str(err)) from None


def add_parsers(subparsers) -> None:
    """Add ``grade`` and ``exercises`` to the ``xnn-lab`` command's subparsers."""
    grade_parser = subparsers.add_parser(
        "grade", help="grade submitted notebooks, each in its own sandbox (bubblewrap)",
        description="Grade submitted notebooks. Each runs in a bubblewrap sandbox of its own (no network, no "
                    "view of the grader or of the other submissions, a private folder, a copy of xnn_lab without "
                    "the grader's references and without what the questions ask the student to write); its "
                    "questions are scored in the grader's own process on fresh random inputs.")
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
    grade_parser.add_argument("--no-sandbox", action="store_true",
                              help="run the kernels without bubblewrap: NOT isolated, for trusted notebooks only")
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
