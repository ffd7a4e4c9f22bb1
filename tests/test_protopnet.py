import math
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import torchvision
from torch import nn

import xnn_lab.protopnet
from tests._state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab.bench import bench_protopnet
from xnn_lab.data import make_parts
from xnn_lab.models import SmallCNN
from xnn_lab.protopnet import (
    ProtoPNet,
    ProtoPNetExplanation,
    backbone_features,
    fit_protopnet,
    log_similarity,
    nearest_patches,
    part_purity,
    patch_parts,
    protopnet_loss,
    prune_prototypes,
    push_prototypes,
    random_patch_purity,
    receptive_field,
    top_prototypes,
    train_stage,
    wrong_class_l1,
)
from xnn_lab.viz import draw_patch, plot_prototype_explanations, plot_pushed_prototypes

matplotlib.use("Agg")

CLASSES, PER_CLASS = 3, 2


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return ProtoPNet(SmallCNN(CLASSES, widths=(4, 8)).features, CLASSES, prototypes_per_class=PER_CLASS,
                     prototype_dim=5).to(dtype)


def tiny_data(n=12, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator), torch.arange(n) % CLASSES


def brute_distances(z, prototypes):
    """(B, M, h, w) squared distances from explicit differences, not the expansion."""
    return ((z[:, None] - prototypes[None, :, :, 0, 0, None, None]) ** 2).sum(dim=2)


def test_architecture_follows_the_paper():
    model = tiny_model()
    assert model.prototypes.shape == (CLASSES * PER_CLASS, 5, 1, 1)
    assert isinstance(model.add_on[-1], nn.Sigmoid)
    assert all(m.kernel_size == (1, 1) for m in model.add_on if isinstance(m, nn.Conv2d))
    assert model.last_layer.bias is None
    expected = torch.full((CLASSES, CLASSES * PER_CLASS), -0.5)
    for j in range(CLASSES * PER_CLASS):
        expected[j // PER_CLASS, j] = 1.0
    assert torch.equal(model.last_layer.weight, expected)
    z = model.latent(tiny_data()[0])
    assert z.shape == (12, 5, 8, 8) and z.min() > 0 and z.max() < 1


def test_distances_and_similarities_match_the_slide_computed_patch_by_patch():
    model = tiny_model(dtype=torch.float64).eval()
    x = tiny_data()[0].double()
    out = model.explain(x)
    z = model.latent(x)
    brute = brute_distances(z, model.prototypes)
    assert torch.allclose(out.distances, brute, rtol=1e-10, atol=1e-12)
    # g = max over patches of log((d + 1) / (d + eps)), per patch, then the max.
    per_patch = torch.log((brute + 1) / (brute + model.epsilon))
    assert torch.allclose(out.similarities, per_patch.flatten(2).max(dim=2).values, rtol=1e-10)
    assert torch.allclose(out.logits, out.similarities @ model.last_layer.weight.T, rtol=1e-10)
    assert torch.equal(model(x), out.logits)


def test_explain_returns_the_logits_with_their_evidence():
    model = tiny_model(dtype=torch.float64).eval()
    x = tiny_data(n=4)[0].double()
    out = model.explain(x)
    assert isinstance(out, ProtoPNetExplanation)
    assert out.contributions.shape == (4, CLASSES, CLASSES * PER_CLASS)
    # Contribution of prototype j to class c: g_j W_cj; summed over j, the logit.
    assert torch.allclose(out.contributions, out.similarities[:, None, :] * model.last_layer.weight, rtol=0)
    assert torch.allclose(out.contributions.sum(-1), out.logits, rtol=1e-12)
    assert out.distances.shape == (4, CLASSES * PER_CLASS, 8, 8)
    assert torch.equal(out.min_distances, out.distances.flatten(2).min(2).values)


def _explain_forbidden(model):
    """Make ``model.explain`` (and ``from_latent``) fail: training must not use them as a forward pass."""
    def fail(*args, **kwargs):
        raise AssertionError("explain used as a plain forward pass")
    model.explain = fail
    model.from_latent = fail
    return model


@pytest.mark.parametrize("stage", ["warm_up", "joint", "last_layer"])
def test_training_and_loss_do_not_call_explain(stage):
    model = _explain_forbidden(tiny_model())
    x, y = tiny_data()
    model(x)
    protopnet_loss(model, x, y)
    train_stage(model, (x, y), stage, epochs=1, batch_size=6, device=torch.device("cpu"))


def test_log_similarity_is_decreasing_from_log_one_over_epsilon():
    d = torch.tensor([0.0, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    g = log_similarity(d, 1e-4)
    assert g[0] == pytest.approx(math.log(1e4)) and torch.all(g[1:] < g[:-1])
    assert g[-1] == pytest.approx(math.log(101 / 100.0001))


def test_loss_terms_match_their_definitions():
    model = tiny_model(dtype=torch.float64)       # in train mode: the loss is measured in eval mode
    x, y = tiny_data()
    x = x.double()
    loss = protopnet_loss(model, x, y, clst=0.8, sep=0.08, l1=1e-4)
    assert model.training
    model.eval()
    min_d = brute_distances(model.latent(x), model.prototypes).flatten(2).min(dim=2).values
    classes = model.prototype_classes.tolist()
    clst = sum(min(min_d[i, j] for j in range(len(classes)) if classes[j] == y[i]) for i in range(len(y))) / len(y)
    sep = -sum(min(min_d[i, j] for j in range(len(classes)) if classes[j] != y[i]) for i in range(len(y))) / len(y)
    wrong = sum(abs(model.last_layer.weight[c, j]) for c in range(CLASSES) for j in range(len(classes))
                if classes[j] != c)
    assert loss.cluster.item() == pytest.approx(clst.item(), rel=1e-9)
    assert loss.separation.item() == pytest.approx(sep.item(), rel=1e-9)
    assert loss.l1.item() == pytest.approx(wrong.item()) == pytest.approx(0.5 * (CLASSES - 1) * len(classes))
    ce = nn.functional.cross_entropy(model(x), y)
    assert loss.total.item() == pytest.approx((ce + 0.8 * clst + 0.08 * sep + 1e-4 * wrong).item(), rel=1e-9)


def _snapshot(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("stage, trains", [("warm_up", {"add_on", "prototypes"}),
                                           ("joint", {"features", "add_on", "prototypes"}),
                                           ("last_layer", {"last_layer"})])
def test_each_stage_trains_only_its_parameters_and_restores_flags(stage, trains):
    model = tiny_model()
    x, y = tiny_data()
    model.add_on[0].weight.requires_grad_(False)   # a user's flag, to be restored
    before = _snapshot(model)
    history = train_stage(model, (x, y), stage, epochs=2, batch_size=4, device=torch.device("cpu"))
    changed = {name.split(".")[0] for name in _changed(before, model)}
    assert changed == trains
    assert not model.training and not model.add_on[0].weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "add_on.0.weight")
    assert len(history.train_loss) == len(history.train_acc) == 2
    assert len(history["cross_entropy"]) == len(history["l1"]) == 2
    # Cluster and separation are constants in the last-layer stage, not part of its loss: NaN there.
    constant = [math.isnan(v) for v in history["cluster"] + history["separation"]]
    assert constant == [stage == "last_layer"] * 4
    cluster = history["cluster"] if stage != "last_layer" else [0.0, 0.0]
    separation = history["separation"] if stage != "last_layer" else [0.0, 0.0]
    # The recorded loss is the sum of its weighted terms, epoch by epoch.
    for epoch in range(2):
        total = (history["cross_entropy"][epoch] + 0.8 * cluster[epoch] + 0.08 * separation[epoch]
                 + 1e-4 * history["l1"][epoch])
        assert history.train_loss[epoch] == pytest.approx(total, rel=1e-6)


def test_warm_up_keeps_the_backbone_in_eval_mode():
    model = tiny_model()
    x, y = tiny_data()
    model.train()
    stats = model.features[1].running_mean.clone()
    seen = []
    model.features.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    train_stage(model, (x, y), "warm_up", epochs=2, batch_size=4, device=torch.device("cpu"))
    assert seen and not any(seen)
    assert torch.equal(model.features[1].running_mean, stats)


def test_last_layer_stage_shrinks_the_wrong_class_weights():
    model = tiny_model()
    x, y = tiny_data()
    start = wrong_class_l1(model).item()
    train_stage(model, (x, y), "last_layer", epochs=30, lr=1e-2, l1=1.0, batch_size=12, device=torch.device("cpu"))
    assert wrong_class_l1(model).item() < 0.5 * start


def test_push_replaces_each_prototype_by_its_nearest_own_class_training_patch_exactly():
    model = tiny_model()
    x, y = tiny_data(n=15)
    old = model.prototypes.detach().clone()
    result = push_prototypes(model, (x, y), batch_size=len(x))
    with torch.no_grad():
        z = model.eval().latent(x)                            # the same single batch as the push
        brute = brute_distances(z, old)
    for j in range(model.num_prototypes):
        image, (row, col) = result.image_index[j].item(), result.cells[j].tolist()
        assert y[image] == model.prototype_classes[j]
        assert torch.equal(model.prototypes[j, :, 0, 0], z[image, :, row, col])
        own = brute[y == model.prototype_classes[j], j]
        assert result.moved[j].item() == pytest.approx(own.min().item(), rel=1e-5)
        assert result.activation_maps[j, row, col].item() == pytest.approx(math.log(1 / model.epsilon))
    # Batches of 4 find the same patches: the running minimum is the minimum over all of the data.
    again = tiny_model()
    batched = push_prototypes(again, (x, y), batch_size=4)
    assert torch.equal(batched.image_index, result.image_index) and torch.equal(batched.cells, result.cells)
    assert torch.allclose(again.prototypes, model.prototypes, atol=1e-6)


def test_push_and_nearest_patches_keep_float64():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_data(n=9)
    x = x.double()
    result = push_prototypes(model, (x, y), batch_size=4)
    z = model.eval().latent(x)
    rows, cols = result.cells.unbind(1)
    assert model.prototypes.dtype == torch.float64
    assert torch.equal(model.prototypes[:, :, 0, 0], z[result.image_index, :, rows, cols])
    assert nearest_patches(model, (x, y), k=2).distances.dtype == torch.float64


def test_push_needs_every_class():
    x, y = tiny_data()
    with pytest.raises(ValueError, match="every class"):
        push_prototypes(tiny_model(), (x[y != 1], y[y != 1]))


def test_top_prototypes_contributions_add_up_to_the_logits():
    model = tiny_model()
    x, _ = tiny_data(n=4)
    explanation = top_prototypes(model, x, top=3)
    assert torch.allclose(explanation.contributions.sum(dim=1),
                          explanation.logits.gather(1, explanation.target[:, None])[:, 0], atol=1e-5)
    assert torch.equal(explanation.target, explanation.logits.argmax(1))
    assert torch.allclose(explanation.similarities * explanation.weights,
                          explanation.contributions.gather(1, explanation.prototypes))
    assert torch.all(explanation.similarities * explanation.weights >= explanation.contributions.min(1, True).values)
    out = model.eval().explain(x)
    d = out.distances[torch.arange(4)[:, None], explanation.prototypes]
    rows, cols = explanation.cells.unbind(-1)
    best = d[torch.arange(4)[:, None], torch.arange(3)[None], rows, cols]
    assert torch.allclose(best, d.flatten(2).min(dim=2).values)
    assert torch.equal(explanation.contributions, out.contributions[torch.arange(4), explanation.target])
    chosen = top_prototypes(model, x, target=torch.tensor([2, 2, 0, 1]), top=1)
    assert torch.equal(chosen.target, torch.tensor([2, 2, 0, 1]))
    with pytest.raises(ValueError, match="target"):
        top_prototypes(model, x, target=torch.tensor([0, 1, 2, 3]))


def _linearised(module: nn.Module) -> nn.Module:
    """ReLUs removed and max pooling replaced by average pooling of the same geometry, in place:
    every pixel in a cell's receptive field then reaches it through a non-zero gradient."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        else:
            _linearised(child)
    return module


def _gradient_box(features, size, row, col):
    x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = features(x)
    (grad,) = torch.autograd.grad((out[0, :, row, col] * torch.rand(out.shape[1], dtype=torch.float64)).sum(), x)
    rows, cols = (grad[0].abs().sum(0) > 0).nonzero().unbind(1)
    return [rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1]


@pytest.mark.parametrize("backbone, size", [("small", 32), ("resnet", 128)])
def test_receptive_field_arithmetic_matches_the_gradient_support(backbone, size):
    torch.manual_seed(0)
    if backbone == "small":
        features = SmallCNN(3, widths=(4, 6, 8)).features
    else:
        resnet = torchvision.models.resnet18(weights=None)
        features = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2)
    field = receptive_field(features)
    linear = _linearised(features).double().eval()
    grid = linear(torch.zeros(1, 3, size, size, dtype=torch.float64)).shape[-1]
    for row, col in [(0, 0), (grid // 2, grid // 2 - 1), (grid - 1, 1)]:
        box = field.boxes(torch.tensor([row, col]), (size, size)).tolist()
        assert box == _gradient_box(linear, size, row, col), (row, col)
    expected = {"small": (18, 4), "resnet": (99, 8)}[backbone]   # 7 + 2*2 + 4*2*4 + 2*4 + 2*8 + 2*2*8
    assert (field.size[0], field.jump[0]) == expected


def test_backbone_features_of_smallcnn_and_resnet():
    cnn = SmallCNN(4, widths=(4, 8))
    assert backbone_features(cnn) is cnn.features
    resnet = backbone_features(torchvision.models.resnet18(weights=None))
    model = ProtoPNet(resnet, 4, prototypes_per_class=1, prototype_dim=8)
    assert model.add_on[0].in_channels == 512
    assert model.latent(torch.rand(1, 3, 64, 64)).shape == (1, 8, 2, 2)
    assert model.receptive_field().jump == (32, 32)
    with pytest.raises(ValueError, match="'features' module"):
        backbone_features(nn.Linear(2, 2))


def test_nearest_patches_and_pruning_match_brute_force():
    model = tiny_model()
    x, y = tiny_data(n=15)
    with torch.no_grad():
        per_image = model.eval().explain(x).min_distances.T                     # (M, N)
    nearest = nearest_patches(model, (x, y), k=4, batch_size=4)
    assert torch.equal(nearest.image_index, per_image.topk(4, dim=1, largest=False).indices)
    assert torch.allclose(nearest.distances, per_image.topk(4, dim=1, largest=False).values, atol=1e-6)
    assert torch.equal(nearest.labels, y[nearest.image_index])
    own = (nearest.labels == model.prototype_classes[:, None]).sum(1)
    expected = own >= 2
    for c in range(CLASSES):          # a class keeps its best prototype when all would go
        members = (model.prototype_classes == c).nonzero().flatten()
        if not expected[members].any():
            expected[members[own[members].argmax()]] = True
    keep = prune_prototypes(model, (x, y), k=4, min_own=2, batch_size=4)
    assert torch.equal(keep, expected)
    assert model.num_prototypes == int(expected.sum()) == model.last_layer.weight.shape[1]
    assert model(x).shape == (15, CLASSES)


def test_patch_parts_against_explicit_footprints():
    field = receptive_field(SmallCNN(3, widths=(4, 6, 8)).features)   # jump 4, centres 1.5 + 4 r
    masks = torch.zeros(2, 3, 32, 32, dtype=torch.bool)
    masks[0, 1, 4:8, 8:12] = True            # exactly the footprint of cell (1, 2)
    masks[0, 2, 4:5, 12:16] = True           # a quarter of cell (1, 3)'s footprint
    masks[1, 0, 0:3, 0:4] = True             # three quarters of cell (0, 0)
    masks[1, 2, 3:4, 0:4] = True             # and one quarter of it
    parts = patch_parts(masks, field, (8, 8), min_share=0.25)
    expected = torch.full((2, 8, 8), -1)
    expected[0, 1, 2], expected[0, 1, 3], expected[1, 0, 0] = 1, 2, 0
    assert torch.equal(parts, expected)
    assert patch_parts(masks, field, (8, 8), min_share=0.5)[0, 1, 3] == -1


def test_part_purity_counts_the_nearest_patches_parts():
    model = tiny_model()
    x, y = tiny_data(n=10)
    masks = torch.zeros(10, 3, 16, 16, dtype=torch.bool)
    masks[:, 0, :, :8] = True                  # left half: part 0
    masks[:5, 1, :, 8:] = True                 # right half of the first five images: part 1
    purity = part_purity(model, (x, y), masks, k=4)
    cols, images = purity.nearest.cells[..., 1], purity.nearest.image_index
    expected = torch.where(cols < 4, 0, torch.where(images < 5, 1, -1))  # cell c covers pixels 2c, 2c + 1
    assert torch.equal(purity.parts, expected)
    shares = torch.stack([(expected == p).float().mean(1) for p in range(3)], dim=1)
    assert torch.allclose(purity.purity, shares.max(1).values)
    chance = random_patch_purity(masks, model.receptive_field(), (8, 8), k=4, groups=50, seed=1)
    assert torch.equal(chance, random_patch_purity(masks, model.receptive_field(), (8, 8), k=4, groups=50, seed=1))
    assert chance.shape == (50,) and chance.min() >= 0.25 and chance.max() <= 1


def test_fit_protopnet_runs_every_stage_on_parts():
    parts = make_parts(48, image_size=32, seed=0)
    torch.manual_seed(0)
    model = ProtoPNet(SmallCNN(8, widths=(4, 8)).features, 8, prototypes_per_class=1, prototype_dim=8)
    run = fit_protopnet(model, parts, warm_epochs=1, joint_epochs=1, last_epochs=2, device=torch.device("cpu"))
    assert list(run.accuracy) == ["warm_up", "joint", "push", "last_layer"]
    assert set(run.histories) == {"warm_up", "joint", "last_layer"}
    assert [len(run.histories[stage].train_loss) for stage in ("warm_up", "joint", "last_layer")] == [1, 1, 2]
    assert torch.equal(parts.labels[run.push.image_index], model.prototype_classes)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="epsilon must be < 1"):
        ProtoPNet(SmallCNN(3, widths=(4,)).features, 3, epsilon=1.0)
    with pytest.raises(TypeError, match="features must be a torch.nn.Module"):
        ProtoPNet("resnet", 3)
    model = tiny_model()
    x, y = tiny_data()
    with pytest.raises(ValueError, match="stage must be one of"):
        train_stage(model, (x, y), "push", epochs=1)
    with pytest.raises(ValueError, match="clst must be >= 0"):
        protopnet_loss(model, x, y, clst=-1.0)
    with pytest.raises(ValueError, match="x must have 3 channels"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="keep must leave every class"):
        model.keep_prototypes(model.prototype_classes != 0)
    with pytest.raises(TypeError, match="model must be an xnn_lab.protopnet.ProtoPNet"):
        push_prototypes(SmallCNN(3), (x, y))


def test_bench_protopnet_prints_epoch_and_push_times(capsys):
    result = bench_protopnet(n=32, image_size=32, prototypes_per_class=1, batch_size=16, repeats=1, device="cpu")
    out = capsys.readouterr().out
    assert "bench protopnet: SmallCNN backbone on cpu, 32 Parts training images, 32x32" in out
    assert re.search(r"push / epoch: [\d.]+", out)
    assert result["push/epoch"] == pytest.approx(result["push_s"] / result["epoch_s"])


# --- The state test: no public function moves the model, changes its modes or flags, or leaves
# gradients in it, unless that is its stated purpose (training; the push and pruning change
# the prototypes, and pruning the last layer, but nothing else).

def _mixed_model():
    model = mix_states(tiny_model())
    # Flags that differ from a fresh module's and parameter's defaults, where pruning replaces them.
    model.last_layer.eval()
    model.prototypes.requires_grad_(False)
    model.last_layer.weight.requires_grad_(False)
    return model


def _not_moved(model):
    """Make ``model.to`` fail: a function that is not a trainer must compute on the model's device."""
    def fail(*args, **kwargs):
        raise AssertionError("the caller's model was moved")
    model.to = fail
    return model


def _assert_only_changed(model, before, changed):
    """Modes, flags, gradients and devices as before; values too, except the parameters in ``changed``."""
    after = snapshot(model)
    assert after["modes"] == before["modes"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["grads"] == before["grads"] and all(after["grads"]), "gradients left in the model"
    assert after["devices"] == before["devices"], "the model was moved"
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    for name, old, new in zip(names, before["values"], after["values"]):
        if name not in changed:
            assert torch.equal(old, new), f"{name} changed"


def _data():
    return tiny_data(n=15)


def _masks(n=15):
    masks = torch.zeros(n, 3, 16, 16, dtype=torch.bool)
    masks[:, 0, :, :8] = True
    return masks


STATE_CALLS = {
    "backbone_features": lambda model: backbone_features(model),
    "wrong_class_l1": lambda model: wrong_class_l1(model),
    "protopnet_loss": lambda model: protopnet_loss(model, *_data()),
    "top_prototypes": lambda model: top_prototypes(model, _data()[0][:4], top=2),
    "nearest_patches": lambda model: nearest_patches(model, _data(), k=3, batch_size=4),
    "part_purity": lambda model: part_purity(model, _data(), _masks(), k=3, batch_size=4),
}
TRAINERS = {
    "train_stage": lambda model: train_stage(model, _data(), "joint", epochs=1, batch_size=4,
                                             device=torch.device("cpu")),
    "fit_protopnet": lambda model: fit_protopnet(model, _data(), warm_epochs=1, joint_epochs=1, last_epochs=1,
                                                 batch_size=4, device=torch.device("cpu")),
}
CHANGERS = {   # what each may change, as its docstring states
    "push_prototypes": (lambda model: push_prototypes(model, _data(), batch_size=4), {"prototypes"}),
    "prune_prototypes": (lambda model: prune_prototypes(model, _data(), k=4, min_own=2, batch_size=4),
                         {"prototypes", "last_layer.weight", "prototype_classes"}),
}


@pytest.mark.parametrize("name", sorted(STATE_CALLS))
def test_state_is_kept(name):
    model = _mixed_model()
    if name == "backbone_features":
        model = mix_states(SmallCNN(3, widths=(4, 8)))
    before = snapshot(model)
    STATE_CALLS[name](_not_moved(model))
    assert_state_kept(model, before)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainers_give_back_flags_and_gradients(name):
    model = _mixed_model()
    before = snapshot(model)
    TRAINERS[name](model)
    assert_state_kept(model, before, trains=True)


@pytest.mark.parametrize("name", sorted(CHANGERS))
def test_push_and_pruning_change_only_what_they_state(name):
    model = _mixed_model()
    before = snapshot(model)
    call, changed = CHANGERS[name]
    call(_not_moved(model))
    _assert_only_changed(model, before, changed)
    assert not torch.equal(before["values"][10], model.prototypes.detach())   # they did change them


def test_state_test_covers_every_public_function_taking_a_model():
    covered = set(STATE_CALLS) | set(TRAINERS) | set(CHANGERS)
    assert covered == public_api_taking_a_model(xnn_lab.protopnet)


# --- Figures.

def _title_fits(fig):
    """Every title at least 9 points and no wider than its panel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [(ax, ax.title) for ax in fig.axes if ax.get_title()]
    assert titles
    for ax, title in titles:
        assert title.get_fontsize() >= 9
        assert title.get_window_extent(renderer).width <= 1.05 * ax.get_window_extent(renderer).width, \
            title.get_text()


def _pushed():
    model = tiny_model()
    x, y = tiny_data(n=15)
    return model, x, y, push_prototypes(model, (x, y), batch_size=8)


def test_pushed_prototype_gallery_is_readable_and_shows_each_source():
    model, x, _, push = _pushed()
    captions = ["a caption long enough to need wrapping" if j == 0 else "head" for j in range(model.num_prototypes)]
    fig = plot_pushed_prototypes(push, x, model.prototype_classes, field=model.receptive_field(), captions=captions)
    try:
        assert fig.get_figwidth() <= 7.5     # the page width: shown at full size, titles readable
        _title_fits(fig)
        # One class per row, source and similarity map side by side.
        titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
        assert titles[0] == "p0, class 0" and titles[2 * PER_CLASS] == "p2, class 1"
        assert "\n" in fig.axes[1].get_title()
        shown = fig.axes[2 * 3].images[0].get_array()
        assert torch.allclose(torch.as_tensor(shown.data).permute(2, 0, 1), x[push.image_index[3]])
        assert len(fig.axes[0].patches) == 2     # receptive field and footprint
    finally:
        plt.close(fig)


def test_prototype_explanations_show_this_and_that():
    model, x, _, push = _pushed()
    explanation = top_prototypes(model, x[:2], top=3)
    fig = plot_prototype_explanations(x[:2], explanation, push, x, model.prototype_classes,
                                      field=model.receptive_field(), labels=torch.tensor([0, 1]))
    try:
        assert fig.get_figwidth() <= 7.5     # the page width: shown at full size, titles readable
        _title_fits(fig)
        assert len(fig.axes) == 2 * 7
        j = explanation.prototypes[1, 2].item()
        that = fig.axes[7 + 6]
        assert that.get_title() == f"that: p{j}\nclass {model.prototype_classes[j].item()}"
        shown = torch.as_tensor(that.images[0].get_array().data).permute(2, 0, 1)
        assert torch.allclose(shown, x[push.image_index[j]])
        assert fig.axes[7].get_title().replace("\n", " ").startswith("true 1, predicted")
    finally:
        plt.close(fig)


def test_draw_patch_marks_the_box_and_the_footprint():
    field = receptive_field(SmallCNN(3, widths=(4, 6, 8)).features)   # jump 4, centres 1.5 + 4 r
    fig, ax = plt.subplots()
    try:
        draw_patch(ax, torch.tensor([0, 2, 7, 12]), cell=torch.tensor([1, 2]), field=field)
        box, footprint = ax.patches
        assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (1.5, -0.5, 10, 7)
        assert (footprint.get_x(), footprint.get_y(), footprint.get_width()) == (7.5, 3.5, 4)
    finally:
        plt.close(fig)


def test_figure_arguments_are_checked():
    model, x, _, push = _pushed()
    with pytest.raises(ValueError, match="prototype_classes must give the class of each of the 6"):
        plot_pushed_prototypes(push, x, model.prototype_classes[:4])
    with pytest.raises(ValueError, match="captions must give one caption per prototype"):
        plot_pushed_prototypes(push, x, model.prototype_classes, captions=["head"])
    with pytest.raises(ValueError, match="source_images must be the images the push ran on"):
        plot_pushed_prototypes(push, x[:2], model.prototype_classes)
    explanation = top_prototypes(model, x[:2], top=2)
    with pytest.raises(ValueError, match="images must be the 2 explained images"):
        plot_prototype_explanations(x[:3], explanation, push, x, model.prototype_classes)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        plot_prototype_explanations(x[:2], explanation, push, x, model.prototype_classes, labels=torch.tensor([1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_functions_compute_on_the_models_device_and_leave_it_there():
    model = tiny_model().cuda().eval()
    x, y = tiny_data(n=15)                          # on the CPU
    explanation = top_prototypes(model, x[:4])
    assert explanation.logits.device.type == "cpu"
    nearest = nearest_patches(model, (x, y), k=3)
    purity = part_purity(model, (x, y), _masks(), k=3)
    push = push_prototypes(model, (x, y))
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert nearest.image_index.device.type == push.image_index.device.type == "cuda"
    assert purity.purity.shape == (model.num_prototypes,)
    fig = plot_prototype_explanations(x[:4].cuda(), top_prototypes(model, x[:4].cuda()), push, x.cuda(),
                                      model.prototype_classes, field=model.receptive_field())
    plt.close(fig)


def test_last_layer_stage_centres_the_wrong_class_weights_without_changing_probabilities():
    from xnn_lab.protopnet.train import _center_wrong_class_weights
    model = tiny_model()
    x, y = tiny_data()
    with torch.no_grad():
        noise = torch.randn(model.last_layer.weight.shape, generator=torch.Generator().manual_seed(0))
        model.last_layer.weight.add_(noise)
        before = model(x).softmax(1)
    l1_before = wrong_class_l1(model).item()
    shift = _center_wrong_class_weights(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x).softmax(1), before, rtol=0, atol=1e-6)
    assert shift.shape == (model.num_prototypes,) and wrong_class_l1(model).item() <= l1_before
    train_stage(model, (x, y), "last_layer", epochs=3, batch_size=4, device=torch.device("cpu"))
    wrong = (1 - model.class_identity().T).bool()
    medians = model.last_layer.weight.detach().masked_fill(~wrong, float("nan")).nanmedian(dim=0).values
    assert medians.abs().max() < 1e-6
