"""Graded exercises: the ``Question`` spec, exercise generation and the autograder.

``solutions/NN_topic.ipynb`` are nbgrader-compatible notebooks; ``exercises/`` is generated
from them (:mod:`xnn_lab.grading.generate`); :mod:`xnn_lab.grading.grader` runs a submission in
its own kernel and scores each :class:`~xnn_lab.grading.question.Question` of the chapter's
module ``xnn_lab.grading.questions.chNN_topic`` on fresh random inputs.
"""

from xnn_lab.grading.question import Question, allclose_compare

__all__ = ["Question", "allclose_compare"]
