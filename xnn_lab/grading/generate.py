"""Generate the exercise notebooks from the solutions with nbgrader's own preprocessors.

``exercises/NN_topic.ipynb`` is ``solutions/NN_topic.ipynb`` passed through nbconvert with
nbgrader's ``LockCells``, ``ClearSolutions`` (each ``### BEGIN SOLUTION`` ... ``### END SOLUTION``
region becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()``), ``ClearHiddenTests``,
``ClearOutput``, ``CheckCellMetadata`` and ``ComputeChecksums`` (so nbgrader can tell whether a
locked cell was changed), the same steps as ``nbgrader generate_assignment``.

Run ``xnn-lab exercises --solutions solutions --exercises exercises`` (or ``python -m
xnn_lab.grading.generate`` with the same options) after editing a solution; ``--check`` fails when ``exercises/`` is out of date instead of writing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def exercise_text(solution: str | Path) -> str:
    """The exercise notebook generated from one solution notebook, as the text to write."""
    # Imported here only: the rest of the package (and the xnn-lab command) does not need them.
    import nbformat
    from nbconvert.exporters import NotebookExporter
    from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearOutput, ClearSolutions,
                                        ComputeChecksums, LockCells)

    exporter = NotebookExporter()
    for preprocessor in (LockCells(), ClearSolutions(enforce_metadata=True), ClearHiddenTests(), ClearOutput(),
                         CheckCellMetadata(), ComputeChecksums()):
        exporter.register_preprocessor(preprocessor, enabled=True)
    text, _ = exporter.from_notebook_node(nbformat.read(solution, as_version=4))
    return text if text.endswith("\n") else text + "\n"


def generate(solutions: str | Path = "solutions", exercises: str | Path = "exercises", *,
             check: bool = False) -> list[Path]:
    """Write (or, with ``check``, compare) ``exercises/X.ipynb`` for every ``solutions/X.ipynb``.

    Args:
        solutions: the folder of solution notebooks.
        exercises: the folder of exercise notebooks.
        check: write nothing; return the exercise files that are missing or differ.

    Returns:
        the files written, or with ``check`` the files out of date (empty when in sync).
    """
    sources = sorted(Path(solutions).glob("[0-9]*.ipynb"))
    if not sources:
        raise ValueError(f"solutions must be a folder with NN_topic.ipynb notebooks, found none in {str(solutions)!r}")
    changed = []
    for source in sources:
        target = Path(exercises) / source.name
        try:
            text = exercise_text(source)
        except Exception as err:  # nbgrader's messages do not say which notebook
            raise ValueError(f"cannot generate the exercise of {source}: {err}") from err
        if target.exists() and target.read_text() == text:
            continue
        changed.append(target)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xnn_lab.grading.generate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xnn-lab exercises`` (and of this module run as a script)."""
    # Both required: nothing is read or written relative to the current folder unless the user says so.
    parser.add_argument("--solutions", required=True, help="folder of solution notebooks (in this repository: solutions)")
    parser.add_argument("--exercises", required=True, help="folder of exercise notebooks, written (in this repository: exercises)")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if exercises/ is out of date")


def run(args: argparse.Namespace) -> int:
    """Generate (or check) the exercises as ``args`` say; the exit status."""
    changed = generate(args.solutions, args.exercises, check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and changed:
        print(f"{args.exercises} is out of sync with {args.solutions}: run xnn-lab exercises without --check",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
