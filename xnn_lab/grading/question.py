"""One graded question: the name a student defines, its reference, its random trials, its check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

RTOL = 1e-4
ATOL = 1e-6


def allclose_compare(result: object, expected: object, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Check that ``result`` has the structure of ``expected`` and close values; raise otherwise.

    Tensors must have the same shape and dtype kind (bool, integer, floating, complex) and pass
    ``torch.allclose(result, expected, rtol, atol)`` (NaNs equal where both hold them); numbers
    pass ``math.isclose`` with the same tolerances; ``bool``, ``str`` and ``None`` must be equal;
    tuples, lists and dicts are compared element-wise (same length, same keys).

    Args:
        result: what the student's code returned.
        expected: the reference's answer.
        rtol: relative tolerance.
        atol: absolute tolerance.

    Raises:
        AssertionError: with a short message saying where and how the two differ.
    """
    _compare(result, expected, "result", rtol, atol)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


def _compare(result: object, expected: object, where: str, rtol: float, atol: float) -> None:
    if isinstance(expected, torch.Tensor):
        if not isinstance(result, torch.Tensor):
            raise AssertionError(f"{where}: expected a tensor, got {type(result).__name__}")
        if tuple(result.shape) != tuple(expected.shape):
            raise AssertionError(f"{where}: expected shape {tuple(expected.shape)}, got {tuple(result.shape)}")
        if _kind(result.dtype) != _kind(expected.dtype):
            raise AssertionError(f"{where}: expected a {_kind(expected.dtype)} tensor, got dtype {result.dtype}")
        got = result.detach().cpu()
        want = expected.detach().cpu()
        if want.dtype == torch.bool or not (want.is_floating_point() or want.is_complex()):
            if not torch.equal(got, want):
                raise AssertionError(f"{where}: {int((got != want).sum())} of {want.numel()} entries differ")
            return
        dtype = torch.promote_types(got.dtype, want.dtype)
        if not torch.allclose(got.to(dtype), want.to(dtype), rtol=rtol, atol=atol, equal_nan=True):
            gap = (got.to(dtype) - want.to(dtype)).abs().nan_to_num(nan=float("inf")).max().item()
            raise AssertionError(f"{where}: values differ (max abs difference {gap:.3g})")
        return
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        if type(result) is not type(expected) or result != expected:
            raise AssertionError(f"{where}: expected {expected!r}, got {_short(result)}")
        return
    if isinstance(expected, (int, float)):
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            raise AssertionError(f"{where}: expected a number, got {type(result).__name__}")
        if isinstance(expected, int) and not isinstance(result, int):
            raise AssertionError(f"{where}: expected an int, got {type(result).__name__}")
        both_nan = math.isnan(expected) and math.isnan(result)
        if not both_nan and not math.isclose(result, expected, rel_tol=rtol, abs_tol=atol):
            raise AssertionError(f"{where}: expected {expected!r}, got {result!r}")
        return
    if isinstance(expected, (tuple, list)):
        if not isinstance(result, (tuple, list)) or type(result) is not type(expected):
            raise AssertionError(f"{where}: expected a {type(expected).__name__}, got {type(result).__name__}")
        if len(result) != len(expected):
            raise AssertionError(f"{where}: expected length {len(expected)}, got {len(result)}")
        for i, (got, want) in enumerate(zip(result, expected)):
            _compare(got, want, f"{where}[{i}]", rtol, atol)
        return
    if isinstance(expected, dict):
        if not isinstance(result, dict):
            raise AssertionError(f"{where}: expected a dict, got {type(result).__name__}")
        if set(result) != set(expected):
            raise AssertionError(f"{where}: expected keys {sorted(map(str, expected))}, got {sorted(map(str, result))}")
        for key, want in expected.items():
            _compare(result[key], want, f"{where}[{key!r}]", rtol, atol)
        return
    raise TypeError(f"expected: a tensor, number, str, bool, None or a tuple/list/dict of these, "
                    f"got {type(expected).__name__}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Question:
    """A graded question of a solution notebook.

    Args:
        grade_id: the nbgrader ``grade_id`` of the solution cell that defines ``name``.
        points: the points of the question (equal to its test cell's ``points``).
        name: the function or value the student's notebook defines at top level.
        reference: computes the expected answer in the grader's process; ``reference(*args)``
            for a function question, ``reference()`` for a value question.
        inputs: for a function question, ``seed -> list of trials``, each a tuple of positional
            arguments, fresh and random per seed; ``None`` for a value question.
        compare: ``compare(student_result, expected)`` raises ``AssertionError`` when wrong.
        forbidden: the parts of ``xnn_lab`` that implement what the question asks the student to
            write (dotted names of functions, classes or methods). In the submission's sandbox
            they are replaced by stubs that raise, so an answer that calls one, directly or through
            another function, scores 0 with a message naming it.
    """

    grade_id: str
    points: int
    name: str
    reference: Callable
    inputs: Callable[[int], list[tuple]] | None = None
    compare: Callable[[object, object], None] = allclose_compare
    forbidden: tuple[str, ...] = ()
