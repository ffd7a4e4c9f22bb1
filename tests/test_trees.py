import itertools
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import xnn_lab.trees
from _state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab.models import MLP
from xnn_lab.trees import DecisionTree, to_decision_tree
from xnn_lab.viz import plot_regions, plot_tree

BOX = (-2.0, 2.0)


def random_net(in_features, hidden, out_features, seed, activation="relu"):
    torch.manual_seed(seed)
    return MLP(in_features, hidden, out_features, activation=activation).double().eval()


def uniform(n, in_features, seed, box=BOX):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, in_features, generator=generator, dtype=torch.float64) * (box[1] - box[0]) + box[0]


def assert_same(tree, net, x):
    with torch.no_grad():
        expected = net(x)
    atol = 1e-10 * max(1.0, expected.abs().max().item())
    assert torch.allclose(tree.predict(x), expected, rtol=0, atol=atol), \
        (tree.predict(x) - expected).abs().max()


ARCHITECTURES = [(2, (3,), 1), (2, (5, 4), 2), (3, (4, 3, 3), 2), (5, (6, 2), 3)]


@pytest.fixture(scope="module", params=ARCHITECTURES,
                ids=lambda a: f"{a[0]}-{'-'.join(map(str, a[1]))}-{a[2]}")
def net_and_tree(request):
    in_features, hidden, out_features = request.param
    net = random_net(in_features, hidden, out_features, seed=sum(hidden))
    return net, to_decision_tree(net, domain=BOX)


def test_tree_equals_network_on_random_points(net_and_tree):
    net, tree = net_and_tree
    assert isinstance(tree, DecisionTree)
    assert_same(tree, net, uniform(10_000, tree.n_inputs, seed=1))
    assert tree.n_leaves <= tree.n_leaves_unpruned == 2**sum(tree.layer_sizes)
    assert tree.n_nodes == tree.n_leaves - 1 and tree.n_lps > 0


def test_tree_equals_network_near_every_wall(net_and_tree):
    """Points within 1e-10..1e-9 of each node's hyperplane, on both sides, and exactly on it."""
    net, tree = net_and_tree
    x = uniform(200, tree.n_inputs, seed=2)
    generator = torch.Generator().manual_seed(3)
    points = []
    for w, b in zip(tree.node_weight, tree.node_bias):
        unit = w / w.norm()
        on_wall = x - ((x @ w + b) / w.norm())[:, None] * unit
        offset = (torch.rand(len(x), 1, generator=generator, dtype=torch.float64) * 9e-10 + 1e-10)
        points += [on_wall, on_wall + offset * unit, on_wall - offset * unit]
    points = torch.cat(points)
    inside = ((points >= BOX[0]) & (points <= BOX[1])).all(1)
    assert inside.sum() > 100
    assert_same(tree, net, points[inside])


def test_tree_without_domain_is_exact_everywhere():
    net = random_net(2, (4, 4), 2, seed=5)
    tree = to_decision_tree(net)
    assert tree.domain is None
    assert_same(tree, net, uniform(5_000, 2, seed=6, box=(-100.0, 100.0)))


def chebyshev_radius(pattern, net, box):
    """Largest ball inside one activation pattern's region and the box, by an LP written from scratch."""
    linears = [m for m in net if isinstance(m, nn.Linear)][:-1]
    W_eff, b_eff = np.eye(linears[0].in_features), np.zeros(linears[0].in_features)
    rows, rhs, start = [], [], 0
    for linear in linears:
        W, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
        W_eff, b_eff = W @ W_eff, W @ b_eff + b
        bits = np.array(pattern[start:start + len(W)])
        start += len(W)
        for w, c, on in zip(W_eff, b_eff, bits):
            norm = np.linalg.norm(w)
            if norm == 0:
                if (c > 0) != on:
                    return -np.inf
                continue
            sign = 1.0 if on else -1.0  # sign * (w.x + c) >= t * |w|
            rows.append(np.append(-sign * w, norm))
            rhs.append(sign * c)
        W_eff, b_eff = bits[:, None] * W_eff, bits * b_eff
    n = W_eff.shape[1]
    for j in range(n):  # box[0] + t <= x_j <= box[1] - t
        for sign, bound in ((1.0, box[1]), (-1.0, -box[0])):
            rows.append(np.append(sign * np.eye(n)[j], 1.0))
            rhs.append(bound)
    objective = np.append(np.zeros(n), -1.0)
    result = linprog(objective, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=[(None, None)] * (n + 1),
                     method="highs")
    assert result.status == 0
    return result.x[-1]


def test_pruned_regions_match_brute_force():
    """Every one of the 2**5 patterns checked by its own LP; and a dense grid finds the same regions."""
    net = random_net(2, (3, 2), 1, seed=11)
    tree = to_decision_tree(net, domain=BOX)
    radius = {p: chebyshev_radius(p, net, BOX) for p in itertools.product((False, True), repeat=5)}
    feasible = {p for p, r in radius.items() if r > 1e-7}
    assert {tuple(p) for p in tree.leaf_pattern.tolist()} == feasible
    assert tree.n_leaves == len(feasible) < 32
    side = torch.linspace(*BOX, 401, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="xy"), -1).reshape(-1, 2)
    seen = {tuple(p) for p in tree.activation_pattern(grid).tolist()}
    assert seen <= feasible
    step = (BOX[1] - BOX[0]) / 400
    assert {p for p in feasible if radius[p] > step} <= seen


def test_pruned_regions_match_brute_force_in_3d():
    net = random_net(3, (4, 3), 2, seed=12)
    tree = to_decision_tree(net, domain=(-1.0, 1.0))
    feasible = {p for p in itertools.product((False, True), repeat=7)
                if chebyshev_radius(p, net, (-1.0, 1.0)) > 1e-7}
    assert {tuple(p) for p in tree.leaf_pattern.tolist()} == feasible


def test_tree_from_data_is_exact_on_its_rows():
    net = random_net(4, (5, 4), 2, seed=21)
    data = uniform(300, 4, seed=22)
    tree = to_decision_tree(net, data=data)
    assert tree.method == "data" and tree.n_lps == 0
    assert tree.n_leaves == len(torch.unique(tree.activation_pattern(data), dim=0))
    assert_same(tree, net, data)
    unvisited = uniform(5_000, 4, seed=23, box=(-6.0, 6.0))
    with pytest.raises(ValueError, match="did not visit"):
        tree.predict(unvisited)


def test_leaky_relu_same_splits_other_leaf_maps():
    relu = random_net(2, (5,), 2, seed=31)
    leaky = random_net(2, (5,), 2, seed=31, activation="leaky_relu")
    relu_tree, leaky_tree = to_decision_tree(relu, domain=BOX), to_decision_tree(leaky, domain=BOX)
    assert torch.equal(relu_tree.node_weight, leaky_tree.node_weight)
    assert not torch.allclose(relu_tree.leaf_weight, leaky_tree.leaf_weight)
    deep = random_net(2, (4, 4), 2, seed=32, activation="leaky_relu")
    deep_tree = to_decision_tree(deep, domain=BOX)
    assert_same(deep_tree, deep, uniform(10_000, 2, seed=33))


def test_point_on_a_wall_between_regions():
    """|x| = relu(x) + relu(-x): at x = 0 both units are off, a pattern with no region of its own."""
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)
        net[2].bias.zero_()
    tree = to_decision_tree(net, domain=(-1.0, 1.0))
    assert tree.n_leaves == 2
    x = torch.tensor([[-0.5], [0.0], [0.5]], dtype=torch.float64)
    assert tree.leaf_index(x).tolist() == [0, 0, 1]  # x = 0 goes down the splits: "x > 0" is false
    assert torch.equal(tree.predict(x), torch.tensor([[0.5], [0.0], [0.5]], dtype=torch.float64))


def test_walls_far_away_need_no_lp():
    """A unit fed by a tiny weight (as weight decay leaves on dead units) has its wall ~1e21 away."""
    net = random_net(2, (3, 2), 1, seed=91)
    with torch.no_grad():
        net[2].weight[0] = torch.tensor([1e-22, 0.0, 0.0], dtype=torch.float64)
        net[2].bias[0] = -0.3
    for domain in (BOX, None):
        tree = to_decision_tree(net, domain=domain)
        assert_same(tree, net, uniform(2_000, 2, seed=92))


def test_outside_the_domain_in_a_pruned_region_raises():
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(-5.0)  # active only for x > 5, outside the domain
    tree = to_decision_tree(net, domain=(-1.0, 1.0))
    assert tree.n_leaves == 1 and tree.n_nodes == 0
    assert_same(tree, net, torch.tensor([[0.3], [-4.0]], dtype=torch.float64))  # outside, same region
    with pytest.raises(ValueError, match=r"x\[1\].*outside the tree's domain"):
        tree.predict(torch.tensor([[0.0], [10.0]], dtype=torch.float64))


def test_predict_keeps_dtype_device_and_shape():
    net = random_net(3, (4,), 2, seed=41)
    tree = to_decision_tree(net, domain=BOX)
    x = uniform(50, 3, seed=42).float()
    out = tree.predict(x)
    assert out.dtype == torch.float32 and out.shape == (50, 2)
    torch.testing.assert_close(out, net.float()(x).detach(), rtol=1e-5, atol=1e-5)
    assert tree.predict(x[0]).shape == (2,) and tree.leaf_index(x[0]).ndim == 0


def test_other_layer_layouts():
    torch.manual_seed(0)
    cases = [nn.Sequential(nn.Linear(3, 2)),                                       # no hidden layer
             nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU()),   # ends in ReLU
             nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2))]
    for net in cases:
        net = net.double().eval()
        assert_same(to_decision_tree(net, domain=BOX), net, uniform(2_000, 3, seed=51))
    assert to_decision_tree(cases[0]).n_leaves == 1


def test_rules_describe_each_leaf():
    net = random_net(2, (4, 3), 2, seed=61)
    tree = to_decision_tree(net, domain=BOX)
    x = uniform(4_000, 2, seed=62)
    leaf = tree.leaf_index(x)
    for k in range(tree.n_leaves):
        rules = tree.rules(k)
        assert len(rules) <= tree.depth
        inside = leaf == k
        for rule in rules:
            assert rule.holds(x[inside]).all()
            assert str(rule).endswith("> 0" if rule.positive else "<= 0")
    assert max(len(tree.rules(k)) for k in range(tree.n_leaves)) == tree.depth


def test_text_and_plots():
    net = random_net(2, (3,), 2, seed=71)
    tree = to_decision_tree(net, domain=BOX)
    text = tree.to_text(feature_names=["a", "b"], max_depth=None)
    assert text.count("leaf ") == tree.n_leaves and " a " in text and "x0" not in text
    deeper = to_decision_tree(random_net(2, (4, 4), 1, seed=73), domain=BOX)
    assert "leaves)" in deeper.to_text(max_depth=1)
    ax = plot_tree(tree, feature_names=["a", "b"])
    assert len(ax.texts) >= tree.n_leaves + tree.n_nodes
    ax = plot_regions(tree, resolution=50)
    assert len(ax.images) == 2
    big = to_decision_tree(random_net(3, (4,), 1, seed=72), domain=BOX)
    with pytest.raises(ValueError, match="2 inputs"):
        plot_regions(big)
    with pytest.raises(ValueError, match="xlim must be a"):
        plot_regions(tree, xlim=(1.0, -1.0))
    with pytest.raises(ValueError, match="xlim is needed"):
        plot_regions(to_decision_tree(net), ylim=(-1.0, 1.0))
    with pytest.raises(ValueError, match="feature_names"):
        tree.to_text(feature_names=["a"])
    with pytest.raises(ValueError, match="max_leaves=2.*max_depth"):
        plot_tree(tree, max_leaves=2)
    assert tree.node_text(0, ["a", "b"]) in text
    with pytest.raises(ValueError, match="node must be <="):
        tree.node_text(tree.n_nodes)


def _drawn_boxes(ax):
    """The window extents of the boxed texts (nodes and leaves) of a drawn tree."""
    ax.figure.canvas.draw()
    boxed = [text for text in ax.texts if text.get_bbox_patch() is not None]
    return boxed, [text.get_bbox_patch().get_window_extent() for text in boxed]


def test_tree_figure_is_readable_at_page_width():
    """The chapter's figure: a new figure at most 9 inches wide, text of 9 pt, no box overlapping
    another or leaving the figure, and each leaf's box in its region's colour."""
    tree = to_decision_tree(random_net(2, (3, 3), 2, seed=0), domain=BOX)
    assert tree.n_leaves >= 6 and tree.depth >= 3
    ax = plot_tree(tree)
    width, _ = ax.figure.get_size_inches()
    assert width <= 9
    boxed, extents = _drawn_boxes(ax)
    assert len(boxed) == tree.n_leaves + tree.n_nodes
    assert min(text.get_fontsize() for text in boxed) >= 8
    assert all(ax.figure.bbox.contains(e.x0, e.y0) and ax.figure.bbox.contains(e.x1, e.y1) for e in extents)
    for a, b in itertools.combinations(extents, 2):
        assert not a.overlaps(b), (a, b)
    leaf_faces = {text.get_text().split()[1]: text.get_bbox_patch().get_facecolor()[:3]
                  for text in boxed if text.get_text().startswith("leaf ")}
    assert len(set(leaf_faces.values())) > 1  # coloured by region, not all one colour


def test_tree_figure_folds_deep_subtrees():
    tree = to_decision_tree(random_net(2, (4, 4), 1, seed=73), domain=BOX)
    with pytest.raises(ValueError, match="max_leaves=4"):
        plot_tree(tree, max_leaves=4)
    ax = plot_tree(tree, max_depth=1, max_leaves=4)
    labels = [text.get_text() for text in ax.texts]
    folded = [label for label in labels if label.endswith("leaves below")]
    assert len(folded) == 2 and sum(int(label.split()[0]) for label in folded) == tree.n_leaves
    assert labels.count("no") == labels.count("yes") == 1
    _, extents = _drawn_boxes(ax)
    for a, b in itertools.combinations(extents, 2):
        assert not a.overlaps(b)


def test_region_labels_sit_in_their_regions():
    net = random_net(2, (3,), 2, seed=71)
    tree = to_decision_tree(net, domain=BOX)
    ax = plot_regions(tree, resolution=100, labels=True)
    assert len(ax.texts) >= 2
    for text in ax.texts:
        x, y = text.get_position()
        assert int(tree.leaf_index(torch.tensor([x, y], dtype=torch.float64))) == int(text.get_text())


@pytest.mark.parametrize("package", ["xnn_lab.trees", "xnn_lab.influence"])
def test_the_algorithm_does_not_import_matplotlib(package):
    code = f"import sys, {package}; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _mixed_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 3), nn.LeakyReLU(0.1),
                         nn.Linear(3, 2)).double()


STATE_CALLS = {
    "to_decision_tree": [lambda model: to_decision_tree(model, domain=BOX),
                         lambda model: to_decision_tree(model, data=uniform(50, 2, seed=0))],
}


@pytest.mark.parametrize("name, call", [(name, call) for name, calls in STATE_CALLS.items() for call in calls])
def test_keeps_the_model_state(name, call):
    model = mix_states(_mixed_net())
    before = snapshot(model)
    tree = call(model)
    assert_state_kept(model, before)
    assert_same(tree, model.eval(), uniform(50, 2, seed=0))  # the tree is the network in eval mode


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_keeps_a_cuda_model_on_its_device():
    model = mix_states(_mixed_net().cuda())
    before = snapshot(model)
    tree = to_decision_tree(model, domain=BOX)
    assert_state_kept(model, before)
    x = uniform(100, 2, seed=1).cuda()
    with torch.no_grad():
        expected = model.eval()(x)
    assert tree.predict(x).device == x.device
    torch.testing.assert_close(tree.predict(x), expected, rtol=0, atol=1e-10)


def test_state_tests_cover_the_public_api():
    assert set(STATE_CALLS) == public_api_taking_a_model(xnn_lab.trees)


@pytest.mark.parametrize("model, error, match", [
    (nn.Linear(2, 2), TypeError, "model must be an nn.Sequential"),
    (nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)), TypeError, r"model\[1\] is Sigmoid"),
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), TypeError, r"model\[1\] is Tanh"),
    (nn.Sequential(nn.Conv2d(1, 2, 3)), TypeError, r"model\[0\] is Conv2d"),
    (nn.Sequential(nn.ReLU(), nn.Linear(2, 1)), ValueError, r"model\[0\] is ReLU without a Linear"),
    (nn.Sequential(nn.Linear(2, 3), nn.Linear(4, 1)), ValueError, r"model\[1\] is Linear with 4 inputs"),
    (nn.Sequential(), ValueError, "model must contain at least one Linear"),
])
def test_unsupported_models(model, error, match):
    with pytest.raises(error, match=match):
        to_decision_tree(model)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"domain": (-1.0,)}, TypeError, "domain must be a"),
    ({"domain": (torch.zeros(3), torch.ones(3))}, ValueError, r"domain's low must .* shape \(2,\)"),
    ({"domain": (1.0, 1.0)}, ValueError, "low < high"),
    ({"domain": (0.0, float("inf"))}, ValueError, "domain's high must be finite"),
    ({"domain": (0.0, "one")}, TypeError, "domain's high"),
    ({"domain": BOX, "data": torch.zeros(3, 2)}, ValueError, "domain or data"),
    ({"data": torch.zeros(3, 5)}, ValueError, r"data must have shape \(N, 2\)"),
    ({"data": torch.zeros(3, 2, dtype=torch.long)}, TypeError, "data must be a floating-point"),
    ({"max_leaves": 0}, ValueError, "max_leaves"),
    ({"max_units": 2.5}, TypeError, "max_units"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        to_decision_tree(random_net(2, (3,), 1, seed=0), **kwargs)


def test_bad_inputs_to_predict():
    tree = to_decision_tree(random_net(2, (3,), 1, seed=0), domain=BOX)
    with pytest.raises(ValueError, match="x must have 2 features"):
        tree.predict(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        tree.predict(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="leaf must be <="):
        tree.rules(tree.n_leaves)


def test_size_limits_raise_fast():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"2000 hidden units, more than max_units=100"):
        to_decision_tree(MLP(784, (1000, 1000), 10))
    with pytest.raises(ValueError, match="more than max_leaves=10"):
        to_decision_tree(random_net(2, (12, 12), 2, seed=81), domain=BOX, max_leaves=10)
    assert time.perf_counter() - start < 5
    tree = to_decision_tree(random_net(2, (8,), 1, seed=82), domain=BOX, max_units=8, max_leaves=40)
    assert tree.n_leaves <= 40
