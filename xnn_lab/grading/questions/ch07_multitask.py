"""Graded questions of ``solutions/07_multitask.ipynb``: the joint loss, interventions, TED's classes.

References come from ``xnn_lab.concepts`` (``JointLoss``, ``ConceptBottleneck.intervene``,
``encode_ted``, ``decode_ted``); the intervention curve is a short composition of ``intervene``
here, and the agreement of a multitask model's labels with its own concepts a short independent
computation. Trials are fresh bottlenecks (tiny SmallCNN widths, small images) and random tensors.
"""

from __future__ import annotations

import torch

from xnn_lab.concepts import ConceptBottleneck, JointLoss, decode_ted, encode_ted
from xnn_lab.data import make_parts
from xnn_lab.grading.question import Question


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _size(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _joint_loss(outputs, targets, num_classes, concept_weight):
    return JointLoss(num_classes, concept_weight)(outputs, targets)


def _joint_loss_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 1)
    trials = []
    for weight in (0.0, 0.3 + torch.rand((), generator=generator).item(), 5.0):
        batch, classes, k = _size(generator, 1, 9), _size(generator, 2, 6), _size(generator, 1, 7)
        outputs = 3 * torch.randn(batch, classes + k, generator=generator)
        labels = torch.randint(0, classes, (batch, 1), generator=generator).float()
        concepts = torch.rand(batch, k, generator=generator)   # soft targets in [0, 1] are allowed too
        trials.append((outputs, torch.cat([labels, concepts], dim=1), classes, weight))
    return trials


def _random_bottleneck(generator: torch.Generator) -> tuple[ConceptBottleneck, torch.Tensor, torch.Tensor]:
    """A fresh bottleneck with random BatchNorm statistics, images and true 0/1 concepts."""
    classes, k, channels = _size(generator, 2, 5), _size(generator, 2, 6), _size(generator, 1, 3)
    hidden = () if _size(generator, 0, 1) else (_size(generator, 3, 8),)
    with torch.random.fork_rng(devices=[]):   # the initial weights, without touching the global generator
        torch.manual_seed(_size(generator, 0, 2**31 - 1))
        model = ConceptBottleneck(classes, k, in_channels=channels, widths=(4, 6), label_hidden=hidden)
    with torch.no_grad():
        # Non-trivial running statistics, so that batch statistics (train mode) give other outputs.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
        # Larger head weights than at initialisation, so that concepts and labels vary between images
        # and correcting a concept can change the label, as in a trained bottleneck.
        model.concept_model.classifier.weight.mul_(8.0)
        for layer in model.label_model:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(6.0)
    batch, side = _size(generator, 2, 7), _size(generator, 6, 12)
    # A brightness and a colour shift per image, so that the images' concepts differ.
    images = (torch.rand(batch, channels, side, side, generator=generator)
              * (0.2 + 2 * torch.rand(batch, 1, 1, 1, generator=generator))
              + torch.randn(batch, channels, 1, 1, generator=generator))
    concepts = torch.randint(0, 2, (batch, k), generator=generator).float()
    return model, images, concepts


def _intervene(model, x, true_concepts, which):
    return model.intervene(x, true_concepts, which)


def _intervene_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 2)
    trials = []
    for count in ("none", "some", "all"):
        model, images, concepts = _random_bottleneck(generator)
        k = model.num_concepts
        chosen = {"none": 0, "some": _size(generator, 1, k - 1), "all": k}[count]
        which = torch.randperm(k, generator=generator)[:chosen].tolist()
        trials.append((model, images, concepts, which))
    return trials


@torch.no_grad()
def intervention_curve(model, x, y, true_concepts, order) -> list[float]:
    """Task error after correcting the concepts ``order[:n]``, n = 0 .. len(order), via ``intervene``."""
    return [(model.intervene(x, true_concepts, order[:n]).argmax(1) != y).float().mean().item()
            for n in range(len(order) + 1)]


def _curve_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 3)
    trials = []
    for _ in range(3):
        model, images, concepts = _random_bottleneck(generator)
        labels = torch.randint(0, model.num_classes, (len(images),), generator=generator)
        order = torch.randperm(model.num_concepts, generator=generator).tolist()
        trials.append((model, images, labels, concepts, order))
    return trials


def _encode_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 4)
    trials = []
    for _ in range(3):
        n, classes, explanations = _size(generator, 1, 12), _size(generator, 2, 9), _size(generator, 1, 6)
        trials.append((torch.randint(0, classes, (n,), generator=generator),
                       torch.randint(0, explanations, (n,), generator=generator), explanations))
    return trials


def _decode_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 5)
    trials = []
    for _ in range(3):
        n, classes, explanations = _size(generator, 1, 12), _size(generator, 2, 9), _size(generator, 1, 6)
        trials.append((torch.randint(0, classes * explanations, (n,), generator=generator), explanations))
    return trials


def concept_label_agreement(label_logits: torch.Tensor, concept_logits: torch.Tensor,
                            class_attributes: torch.Tensor) -> float:
    """Share of inputs whose thresholded concepts (logit > 0) equal the attributes of their predicted class.

    Written here, independently of the solution: one comparison per (input, concept).
    """
    predicted = label_logits.argmax(dim=1)
    concepts = (concept_logits > 0).to(class_attributes.dtype)
    matches = (concepts == class_attributes[predicted]).all(dim=1)
    return float(matches.double().mean())


def _agreement_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 6)
    trials = []
    for _ in range(3):
        n, classes, k = _size(generator, 3, 20), _size(generator, 2, 6), _size(generator, 1, 4)
        class_attributes = torch.randint(0, 2, (classes, k), generator=generator).float()
        label_logits = torch.randn(n, classes, generator=generator)
        # Concept logits that mostly agree with the predicted class, so that both outcomes occur.
        agree = 2 * class_attributes[label_logits.argmax(1)] - 1
        noise = torch.randn(n, k, generator=generator)
        trials.append((label_logits, agree + 1.2 * noise, class_attributes))
    return trials


def trivial_concept_accuracy() -> float:
    """Concept accuracy of the predictor that says "absent" to every concept, on the chapter's quick test set."""
    test = make_parts(600, split="test", image_size=32, seed=0)
    return float(1 - test.attributes.double().mean())


QUESTIONS: tuple[Question, ...] = (
    Question("joint_loss", 2, "joint_loss", _joint_loss, _joint_loss_trials, forbidden=("xnn_lab.concepts.JointLoss",)),
    Question("intervene", 2, "intervene", _intervene, _intervene_trials,
             forbidden=("xnn_lab.concepts.ConceptBottleneck.intervene",)),
    Question("intervention_curve", 2, "intervention_curve", intervention_curve, _curve_trials),
    Question("encode_ted", 1, "encode_ted", encode_ted, _encode_trials, forbidden=("xnn_lab.concepts.encode_ted",)),
    Question("decode_ted", 1, "decode_ted", decode_ted, _decode_trials, forbidden=("xnn_lab.concepts.decode_ted",)),
    Question("concept_label_agreement", 1, "concept_label_agreement", concept_label_agreement, _agreement_trials),
    Question("trivial_concept_accuracy", 1, "TRIVIAL_CONCEPT_ACCURACY", trivial_concept_accuracy),
)
