"""ProtoPNet ("this looks like that", chapter 5): the model, its loss and training stages, the push,
pruning, the prototypes behind a prediction, and part purity against ground-truth parts.

``ProtoPNet.explain(x)`` returns the logits with their evidence (:class:`ProtoPNetExplanation`);
its forward pass returns the logits. The figures live in :mod:`xnn_lab.viz`.
"""

from xnn_lab.protopnet.explain import (
    PartPurity,
    TopPrototypes,
    part_purity,
    patch_parts,
    random_patch_purity,
    top_prototypes,
)
from xnn_lab.protopnet.model import (
    ProtoPNet,
    ProtoPNetExplanation,
    ReceptiveField,
    backbone_features,
    log_similarity,
    receptive_field,
)
from xnn_lab.protopnet.push import NearestPatches, PushResult, nearest_patches, prune_prototypes, push_prototypes
from xnn_lab.protopnet.train import (
    STAGES,
    ProtoPNetLoss,
    ProtoPNetRun,
    fit_protopnet,
    protopnet_loss,
    train_stage,
    wrong_class_l1,
)

__all__ = [
    "STAGES", "NearestPatches", "PartPurity", "ProtoPNet", "ProtoPNetExplanation", "ProtoPNetLoss", "ProtoPNetRun",
    "PushResult", "ReceptiveField", "TopPrototypes", "backbone_features", "fit_protopnet", "log_similarity",
    "nearest_patches", "part_purity", "patch_parts", "protopnet_loss", "prune_prototypes", "push_prototypes",
    "random_patch_purity", "receptive_field", "top_prototypes", "train_stage", "wrong_class_l1",
]
