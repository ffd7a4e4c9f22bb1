import gc
import tracemalloc

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from xnn_lab.cam import base as cam_module
from xnn_lab.cam import CAM, GradCAM, GradCAMPlusPlus, find_gap_head, normalize, retrain_gap_head
from xnn_lab.models import SmallCNN

EXPLAINERS = (CAM, GradCAM, GradCAMPlusPlus)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_cnn(seed=0, classes=5):
    torch.manual_seed(seed)
    model = SmallCNN(classes, widths=(4, 8)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from train mode
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def images(n=3, size=16, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hooks_of(model):
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]


def test_cam_is_the_relu_of_the_head_weighted_activations():
    model, x = small_cnn(), images()
    activations = model.features(x)
    expected = F.relu(torch.einsum("ck,bkhw->bchw", model.classifier.weight, activations))
    expected = F.interpolate(expected, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(CAM(model, "features")(x, "all"), expected)
    # and the linearity behind it: the class score is the spatial mean of the unclipped map plus the bias
    unclipped = torch.einsum("ck,bkhw->bchw", model.classifier.weight, activations)
    torch.testing.assert_close(unclipped.mean(dim=(-2, -1)) + model.classifier.bias, model(x))


def test_cam_equals_grad_cam_on_a_gap_network():
    """Grad-CAM paper, Sec. 3.1: with a GAP + linear head alpha_k^c = w_k^c / Z."""
    model, x = small_cnn(), images()
    target = torch.tensor([0, 2, 4])
    cam = CAM(model, model.features)(x, target)
    grad_cam = GradCAM(model, model.features)(x, target)
    z = model.features(x).shape[-1] * model.features(x).shape[-2]
    assert cam.gt(0).any()
    torch.testing.assert_close(grad_cam * z, cam, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normalize(grad_cam), normalize(cam), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def torchvision_models():
    torch.manual_seed(0)
    return {"resnet18": torchvision.models.resnet18(weights=None).eval(),
            "vgg11": torchvision.models.vgg11(weights=None).eval()}


@pytest.mark.parametrize("name, layer", [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),
    ("resnet18", "layer4.1.bn2"),  # followed by the in-place `out += identity` and ReLU(inplace=True)
    ("vgg11", "features.18"),      # the last conv, followed by ReLU(inplace=True)
])
def test_grad_cam_equals_captum_layer_grad_cam(torchvision_models, name, layer):
    model = torchvision_models[name]
    x = images(2, 64, seed=3)
    target = torch.tensor([3, 917])
    ours = GradCAM(model, layer)(x, target)
    theirs = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target, relu_attributions=True)
    theirs = LayerAttribution.interpolate(theirs, (64, 64), "bilinear")[:, 0]
    assert theirs.max() > 0
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-5


def test_in_place_relu_after_the_layer_does_not_change_the_maps():
    torch.manual_seed(0)
    in_place = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1),
                             nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x, target = images(), torch.tensor([0, 1, 3])
    # Truth by hand: the conv output as a leaf, the rest of the network applied to it.
    activations = in_place[0](x).detach().requires_grad_(True)
    score = in_place[1:](activations.clone()).gather(1, target[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, activations)
    expected = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1, keepdim=True))
    expected = F.interpolate(expected.detach(), size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert (activations < 0).any()  # the in-place ReLU would have changed them
    torch.testing.assert_close(GradCAM(in_place, "0")(x, target), expected)


def paper_grad_cam_plus_plus(head, activations, target):
    """Grad-CAM++ (eq. 10 of the paper) with Y^c = exp(S^c) and its derivatives taken by autograd."""
    def y(a):
        return torch.exp(head(a[None])[0, target])

    first = torch.func.jacrev(y)(activations)
    flat = activations.numel()
    second = torch.func.hessian(y)(activations).reshape(flat, flat).diagonal().reshape(activations.shape)
    third = torch.func.jacfwd(torch.func.hessian(y))(activations).reshape(flat, flat, flat)
    third = third[torch.arange(flat), torch.arange(flat), torch.arange(flat)].reshape(activations.shape)
    channel_sums = activations.sum(dim=(1, 2), keepdim=True)
    denominator = 2 * second + channel_sums * third
    alpha = torch.where(denominator != 0, second / denominator, 0.0)  # the paper's code: 0 where undefined
    weights = (alpha * F.relu(first)).sum(dim=(1, 2))
    return F.relu((weights[:, None, None] * activations).sum(0)), y(activations)


def test_grad_cam_plus_plus_equals_the_paper_with_autograd_higher_derivatives():
    torch.manual_seed(0)
    stem = nn.Conv2d(3, 3, 3, padding=1)
    head = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 3))
    model = nn.Sequential(stem, head).double().eval()
    x = images(2, 3, seed=5).double()
    target = torch.tensor([2, 0])
    maps = GradCAMPlusPlus(model, "0")(x, target)
    for b in range(2):
        activations = stem(x[b:b + 1])[0].detach()
        expected, y = paper_grad_cam_plus_plus(head, activations, int(target[b]))
        assert expected.max() > 0
        # the paper's weights carry the factor exp(S^c) that GradCAMPlusPlus leaves out
        expected = F.interpolate(expected[None, None] / y, size=(3, 3), mode="bilinear", align_corners=False)
        torch.testing.assert_close(maps[b], expected[0, 0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("explainer", EXPLAINERS, ids=lambda e: e.__name__)
def test_several_targets_equal_separate_calls(explainer):
    model, x = small_cnn(), images()
    explain = explainer(model, "features")
    targets = torch.tensor([[0, 3], [4, 4], [1, 2]])
    together = explain(x, targets)
    assert together.shape == (3, 2, 16, 16)
    for column in range(2):
        torch.testing.assert_close(together[:, column], explain(x, targets[:, column]))
    everything = explain(x, "all")
    for c in range(5):
        torch.testing.assert_close(everything[:, c], explain(x, c))
    result = explain.explain(x, topk=2)
    torch.testing.assert_close(result.targets, model(x).topk(2).indices)
    torch.testing.assert_close(result.maps, explain(x, result.targets))
    torch.testing.assert_close(explain(x), explain(x, model(x).argmax(1)))


def test_targets_split_into_several_backwards_give_the_same_maps(monkeypatch):
    model, x = small_cnn(), images()
    whole = GradCAMPlusPlus(model, "features")(x, "all")
    monkeypatch.setattr(cam_module, "_GRADIENT_ELEMENTS", 1)  # one target per backward
    torch.testing.assert_close(GradCAMPlusPlus(model, "features")(x, "all"), whole)


def test_batches_give_the_same_maps_as_one_pass():
    model, x = small_cnn(), images(5)
    target = torch.tensor([0, 1, 2, 3, 4])
    torch.testing.assert_close(GradCAM(model, "features", batch_size=2)(x, target),
                               GradCAM(model, "features")(x, target))


def test_modes_flags_and_gradients_are_left_as_they_were():
    model, x = small_cnn(), images()
    expected = GradCAM(model, "features")(x)
    model.train()
    model.features[1].eval()  # a mixed state must come back as it was
    model.classifier.weight.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    running_mean = model.features[1].running_mean.clone()
    with torch.no_grad():
        maps = GradCAM(model, "features")(x)
    with torch.inference_mode():
        in_inference = GradCAMPlusPlus(model, "features")(x)
    assert torch.is_grad_enabled()  # the caller's mode is back
    torch.testing.assert_close(maps, expected)  # computed in eval mode
    assert in_inference.shape == (3, 16, 16)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model.features[1].running_mean, running_mean)


def test_maps_are_non_negative_at_the_input_size():
    model, x = small_cnn(), images(2, 20)
    for explainer in EXPLAINERS:
        maps = explainer(model, "features")(x, "all")
        assert maps.shape == (2, 5, 20, 20) and maps.dtype == torch.float32
        assert (maps >= 0).all() and maps.gt(0).any()


def test_normalize_scales_each_map_to_unit_range():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    expected = torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(normalize(maps), expected)
    with pytest.raises(ValueError, match="maps must have at least 2 dimensions"):
        normalize(torch.rand(4))


def test_hooks_are_removed_after_an_exception():
    class Failing(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = small_cnn()
    model.classifier = nn.Sequential(Failing())
    with pytest.raises(ValueError, match="boom"):  # the model's error, reported as one about its input x
        GradCAM(model, "features")(images())
    assert hooks_of(model) == []
    with pytest.raises(ValueError, match="must output a"):
        GradCAM(small_cnn(), "classifier")(images())
    assert torch.is_grad_enabled()


def test_a_thousand_calls_leave_no_hooks_and_no_memory_growth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    x = torch.rand(2, 1, 6, 6)
    explainers = [GradCAM(model, "0"), GradCAMPlusPlus(model, "0"), CAM(model, "1")]

    def run(calls):
        for i in range(calls):
            explainers[i % 3](x, "all" if i % 2 else None)

    run(30)
    gc.collect()
    tensors_before = sum(type(o) is torch.Tensor for o in gc.get_objects())
    tracemalloc.start()
    snapshot = tracemalloc.take_snapshot()
    run(1000)
    gc.collect()
    growth = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(snapshot, "filename"))
    tracemalloc.stop()
    assert growth < 64 * 1024, growth
    assert sum(type(o) is torch.Tensor for o in gc.get_objects()) <= tensors_before
    assert hooks_of(model) == []
    assert all(p.grad is None for p in model.parameters())


def test_errors_name_the_problem():
    model, x = small_cnn(), images()
    with pytest.raises(ValueError, match="layer 'head' is not a submodule"):
        GradCAM(model, "head")
    with pytest.raises(ValueError, match="layer must be a submodule of model"):
        GradCAM(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="layer must be a submodule of model or its dotted name"):
        GradCAM(model, 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        GradCAM(lambda x: x, "features")
    with pytest.raises(ValueError, match=r"layer 'classifier' must output a \(3, K, h, w\) tensor, got shape \(3, 5\)"):
        GradCAM(model, "classifier")(x)
    with pytest.raises(ValueError, match=r"target must hold classes in \[0, 5\)"):
        GradCAM(model, "features")(x, 5)
    with pytest.raises(ValueError, match=r"target must hold classes in \[0, 5\)"):
        GradCAM(model, "features")(x, torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="target must be >= 0"):
        GradCAM(model, "features")(x, -1)
    with pytest.raises(ValueError, match=r"target must have one row per image \(3\)"):
        GradCAM(model, "features")(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        GradCAM(model, "features")(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="target must be an integer"):
        GradCAM(model, "features")(x, True)
    with pytest.raises(ValueError, match="target as a string must be 'all'"):
        GradCAM(model, "features")(x, "every")
    with pytest.raises(ValueError, match="pass either target or topk"):
        GradCAM(model, "features")(x, 1, topk=2)
    with pytest.raises(ValueError, match="topk must be <= 5"):
        GradCAM(model, "features")(x, topk=6)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        GradCAM(model, "features")(x[0])
    with pytest.raises(ValueError, match="did not run in the model's forward pass"):
        unused = small_cnn()
        unused.spare = nn.Conv2d(3, 3, 1)
        GradCAM(unused, "spare")(x)
    with pytest.raises(ValueError, match="ran more than once in one forward pass"):
        resnet = torchvision.models.resnet18(weights=None, num_classes=3)
        GradCAM(resnet, "layer1.0.relu")(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"model must return \(B, C\) class scores"):
        GradCAM(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()), "0")(x)


def test_cam_finds_gap_heads_and_refuses_others():
    model = small_cnn()
    assert find_gap_head(model) is model.classifier
    resnet = torchvision.models.resnet18(weights=None, num_classes=3)
    assert find_gap_head(resnet) is resnet.fc
    flat_head = nn.Sequential(model.features, nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    with pytest.raises(ValueError, match="CAM needs a model that ends in global average pooling"):
        CAM(flat_head, "0")
    with pytest.raises(ValueError, match="not the head applied to the spatial mean"):
        CAM(model, "features.4")(images())  # the conv before batch norm and ReLU: not what is pooled
    with pytest.raises(ValueError, match="has 4 channels but the head takes 8"):
        CAM(model, "features.0")(images())
    with pytest.raises(TypeError, match="head must be an nn.Linear"):
        CAM(model, "features", head=model.features)
    # with the head given, CAM works for a GAP network whose children it cannot read
    wrapped = nn.Sequential(model)
    torch.testing.assert_close(CAM(wrapped, "0.features", head=model.classifier)(images()),
                               CAM(model, "features")(images()))


def test_retrain_gap_head_trains_only_a_new_head_on_frozen_features():
    features = small_cnn().features
    x = images(64, 16, seed=4)
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 1].mean(dim=(1, 2))).long()  # a colour rule the features can carry
    state = {k: v.clone() for k, v in features.state_dict().items()}
    features[0].weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in features.named_parameters()}
    model, history = retrain_gap_head(features, (x, y), epochs=20, lr=0.05, seed=0)
    again, _ = retrain_gap_head(features, (x, y), epochs=20, lr=0.05, seed=0)
    for key, value in features.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert {name: p.requires_grad for name, p in features.named_parameters()} == flags
    assert model.features is features
    torch.testing.assert_close(model.classifier.weight, again.classifier.weight)
    assert history.train_loss[-1] < history.train_loss[0]
    expected = model.classifier(features(x).mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), expected)
    assert CAM(model, "features")(x[:2]).shape == (2, 16, 16)


@CUDA
@pytest.mark.parametrize("explainer", EXPLAINERS)
def test_cuda_maps_equal_the_cpu_maps_and_stay_on_the_device(explainer):
    model, x = small_cnn(), images(4, 32)
    expected = explainer(model, "features")(x, "all")
    # cuDNN's default TF32 convolutions round the activations themselves to ~1e-3: compare in full fp32.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        maps = explainer(model.cuda(), "features")(x.cuda(), "all")
    assert maps.device.type == "cuda"
    torch.testing.assert_close(maps.cpu(), expected, rtol=1e-4, atol=1e-5)


@CUDA
def test_a_thousand_cuda_calls_leave_no_hooks_and_no_gpu_memory_growth():
    model = torchvision.models.resnet18(weights=None, num_classes=10).cuda().eval()
    x = torch.rand(4, 3, 64, 64, device="cuda")
    explainers = [GradCAM(model, "layer4"), GradCAMPlusPlus(model, "layer3"), CAM(model, "layer4")]
    for i in range(30):
        explainers[i % 3](x, "all" if i % 2 else None)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i in range(1000):
        explainers[i % 3](x, "all" if i % 2 else None)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert hooks_of(model) == [] and all(p.grad is None for p in model.parameters())
