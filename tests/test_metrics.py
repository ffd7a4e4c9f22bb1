import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from xnn_lab.cam import GradCAM
from xnn_lab.metrics import (
    area_under_curve,
    centre_maps,
    deletion_curve,
    energy_pointing_game,
    insertion_curve,
    local_lipschitz,
    mass_in_mask,
    pointing_game,
    random_maps,
    randomization_sanity_check,
    rank_correlation,
    saliency_ranks,
)



def test_mass_in_mask_matches_a_per_pixel_sum():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 8, 8, generator=g)
    masks = torch.rand(3, 8, 8, generator=g) > 0.7
    got = mass_in_mask(maps, masks)
    for b in range(3):
        pos = [max(float(v), 0.0) for v in maps[b].flatten()]
        inside = [p for p, m in zip(pos, masks[b].flatten()) if m]
        assert got[b].item() == pytest.approx(sum(inside) / sum(pos), rel=1e-5)


def test_mass_in_mask_sums_channels_and_handles_empty_maps():
    maps = torch.zeros(2, 3, 4, 4)
    maps[0, :, 0, 0] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    assert mass_in_mask(maps, masks).tolist() == [1.0, 0.0]


def test_mass_in_mask_errors_name_arguments():
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        mass_in_mask(torch.rand(1, 4, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="masks must have shape"):
        mass_in_mask(torch.rand(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attributions must have 3 or 4 dimensions"):
        mass_in_mask(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _classifier(seed=0, classes=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, classes)).eval()
    with torch.no_grad():  # statistics as if trained, so that re-initialising them changes something
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def test_pointing_game_matches_a_per_pixel_distance_check():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 12, 12, generator=g)
    masks = torch.zeros(6, 12, 12, dtype=torch.bool)
    masks[:, 4:7, 5:9] = True
    for tolerance in (0, 2, 3):
        got = pointing_game(maps, masks, tolerance=tolerance)
        for b in range(6):
            peak = int(maps[b].flatten().argmax())
            row, col = divmod(peak, 12)
            inside = [(r, c) for r in range(12) for c in range(12) if masks[b, r, c]]
            nearest = min(math.hypot(r - row, c - col) for r, c in inside)
            assert bool(got[b]) == (nearest <= tolerance)
    assert pointing_game(maps, masks, tolerance=3).any() and not pointing_game(maps, masks).all()


def test_pointing_game_counts_a_constant_map_as_a_miss():
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    assert pointing_game(torch.zeros(1, 4, 4), masks).tolist() == [False]


def test_energy_pointing_game_matches_a_loop_with_mask_and_box():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 8, 8, generator=g)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 2, 3] = masks[0, 5, 6] = True  # box rows 2..5, cols 3..6
    masks[1, 0:2, 0:8] = True
    masks[2, 7, 7] = True
    got_mask = energy_pointing_game(maps, masks)
    got_box = energy_pointing_game(maps, masks, box=True)
    for b in range(3):
        m = maps[b]
        energy = (m - m.min()) / (m.max() - m.min())
        rows = [r for r in range(8) if masks[b, r].any()]
        cols = [c for c in range(8) if masks[b, :, c].any()]
        in_box = energy[min(rows):max(rows) + 1, min(cols):max(cols) + 1].sum()
        assert got_box[b].item() == pytest.approx((in_box / energy.sum()).item(), rel=1e-5)
        assert got_mask[b].item() == pytest.approx((energy[masks[b]].sum() / energy.sum()).item(), rel=1e-5)
    assert got_box[0] > got_mask[0]
    with pytest.raises(ValueError, match="masks must each hold at least one pixel"):
        energy_pointing_game(maps, torch.zeros(3, 8, 8, dtype=torch.bool), box=True)


def _brute_force_curve(model, image, saliency, target, steps, baseline, insert):
    """One image, one forward per step, pixels sorted in Python."""
    height, width = saliency.shape
    order = sorted(range(height * width), key=lambda p: -float(saliency.flatten()[p]))
    curve = []
    for s in range(steps + 1):
        changed = torch.zeros(height * width, dtype=torch.bool)
        changed[order[:s * height * width // steps]] = True
        changed = changed.view(1, height, width)
        picture = torch.where(changed, image, baseline) if insert else torch.where(changed, baseline, image)
        with torch.no_grad():
            curve.append(torch.softmax(model(picture[None]), 1)[0, target].item())
    return curve


@pytest.mark.parametrize("insert", [False, True], ids=["deletion", "insertion"])
def test_deletion_and_insertion_match_a_per_step_loop(insert):
    model = _classifier()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 6, 6, generator=g)
    maps = torch.randn(2, 6, 6, generator=g)
    baseline = torch.rand(2, 3, 6, 6, generator=g)
    target = torch.tensor([2, 0])
    curve_fn = insertion_curve if insert else deletion_curve
    curves = curve_fn(model, images, maps, target, steps=5, baseline=baseline, batch_size=4)
    assert curves.shape == (2, 6)
    for b in range(2):
        expected = _brute_force_curve(model, images[b], maps[b], int(target[b]), 5, baseline[b], insert)
        assert curves[b].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(curve_fn(model, images, maps, target, steps=5, baseline=baseline, batch_size=1000),
                               curves)


def test_deletion_starts_at_the_image_and_insertion_ends_there():
    model = _classifier()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    maps = random_maps(3, 8, 8, seed=1)
    with torch.no_grad():
        probs = torch.softmax(model(images), 1)[:, 1]
    model.train()
    deletion = deletion_curve(model, images, maps, 1, steps=4, baseline=0.5)
    insertion = insertion_curve(model, images, maps, 1, steps=4, baseline=0.5)
    assert model.training  # the mode is restored
    torch.testing.assert_close(deletion[:, 0], probs)
    torch.testing.assert_close(insertion[:, -1], probs)
    torch.testing.assert_close(deletion[:, -1], insertion[:, 0])  # both are the all-baseline image


def test_area_under_curve_is_the_trapezoid_rule():
    curves = torch.rand(4, 7, generator=torch.Generator().manual_seed(4))
    expected = [np.trapezoid(c.numpy(), np.linspace(0, 1, 7)) for c in curves]
    assert area_under_curve(curves).tolist() == pytest.approx(expected, rel=1e-6)


def test_saliency_ranks_order_pixels_and_break_ties_by_seed():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert saliency_ranks(maps).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros(1, 16, 16)
    first, again, other = (saliency_ranks(flat, seed=s) for s in (0, 0, 1))
    assert sorted(first[0].tolist()) == list(range(256))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_rank_correlation_matches_scipy_with_ties_and_nan_for_constant_maps():
    g = torch.Generator().manual_seed(5)
    first = torch.randint(0, 4, (5, 3, 4), generator=g).float()  # many ties
    second = first + torch.randn(5, 3, 4, generator=g)
    second[1] = torch.randint(0, 3, (3, 4), generator=g).float()
    got = rank_correlation(first, second)
    for b in range(5):
        assert got[b].item() == pytest.approx(spearmanr(first[b].flatten(), second[b].flatten())[0], rel=1e-5)
    assert torch.isnan(rank_correlation(torch.ones(1, 3, 3), torch.rand(1, 3, 3))).all()
    with pytest.raises(ValueError, match="first and second must have the same shape"):
        rank_correlation(torch.rand(2, 4), torch.rand(2, 5))


class _Recording:
    """A saliency explainer (input-gradient maps) that records the weights of the model it explains."""

    def __init__(self, model, seen, maps=None):
        self.model, self.seen, self.maps = model, seen, maps

    def __call__(self, x, target=None):
        self.seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        if self.maps is not None:
            return self.maps(x)
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.model(x).gather(1, target[:, None]).sum(), x)
        return grad.abs().sum(1)


def test_sanity_check_randomises_layers_in_cascade_on_a_copy():
    model = _classifier()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    seen = []
    explainer = _Recording(model, seen)
    result = randomization_sanity_check(explainer, images, layers=["5", "1", "0"], seed=0, keep_maps=2)
    assert list(result.correlations) == ["5", "1", "0"] and all(r.shape == (4,) for r in result.correlations.values())
    assert list(result.maps) == ["trained", "5", "1", "0"] and result.maps["0"].shape == (2, 8, 8)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, original[key])
    # the explainer ran once, on the trained model; its deep copy (with a list of its own) ran the rest
    assert explainer.model is model and len(seen) == 1
    assert torch.equal(seen[0]["5.weight"], original["5.weight"])


def test_sanity_check_randomises_the_copy_step_by_step():
    model = _classifier()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    steps = []

    class Probe(_Recording):
        def __deepcopy__(self, memo):  # the copy records into the same list, to show what it saw
            import copy
            return Probe(copy.deepcopy(self.model, memo), steps)

    randomization_sanity_check(Probe(model, steps), images, layers=["5", "1", "0"], seed=0)
    reference, after_top, after_bn, after_all = steps
    assert torch.equal(reference["5.weight"], original["5.weight"])
    assert not torch.equal(after_top["5.weight"], original["5.weight"])
    assert torch.equal(after_top["0.weight"], original["0.weight"])
    assert not torch.equal(after_bn["1.running_mean"], original["1.running_mean"])
    assert torch.equal(after_bn["5.weight"], after_top["5.weight"])  # earlier randomisations are kept
    assert not torch.equal(after_all["0.weight"], original["0.weight"])
    # a "map" that ignores the model passes no sanity check: its correlation stays 1
    constant = randomization_sanity_check(_Recording(model, [], maps=lambda x: x.mean(1)), images)
    assert list(constant.correlations) == ["5", "1", "0"]
    assert all(torch.allclose(r, torch.ones(4)) for r in constant.correlations.values())
    with pytest.raises(ValueError, match="layers: 'head' is not a submodule"):
        randomization_sanity_check(Probe(model, []), images, layers=["head"])


def test_sanity_check_takes_cam_explainers_as_they_are():
    model = _classifier()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    explainer = GradCAM(model, "2")
    result = randomization_sanity_check(explainer, images, layers=["5"], seed=0)
    assert result.correlations["5"].shape == (3,) and explainer.model is model
    with pytest.raises(TypeError, match=r"explainer must be a saliency explainer.*explainer.model"):
        randomization_sanity_check(lambda x, t=None: x.mean(1), images)


def _weights_seen_by_the_sanity_check(model, images, seed):
    """The last layer's weight in the randomised copy, as the explainer saw it."""
    seen = []

    class Recorder(_Recording):
        def __deepcopy__(self, memo):
            import copy
            return Recorder(copy.deepcopy(self.model, memo), seen)

        def __call__(self, x, target=None):
            seen.append(self.model[5].weight.detach().cpu().clone())
            return x.mean(1)

    randomization_sanity_check(Recorder(model, seen), images, layers=["5"], seed=seed)
    return seen[1]


def test_sanity_check_weights_follow_the_seed_alone_and_leave_the_global_generator():
    model, images = _classifier(), torch.rand(2, 3, 8, 8)
    state = torch.get_rng_state()
    drawn = _weights_seen_by_the_sanity_check(model, images, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)  # the layer's own initialisation, re-run by hand with the first step's seed
    expected = nn.Linear(16, 3)
    assert torch.equal(drawn, expected.weight.detach())


@CUDA
def test_sanity_check_draws_the_same_weights_on_cuda_as_on_the_cpu():
    model, images = _classifier(), torch.rand(2, 3, 8, 8)
    on_cpu = _weights_seen_by_the_sanity_check(model, images, seed=3)
    on_cuda = _weights_seen_by_the_sanity_check(model.cuda(), images.cuda(), seed=3)
    assert torch.equal(on_cpu, on_cuda)


def test_baseline_maps():
    assert torch.equal(random_maps(2, 5, 6, seed=3), random_maps(2, 5, 6, seed=3))
    assert not torch.equal(random_maps(2, 5, 6, seed=3), random_maps(2, 5, 6, seed=4))
    centre = centre_maps(2, 9, 7, sigma=0.2)
    assert centre.shape == (2, 9, 7) and torch.equal(centre[0], centre[1])
    assert int(centre[0].flatten().argmax()) == 4 * 7 + 3
    torch.testing.assert_close(centre[0], centre[0].flip(0).flip(1))
    masks = torch.zeros(2, 9, 7, dtype=torch.bool)
    masks[:, 4, 3] = True
    assert pointing_game(centre, masks).all()


def test_curve_errors_name_arguments():
    model, images = _classifier(), torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"maps must have shape \(2, 6, 6\)"):
        deletion_curve(model, images, torch.rand(2, 3, 3), 0)
    with pytest.raises(ValueError, match=r"target must have one class per image \(2\)"):
        deletion_curve(model, images, torch.rand(2, 6, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match="baseline must broadcast"):
        insertion_curve(model, images, torch.rand(2, 6, 6), 0, baseline=torch.rand(3, 3, 6, 6))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        deletion_curve(model, images, torch.rand(2, 6, 6), 0, steps=0)
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        pointing_game(torch.rand(1, 4, 4), torch.ones(1, 4, 4))


def test_lipschitz_search_approaches_the_spectral_norm_of_a_linear_map_from_below():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(10, 20, generator=generator)
    x = torch.randn(6, 20, generator=generator)
    spectral = torch.linalg.matrix_norm(A, ord=2)
    estimate = local_lipschitz(lambda z: z @ A.T, x, radius=0.5, num_samples=4, steps=25, seed=1)
    assert estimate.values.shape == (6,) and estimate.points.shape == (6, 20)
    assert (estimate.values <= spectral * (1 + 1e-5)).all()
    assert (estimate.values >= 0.97 * spectral).all()
    # random sampling alone, with the same number of explanations, stays well below it in 20 dimensions
    sampled = local_lipschitz(lambda z: z @ A.T, x, radius=0.5, num_samples=4 * 26, seed=1)
    assert (sampled.values < 0.9 * spectral).all()


def test_lipschitz_search_finds_at_least_random_sampling_on_a_nonlinear_map():
    generator = torch.Generator().manual_seed(1)
    V, W = torch.randn(20, 16, generator=generator), torch.randn(8, 20, generator=generator)
    explain = lambda z: torch.tanh(z @ V.T) @ W.T  # noqa: E731
    x = torch.randn(6, 16, generator=generator)
    searched = local_lipschitz(explain, x, radius=0.3, num_samples=4, steps=25, seed=2)
    sampled = local_lipschitz(explain, x, radius=0.3, num_samples=4 * 26, seed=2)
    assert (searched.values >= sampled.values).all()
    # each value is the ratio at its point, and the point lies in the ball
    distance = (searched.points - x).norm(dim=1)
    assert (distance <= 0.3 * (1 + 1e-5)).all()
    ratio = (explain(searched.points) - explain(x)).norm(dim=1) / distance
    torch.testing.assert_close(ratio, searched.values)


def test_lipschitz_is_batched_seeded_and_handles_image_shapes():
    calls = []

    def explain(z):
        calls.append(len(z))
        return z.flatten(1) ** 2

    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    first = local_lipschitz(explain, x, radius=0.2, num_samples=5, steps=3, seed=7)
    assert calls == [3] + [15] * 4  # the inputs once, then every point at once, once per step
    assert first.points.shape == x.shape
    again = local_lipschitz(explain, x, radius=0.2, num_samples=5, steps=3, seed=7)
    other = local_lipschitz(explain, x, radius=0.2, num_samples=5, steps=3, seed=8)
    assert torch.equal(first.values, again.values) and not torch.equal(first.values, other.values)


def test_lipschitz_random_sampling_works_without_gradients_and_ascent_says_why_it_cannot():
    x = torch.randn(2, 5)

    @torch.no_grad()
    def black_box(z):
        return torch.sign(z)

    assert local_lipschitz(black_box, x, radius=0.5, num_samples=8).values.shape == (2,)
    with pytest.raises(ValueError, match="steps"):
        local_lipschitz(black_box, x, radius=0.5, num_samples=8, steps=2)


def test_lipschitz_errors_name_the_argument():
    with pytest.raises(ValueError, match="radius"):
        local_lipschitz(lambda z: z, torch.randn(2, 3), radius=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        local_lipschitz(lambda z: z, torch.randn(2, 3), radius=0.1, num_samples=0)
    with pytest.raises(TypeError, match="explainer"):
        local_lipschitz("saliency", torch.randn(2, 3), radius=0.1)
    with pytest.raises(ValueError, match="explainer must map"):
        local_lipschitz(lambda z: z[:1], torch.randn(2, 3), radius=0.1)


def test_lipschitz_takes_a_saliency_explainer_as_it_is():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    images = torch.rand(2, 3, 8, 8)
    estimate = local_lipschitz(GradCAM(model, "1"), images, radius=0.1, num_samples=3, seed=0)
    assert estimate.values.shape == (2,) and (estimate.values >= 0).all()
    assert ((estimate.points - images).flatten(1).norm(dim=1) <= 0.1 + 1e-6).all()

