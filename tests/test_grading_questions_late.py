"""The graded questions of chapters 5 to 8, checked without the grader.

For each question module: (a) its reference passes its own compare on trials that are fresh per
seed, picklable, and whose results survive ``torch.save`` / ``torch.load(weights_only=True)``;
one fixed answer cannot pass every trial; (b) the functions and values of the solution notebook
(its non-test code cells, executed in a namespace) pass every trial for three seeds; (c) a
deliberately wrong variant of each answer fails; (d) grade ids and points agree with the
notebook's nbgrader cells. Besides: the exercise nbgrader's ClearSolutions makes of each notebook
answers no question, and chapter 5's independent push reference agrees with
``xnn_lab.protopnet.push_prototypes``.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import io
import pickle
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"ch05_protopnet": "05_protopnet", "ch06_senn": "06_senn", "ch07_multitask": "07_multitask",
             "ch08_influential_instances": "08_influential_instances"}
SEEDS = (0, 1, 2)


def _questions(module: str):
    return importlib.import_module(f"xnn_lab.grading.questions.{module}").QUESTIONS


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@functools.cache
def _notebook(module: str):
    return nbformat.read(ROOT / "solutions" / f"{NOTEBOOKS[module]}.ipynb", as_version=4)


@functools.cache
def _solution_namespace(module: str) -> dict:
    """The notebook's code cells, test cells excluded, executed in order in one namespace."""
    namespace: dict = {"__name__": f"solution_{module}"}
    threads = torch.get_num_threads()
    try:
        for cell in _notebook(module).cells:
            if cell.cell_type == "code" and not _nbgrader(cell).get("grade", False):
                exec(compile(cell.source, f"<{module} {_nbgrader(cell).get('grade_id')}>", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)  # the notebook sets one thread; the fixture restores the rest
    return namespace


@functools.cache
def _trials(module: str, name: str, seed: int) -> list[tuple]:
    """A function question's trials for one seed, built once; pass them through ``_fresh``."""
    return next(q for q in _questions(module) if q.name == name).inputs(seed)


@functools.cache
def _expected_value(module: str, name: str):
    """A value question's reference answer, computed once (some train a small model)."""
    return next(q for q in _questions(module) if q.name == name).reference()


def _round_trip(value):
    """What the grader's kernel would send back: saved and loaded with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _fresh(args: tuple) -> tuple:
    """A copy of the arguments as the grader passes them: pickled into another process."""
    return pickle.loads(pickle.dumps(args))


def _leaves(value) -> list:
    """The values in a structure of trials, comparable with ==: tensors and modules as lists of numbers."""
    if isinstance(value, torch.nn.Module):
        return [repr(value)] + [_leaves(t) for t in value.state_dict().values()]
    if isinstance(value, torch.Tensor):
        return [str(value.dtype), tuple(value.shape), value.tolist()]
    if isinstance(value, (tuple, list)):
        return [_leaves(v) for v in value]
    if isinstance(value, dict):
        return [(k, _leaves(v)) for k, v in value.items()]
    return value


def _fails(compare, result, expected) -> bool:
    try:
        compare(result, expected)
    except AssertionError:
        return True
    return False


def _all_questions():
    return [(module, question) for module in NOTEBOOKS for question in _questions(module)]


def _function_questions():
    return [(m, q) for m, q in _all_questions() if q.inputs is not None]


def _id(item) -> str:
    return f"{item[0]}:{item[1].name}" if isinstance(item, tuple) else str(item)


# ----------------------------------------------------------------------------- (a) references and trials


@pytest.mark.parametrize("item", _function_questions(), ids=_id)
def test_reference_passes_its_trials_which_are_fresh(item):
    module, question = item
    first = _trials(module, question.name, 0)
    assert len(first) >= 3
    assert _leaves(first) != _leaves(_trials(module, question.name, 1)), "trials must change with the seed"
    assert _leaves(first) == _leaves(question.inputs(0)), "trials must be reproducible per seed"
    expected = []
    for args in first:
        result = question.reference(*_fresh(args))
        question.compare(_round_trip(result), question.reference(*_fresh(args)))
        expected.append(result)
    # One fixed answer (say, the visible example's) cannot pass every trial.
    assert any(_fails(question.compare, expected[0], other) for other in expected[1:])


@pytest.mark.parametrize("item", [(m, q) for m, q in _all_questions() if q.inputs is None], ids=_id)
def test_value_reference_is_deterministic(item):
    _, question = item
    value = question.reference()
    question.compare(_round_trip(value), question.reference())


# ----------------------------------------------------------------------------- (b) the solutions pass


@pytest.mark.parametrize("item", _all_questions(), ids=_id)
def test_solution_notebook_passes(item):
    module, question = item
    namespace = _solution_namespace(module)
    assert question.name in namespace, f"the solution does not define {question.name}"
    answer = namespace[question.name]
    if question.inputs is None:
        question.compare(_round_trip(answer), _expected_value(module, question.name))
        return
    for seed in SEEDS:
        for args in _trials(module, question.name, seed):
            question.compare(_round_trip(answer(*_fresh(args))), question.reference(*_fresh(args)))


# ----------------------------------------------------------------------------- (c) wrong answers fail


def _nearest(model, x):
    return model.explain(x).min_distances


def _wrong_push(model, x, y):
    """The nearest patch of any class."""
    with torch.no_grad():
        z = model.latent(x)
        patches = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return patches[model.distances(z).permute(1, 0, 2, 3).flatten(1).argmin(1)]


def _wrong_residual(model, x):
    """Sign flipped: theta^T J_x h - grad_x f."""
    def jacobian(fn):
        return vmap(jacrev(lambda one: fn(one[None])[0]))(x)
    return model.relevances(x).transpose(1, 2) @ jacobian(model.concepts) - jacobian(model)


def _wrong_senn_loss(model, x, y, lam, xi, sparsity):
    """The sparsity term left out."""
    from xnn_lab.senn import robustness_loss
    out = model.explain(x)
    total = F.cross_entropy(out.logits, y)
    if model.learns_concepts:
        total = total + xi * F.mse_loss(out.reconstruction, x)
    return total + lam * robustness_loss(model, x) if lam > 0 else total


def _wrong_lipschitz(model, x, points):
    """The mean ratio instead of the largest."""
    batch, num, features = points.shape
    theta_x = model.relevances(x).flatten(1)
    theta_p = model.relevances(points.reshape(-1, features)).reshape(batch, num, -1)
    return ((theta_p - theta_x[:, None]).norm(dim=2) / (points - x[:, None]).norm(dim=2)).mean(1).detach()


def _wrong_intervene(model, x, true_concepts, which):
    """Batch statistics: the model left in train mode."""
    model.train()
    mask = torch.zeros(model.num_concepts, dtype=torch.bool)
    mask[list(which)] = True
    with torch.no_grad():
        return model.label_model(torch.where(mask, true_concepts, torch.sigmoid(model.concept_logits(x))))


def _wrong_curve(model, x, y, true_concepts, order):
    """The last point (every concept corrected) left out."""
    return [(model.intervene(x, true_concepts, order[:n]).argmax(1) != y).float().mean().item()
            for n in range(len(order))]


def _wrong_agreement(label_logits, concept_logits, class_attributes):
    """Any concept matching instead of all."""
    concepts = (concept_logits > 0).float()
    return float((concepts == class_attributes[label_logits.argmax(1)]).any(1).double().mean())


def _logreg_parts(X, y, theta, weight_decay):
    p = torch.sigmoid(X @ theta)
    G = (p - y)[:, None] * X
    H = (X.T * (p * (1 - p))) @ X / len(X) + weight_decay * torch.eye(len(theta), dtype=X.dtype)
    return G, H


def _wrong_influence(X, y, X_test, y_test, theta, weight_decay):
    """The factor 1/n left out."""
    G, H = _logreg_parts(X, y, theta, weight_decay)
    G_test, _ = _logreg_parts(X_test, y_test, theta, weight_decay)
    return G_test @ torch.linalg.solve(H, G.T)


def _wrong_self_influence(X, y, theta, weight_decay):
    """The Hessian without its weight decay."""
    G, H = _logreg_parts(X, y, theta, 0.0)
    return (G * torch.linalg.solve(H, G.T).T).sum(1) / len(X)


def _wrong_removal(X, y, theta, weight_decay, i):
    """Upweighting instead of removal: the step's sign flipped."""
    G, H = _logreg_parts(X, y, theta, weight_decay)
    return theta - torch.linalg.solve(H, G[i]) / len(X)


def _wrong_tracin(X, y, X_test, y_test, thetas, lrs):
    """The learning rates ignored."""
    total = 0.0
    for theta in thetas:
        G, _ = _logreg_parts(X, y, theta, 0.0)
        G_test, _ = _logreg_parts(X_test, y_test, theta, 0.0)
        total = total + G_test @ G.T
    return total


WRONG = {
    ("ch05_protopnet", "prototype_distances"): lambda model, z: model.distances(z).sqrt(),
    ("ch05_protopnet", "similarity_scores"): lambda model, z: model.similarity(model.distances(z).flatten(2).mean(2)),
    ("ch05_protopnet", "cluster_cost"): lambda model, x, y: _nearest(model, x).min(1).values.mean(),
    ("ch05_protopnet", "separation_cost"): lambda model, x, y: _nearest(model, x).masked_fill(
        model.prototype_classes[None] == y[:, None], float("inf")).min(1).values.mean(),
    ("ch05_protopnet", "wrong_class_l1"): lambda model: model.last_layer.weight.abs().sum(),
    ("ch05_protopnet", "push"): _wrong_push,
    ("ch05_protopnet", "HALF_SIMILARITY_DISTANCE"): 1e-4 ** 0.25,
    ("ch06_senn", "aggregate"): lambda concepts, relevances: relevances.sum(1),
    ("ch06_senn", "robustness_residual"): _wrong_residual,
    ("ch06_senn", "robustness_loss"): lambda model, x: _wrong_residual(model, x).flatten(1).pow(2).sum(1).mean(),
    ("ch06_senn", "senn_loss"): _wrong_senn_loss,
    ("ch06_senn", "lipschitz_by_sampling"): _wrong_lipschitz,
    ("ch06_senn", "TOP_FEATURE"): "mean radius",
    ("ch07_multitask", "joint_loss"): lambda outputs, targets, num_classes, weight: (
        F.cross_entropy(outputs[:, :num_classes], targets[:, 0].long())
        + weight * F.binary_cross_entropy_with_logits(outputs[:, num_classes:], targets[:, 1:])),
    ("ch07_multitask", "intervene"): _wrong_intervene,
    ("ch07_multitask", "intervention_curve"): _wrong_curve,
    ("ch07_multitask", "encode_ted"): lambda labels, explanations, E: explanations.long() * E + labels.long(),
    ("ch07_multitask", "decode_ted"): lambda classes, E: (classes % E, classes // E),
    ("ch07_multitask", "concept_label_agreement"): _wrong_agreement,
    ("ch07_multitask", "TRIVIAL_CONCEPT_ACCURACY"): 6 / 9,
    ("ch08_influential_instances", "logreg_gradients"): lambda X, y, theta: (y - torch.sigmoid(X @ theta))[:, None] * X,
    ("ch08_influential_instances", "logreg_hessian"): lambda X, y, theta, weight_decay: (
        _logreg_parts(X, y, theta, 0.0)[1]),
    ("ch08_influential_instances", "logreg_influence"): _wrong_influence,
    ("ch08_influential_instances", "logreg_self_influence"): _wrong_self_influence,
    ("ch08_influential_instances", "newton_removal"): _wrong_removal,
    ("ch08_influential_instances", "logreg_tracin"): _wrong_tracin,
    ("ch08_influential_instances", "THETA_HAT_1D"): 1.0,
    ("ch08_influential_instances", "MOST_HELPFUL"): 0,
}


def test_every_question_has_a_wrong_variant():
    assert set(WRONG) == {(module, question.name) for module, question in _all_questions()}


@pytest.mark.parametrize("item", _all_questions(), ids=_id)
def test_wrong_variant_fails(item):
    module, question = item
    wrong = WRONG[module, question.name]
    if question.inputs is None:
        assert _fails(question.compare, wrong, _expected_value(module, question.name))
        return
    failed = []
    for args in _trials(module, question.name, 0):
        try:
            result = _round_trip(wrong(*_fresh(args)))
            failed.append(_fails(question.compare, result, question.reference(*_fresh(args))))
        except (RuntimeError, ValueError, IndexError):
            failed.append(True)   # the grader scores an exception as a failure too
    assert any(failed), f"the wrong variant of {question.name} passed every trial"


# ----------------------------------------------------------------------------- (d) nbgrader metadata


@pytest.mark.parametrize("module", list(NOTEBOOKS))
def test_grade_ids_and_points_match_the_notebook(module):
    cells = {_nbgrader(cell).get("grade_id"): cell for cell in _notebook(module).cells if _nbgrader(cell)}
    questions = _questions(module)
    assert len({q.grade_id for q in questions}) == len(questions)
    for question in questions:
        solution = cells.get(question.grade_id)
        assert solution is not None and _nbgrader(solution)["solution"] is True, question.grade_id
        assert "### BEGIN SOLUTION" in solution.source and "### END SOLUTION" in solution.source
        defined = {node.name for node in ast.parse(solution.source).body if isinstance(node, ast.FunctionDef)}
        defined |= {target.id for node in ast.parse(solution.source).body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
        assert question.name in defined, f"cell {question.grade_id} does not define {question.name}"
        test = cells.get(f"{question.grade_id}_test")
        assert test is not None, f"no test cell {question.grade_id}_test"
        meta = _nbgrader(test)
        assert meta["grade"] is True and meta["locked"] is True and meta["solution"] is False
        assert meta["points"] == question.points, question.grade_id
    graded = [cell for cell in cells.values() if _nbgrader(cell).get("grade")]
    assert {_nbgrader(cell)["grade_id"] for cell in graded} == {f"{q.grade_id}_test" for q in questions}


@pytest.mark.parametrize("module", list(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(module):
    for cell in _notebook(module).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


# ----------------------------------------------------------------------------- the generated exercise


@pytest.mark.parametrize("module", list(NOTEBOOKS))
def test_exercise_version_answers_nothing(module):
    """nbgrader's ClearSolutions empties every solution region, and what is left answers no question."""
    ClearSolutions = pytest.importorskip("nbgrader.preprocessors").ClearSolutions
    exercise, _ = ClearSolutions().preprocess(copy.deepcopy(_notebook(module)), {})
    names = {q.name for q in _questions(module)}
    # The notebook's own helpers and data, without any answer.
    namespace = {k: v for k, v in _solution_namespace(module).items() if k not in names}
    for cell in exercise.cells:
        if not _nbgrader(cell).get("solution"):
            continue
        assert "raise NotImplementedError()" in cell.source and "SOLUTION" not in cell.source
        try:
            exec(cell.source, namespace)
        except NotImplementedError:
            pass   # a value question's cell: it stops before defining the value
    for question in _questions(module):
        if question.inputs is None:
            assert question.name not in namespace
            continue
        with pytest.raises(NotImplementedError):
            namespace[question.name](*_fresh(_trials(module, question.name, 0)[0]))


def test_push_reference_agrees_with_push_prototypes():
    """ch05's independent push equals ``xnn_lab.protopnet.push_prototypes`` (float32, which it supports)."""
    from xnn_lab.grading.questions.ch05_protopnet import pushed_prototypes
    from xnn_lab.protopnet import push_prototypes

    for seed in SEEDS:
        for model, images, labels in _trials("ch05_protopnet", "push", seed):
            model, images = copy.deepcopy(model).float(), images.float()
            expected = pushed_prototypes(model, images, labels)
            push_prototypes(model, (images, labels))
            torch.testing.assert_close(model.prototypes[:, :, 0, 0], expected, rtol=1e-5, atol=1e-6)
