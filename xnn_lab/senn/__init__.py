r"""Self-explaining neural networks (chapter 6): the model, its loss and its training.

A SENN predicts :math:`f_c(x) = \sum_i \theta_{ic}(x) h_i(x)`; its ``forward`` returns the logits
and ``explain(x)`` a :class:`SENNExplanation` (logits, concepts, relevances, reconstruction).
The robustness loss :math:`\mathcal{L}_\theta` is a batched Jacobian (``torch.func``);
``fit_senn`` trains on the SENN loss with ``xnn_lab.fit``. The stability of an explanation is
measured by ``xnn_lab.metrics.local_lipschitz``.
"""

from xnn_lab.senn.losses import SENNLoss, robustness_loss, robustness_residual, senn_loss
from xnn_lab.senn.model import SENN, SENNExplanation
from xnn_lab.senn.train import evaluate_senn, fit_senn

__all__ = ["SENN", "SENNExplanation", "SENNLoss", "evaluate_senn", "fit_senn", "robustness_loss",
           "robustness_residual", "senn_loss"]
