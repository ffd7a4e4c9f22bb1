"""Graded exercises: the ``Question`` spec, exercise generation and the autograder.

``solutions/NN_topic.ipynb`` are nbgrader-compatible notebooks; ``exercises/`` is generated
from them (:mod:`xnn_lab.grading.generate`); :mod:`xnn_lab.grading.grader` runs a submission in
its own kernel and scores each :class:`~xnn_lab.grading.question.Question` of the chapter's
module ``xnn_lab.grading.questions.chNN_topic`` on fresh random inputs.
"""

__all__ = ["Question", "allclose_compare"]


def __getattr__(name: str):
    # Imported on first use: the ``xnn-lab`` command builds its parser from xnn_lab.grading.cli
    # and must not load PyTorch (which question.py needs) just to print its help.
    if name in __all__:
        from xnn_lab.grading import question

        return getattr(question, name)
    raise AttributeError(f"module 'xnn_lab.grading' has no attribute {name!r}")
