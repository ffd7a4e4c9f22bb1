"""Graded exercises: the ``Question`` spec, exercise generation and the autograder.

``solutions/NN_topic.ipynb`` are nbgrader-compatible notebooks; ``exercises/`` is generated
from them (:mod:`xnn_lab.grading.generate`); :mod:`xnn_lab.grading.grader` runs each submission in
its own sandbox (:mod:`xnn_lab.grading.sandbox`) and scores each
:class:`~xnn_lab.grading.question.Question` of the chapter's module
``xnn_lab.grading.questions.chNN_topic`` on fresh random inputs.

``Question`` and ``allclose_compare`` are loaded on first use, so that importing the command line
(:mod:`xnn_lab.grading.cli`) does not import torch.
"""

__all__ = ["Question", "allclose_compare"]


def __getattr__(name: str):
    if name in __all__:
        from xnn_lab.grading import question

        return getattr(question, name)
    raise AttributeError(f"module 'xnn_lab.grading' has no attribute {name!r}")
