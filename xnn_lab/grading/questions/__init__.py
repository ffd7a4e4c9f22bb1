"""The graded questions of each solution notebook, one module per chapter.

``questions/chNN_topic.py`` holds ``QUESTIONS`` for ``solutions/NN_topic.ipynb``; modules are
found by name, so a new chapter needs no registration here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from xnn_lab.grading.question import Question

_MODULE = re.compile(r"ch(\d\d_\w+)")


def chapters() -> list[str]:
    """The notebook stems (``"02_cam"``, ...) that have a question module, sorted."""
    return sorted(match.group(1) for info in pkgutil.iter_modules(__path__)
                  if (match := _MODULE.fullmatch(info.name)))


def load(chapter: str) -> tuple[Question, ...]:
    """The ``QUESTIONS`` of a chapter, given by its notebook stem (``"02_cam"``)."""
    if chapter not in chapters():
        raise ValueError(f"chapter must be one of {chapters()}, got {chapter!r}")
    questions = importlib.import_module(f"{__name__}.ch{chapter}").QUESTIONS
    if not questions or not all(isinstance(q, Question) for q in questions):
        raise TypeError(f"QUESTIONS of chapter {chapter} must be a non-empty tuple of Question")
    return tuple(questions)


def chapter_of(notebook: str | Path) -> str:
    """The chapter a submission answers, read from its file name.

    The name must contain one chapter stem (``02_cam.ipynb``, ``alice_02_cam.ipynb``,
    ``02_cam-bob.ipynb``); the longest stem found wins.

    Raises:
        ValueError: no stem in the name.
    """
    name = Path(notebook).name
    found = [stem for stem in chapters() if stem in name]
    if not found:
        raise ValueError(f"cannot tell the chapter of {str(notebook)!r}: its file name must contain one of "
                         f"{chapters()} (or pass the chapter explicitly)")
    return max(found, key=len)
