"""Influence functions (Koh and Liang, 2017), leave-one-out ground truth, and TracIn.

In the lecture's notation the training points are :math:`z_i = (x_i, y_i)`, :math:`i = 1..n`,
:math:`L(z, \\theta)` is the loss of one example, and the model is trained to the minimiser
:math:`\\hat\\theta` of

.. math:: R(\\theta) = \\frac{1}{n} \\sum_i L(z_i, \\theta) + \\frac{\\lambda}{2} \\lVert\\theta\\rVert^2 .

Upweighting a point :math:`z` by :math:`\\epsilon` (adding :math:`\\epsilon L(z, \\theta)` to
:math:`R`) moves the minimiser by :math:`d\\hat\\theta / d\\epsilon = -H^{-1} \\nabla L(z, \\hat\\theta)`,
where :math:`H = \\nabla^2 R(\\hat\\theta)` (plus :math:`\\delta I` when damped). Removing
:math:`z_i` is :math:`\\epsilon = -1/n`, so a test loss changes by about

.. math:: L(z_{test}, \\hat\\theta_{-i}) - L(z_{test}, \\hat\\theta) \\approx
   \\frac{1}{n} \\nabla L(z_{test}, \\hat\\theta)^\\top H^{-1} \\nabla L(z_i, \\hat\\theta),

which is what ``influence`` returns: positive for a *helpful* training point (removing it raises
the test loss), negative for a harmful one. ``leave_one_out`` measures the left-hand side by
retraining, and ``tracin`` is the checkpoint-based alternative of Pruthi et al. (2020).

Data are ``(X, y)`` tensor pairs or datasets (``.tensors`` is used when present); ``loss_fn(output,
y)`` must return one loss per example (``reduction='none'``). ``params`` selects which parameters
:math:`\\theta` holds: ``None`` for every trainable parameter, or names (a parameter's name as in
``model.named_parameters()``, or a module's name for all of its parameters, e.g. ``"2"`` for the
last layer of ``nn.Sequential(Linear, ReLU, Linear)``) or the parameter tensors themselves; the
others stay fixed. :math:`\\theta` is flattened in the order of ``model.named_parameters()``.

Every function evaluates the model in eval mode (dropout off, batch norm on its running
statistics) and gives each module back its own mode afterwards; none moves the model (the data go
to its device) or leaves gradients in it. Only ``train_to_optimum`` changes the model: it writes
the minimiser into the chosen parameters. ``leave_one_out`` retrains copies of the parameters.

The modules: ``functions`` (gradients, Hessian, influence and self-influence, and the
inverse-HVP solvers), ``retrain`` (``train_to_optimum``, ``leave_one_out``) and ``checkpoints`` (TracIn).
"""

from xnn_lab.influence._objective import EXACT_MAX_PARAMS
from xnn_lab.influence.functions import (METHODS, hessian, influence, per_example_gradients,
                                         self_influence)
from xnn_lab.influence.retrain import SOLVERS, leave_one_out, train_to_optimum
from xnn_lab.influence.checkpoints import tracin, tracin_self_influence

__all__ = ["EXACT_MAX_PARAMS", "METHODS", "SOLVERS", "hessian", "influence", "leave_one_out",
           "per_example_gradients", "self_influence", "tracin", "tracin_self_influence",
           "train_to_optimum"]
