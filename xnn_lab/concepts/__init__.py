"""Chapter 7, multi-task learning for explainability: concept bottlenecks, a multitask CNN, TED.

A self-explaining model here returns its label logits from ``forward`` and, from ``explain(x)``,
one named result with ``.logits`` and its evidence: the predicted concepts (``ConceptExplanation``)
or TED's decoded label and explanation id (``TEDExplanation``). All train on ``xnn_lab.fit``.
"""

from xnn_lab.concepts.models import ConceptBottleneck, ConceptExplanation, MultitaskCNN, concept_mask
from xnn_lab.concepts.ted import TEDClassifier, TEDExplanation, decode_ted, encode_ted
from xnn_lab.concepts.train import BOTTLENECK_MODES, JointLoss, joint_objective, joint_targets, train_bottleneck

__all__ = ["BOTTLENECK_MODES", "ConceptBottleneck", "ConceptExplanation", "JointLoss", "MultitaskCNN",
           "TEDClassifier", "TEDExplanation", "concept_mask", "decode_ted", "encode_ted", "joint_objective",
           "joint_targets", "train_bottleneck"]
