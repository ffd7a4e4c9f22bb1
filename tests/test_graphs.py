"""xnn_lab.graphs against independent truth: PyG's GCNConv against the hand-written layer, PyG's
GNNExplainer and CaptumExplainer against the batched explainers, PyG's metrics (torchmetrics'
AUROC, fidelity) and brute force against ours, k_hop_subgraph against the computation subgraphs,
the data sets' ground truth recounted; the state conventions; input errors that name the argument;
chapter 9's graded questions."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import nbformat
import pytest
import torch
from torch_geometric.explain import CaptumExplainer, Explainer
from torch_geometric.explain import GNNExplainer as PyGGNNExplainer
from torch_geometric.explain.metric import fidelity as pyg_fidelity
from torch_geometric.explain.metric import groundtruth_metrics
from torch_geometric.nn import GCNConv, MessagePassing
from torch_geometric.utils import k_hop_subgraph

from tests._state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab import graphs
from xnn_lab.graphs import (GCN, GIN, GNNExplainer, GradientSaliency, IntegratedGradients, RandomExplainer,
                            auroc, batch_of, computation_subgraphs, fidelity, fit_gnn, gcn_layer,
                            make_ba_shapes, make_molecules, make_superpixel_graphs, node_maps,
                            precision_at_k, top_k_mask)

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _small_ba():
    return make_ba_shapes(40, 6, base_edges=2, seed=1)


def _gcn(hidden=8):
    torch.manual_seed(0)
    return GCN(10, 4, hidden_channels=hidden).eval()


def _gin():
    torch.manual_seed(0)
    return GIN(4, 2, hidden_channels=8).eval()


def _config(level: str) -> dict:
    return dict(mode="multiclass_classification", task_level=level, return_type="raw")


# ----------------------------------------------------------------------------- message passing


def test_gcn_layer_equals_pyg_gcnconv():
    g = torch.Generator().manual_seed(0)
    for n, e, f, out in [(6, 7, 3, 2), (20, 40, 5, 4)]:
        pairs = torch.randint(0, n, (2, e), generator=g)
        pairs = pairs[:, pairs[0] != pairs[1]]
        edge_index = torch.unique(torch.cat([pairs, pairs.flip(0)], 1), dim=1)
        x = torch.randn(n, f, generator=g, dtype=torch.float64)
        conv = GCNConv(f, out).double()
        torch.nn.init.normal_(conv.bias)
        with torch.no_grad():
            expected = conv(x, edge_index)
        got = gcn_layer(x, edge_index, conv.lin.weight.detach(), conv.bias.detach())
        assert torch.allclose(got, expected, atol=1e-12)
        # a node without edges keeps only its own message, scaled by 1/1
        lonely = gcn_layer(x, edge_index[:, edge_index.max(0).values < n - 1], conv.lin.weight.detach())
        isolated = n - 1
        assert torch.allclose(lonely[isolated], x[isolated] @ conv.lin.weight.detach().T)


def test_gcn_layer_errors_name_the_argument():
    x, edges, weight = torch.rand(4, 3), torch.tensor([[0, 1], [1, 0]]), torch.rand(2, 3)
    with pytest.raises(ValueError, match="weight"):
        gcn_layer(x, edges, torch.rand(2, 5))
    with pytest.raises(ValueError, match="edge_index"):
        gcn_layer(x, torch.tensor([[0, 7], [7, 0]]), weight)
    with pytest.raises(TypeError, match="edge_index"):
        gcn_layer(x, edges.float(), weight)
    with pytest.raises(TypeError, match="x"):
        gcn_layer(x.long(), edges, weight)


# ----------------------------------------------------------------------------- data


def test_ba_shapes_ground_truth_and_seeding():
    data = _small_ba()
    import numpy as np

    state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    again = make_ba_shapes(40, 6, base_edges=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state), "the global random stream is left alone"
    assert (np.random.get_state()[1] == numpy_state).all(), "NumPy's too"
    assert torch.equal(data.edge_index, again.edge_index) and torch.equal(data.train_mask, again.train_mask)
    assert not torch.equal(data.edge_index, make_ba_shapes(40, 6, base_edges=2, seed=2).edge_index)
    assert data.num_nodes == 40 + 5 * 6
    assert torch.equal(data.node_mask, data.y > 0) and torch.equal(data.node_mask, data.motif >= 0)
    source, target = data.edge_index
    same_house = (data.motif[source] == data.motif[target]) & (data.motif[source] >= 0)
    assert torch.equal(data.edge_mask, same_house)
    assert int(data.edge_mask.sum()) == 6 * 12  # six undirected edges per house, both directions
    assert torch.equal(data.train_mask, ~data.test_mask)
    # each house: two middle (1), two bottom (2) nodes and the roof's top (3), of degree 2 in the house
    for house in range(6):
        assert sorted(data.y[data.motif == house].tolist()) == [1, 1, 2, 2, 3]
        top = ((data.motif == house) & (data.y == 3)).nonzero()[0, 0]
        assert int((data.edge_index[0][data.edge_mask] == top).sum()) == 2


def test_molecules_ground_truth_is_the_nitro_group():
    molecules = make_molecules(60, seed=3)
    assert [m.y.item() for m in molecules[:4]] == [0, 1, 0, 1]
    for m in molecules:
        atoms = [graphs.ATOM_TYPES[i] for i in m.x.argmax(1).tolist()]
        neighbours = {i: set() for i in range(m.num_nodes)}
        for u, v in m.edge_index.t().tolist():
            neighbours[u].add(v)
        nitro = [i for i, a in enumerate(atoms) if a == "N" and sum(atoms[j] == "O" for j in neighbours[i]) == 2]
        assert len(nitro) == m.y.item()
        expected = torch.zeros(m.num_nodes, dtype=torch.bool)
        for i in nitro:
            expected[i] = True
            expected[[j for j in neighbours[i] if atoms[j] == "O"]] = True
        assert torch.equal(m.node_mask, expected)
        assert torch.equal(m.edge_mask, expected[m.edge_index[0]] & expected[m.edge_index[1]])
    assert all(torch.equal(a.x, b.x) for a, b in zip(molecules, make_molecules(60, seed=3)))


def test_superpixel_graphs_features_edges_and_masks():
    from xnn_lab.data import make_shapes

    shapes = make_shapes(3, split="test", seed=1)
    sp = make_superpixel_graphs(shapes, n_segments=30)
    assert len(sp) == 3 and sp.segments.shape == (3, 64, 64)
    graph, segments = sp.graphs[1], sp.segments[1]
    image = shapes.images[1]
    for region in (0, graph.num_nodes - 1):
        pixels = segments == region
        assert torch.allclose(graph.x[region, :3], image[:, pixels].mean(1), atol=1e-5)
        assert torch.isclose(graph.x[region, 5], pixels.float().mean())
        assert torch.isclose(graph.overlap[region], shapes.masks[1][pixels].float().mean())
    # edges: exactly the pairs of regions that touch horizontally or vertically, both directions
    touching = set()
    for a, b in ((segments[:, :-1], segments[:, 1:]), (segments[:-1], segments[1:])):
        touching |= {(int(u), int(v)) for u, v in zip(a.flatten(), b.flatten()) if u != v}
    touching |= {(v, u) for u, v in touching}
    assert set(map(tuple, graph.edge_index.t().tolist())) == touching
    batch = batch_of(sp.graphs)
    painted = node_maps(torch.arange(batch.num_nodes).float(), batch.batch, sp.segments)
    offsets = torch.tensor([0, sp.graphs[0].num_nodes, sp.graphs[0].num_nodes + sp.graphs[1].num_nodes])
    assert torch.equal(painted.long(), sp.segments + offsets[:, None, None])
    with pytest.raises(TypeError, match="shapes"):
        make_superpixel_graphs(shapes.images)
    with pytest.raises(ValueError, match="n_segments"):
        make_superpixel_graphs(shapes, n_segments=1)


# ----------------------------------------------------------------------------- computation subgraphs


def test_computation_subgraphs_match_k_hop_subgraph_and_the_whole_graph():
    data, model = _small_ba(), _gcn()
    index = torch.tensor([41, 3, 55, 41])
    parts = computation_subgraphs(data, index, 3)
    with torch.no_grad():
        whole = model(data.x, data.edge_index)[index]
        own = model(parts.x, parts.edge_index)[parts.centre]
    assert torch.allclose(own, whole, atol=1e-6), "GCN sees the same degrees in the part"
    for k, node in enumerate(index.tolist()):
        _, _, _, within_3 = k_hop_subgraph(node, 3, data.edge_index)
        inner, _, _, _ = k_hop_subgraph(node, 2, data.edge_index)
        expected_active = within_3 & torch.isin(data.edge_index[1], inner)
        mine = parts.edge_id[(parts.edge_group == k) & parts.active]
        assert set(mine.tolist()) == set(expected_active.nonzero()[:, 0].tolist())
        every = parts.edge_id[parts.edge_group == k]
        expected_all = torch.isin(data.edge_index[1], k_hop_subgraph(node, 3, data.edge_index)[0])
        assert set(every.tolist()) == set(expected_all.nonzero()[:, 0].tolist())
    with pytest.raises(ValueError, match="index"):
        computation_subgraphs(data, torch.tensor([data.num_nodes]), 3)
    with pytest.raises(ValueError, match="num_hops"):
        computation_subgraphs(data, index, 0)


# ----------------------------------------------------------------------------- explainers vs PyG


def _pyg_gnnexplainer(model, data, *, level, seed, **kwargs):
    torch.manual_seed(seed)
    explainer = Explainer(model, PyGGNNExplainer(epochs=30, lr=0.1), explanation_type="model",
                          node_mask_type="object", edge_mask_type="object", model_config=_config(level))
    return explainer(data.x, data.edge_index, **kwargs)


def test_gnnexplainer_equals_pyg_for_each_node_of_a_batch():
    data, model = _small_ba(), _gcn()
    index = torch.tensor([41, 45, 3])
    ours = GNNExplainer(model, epochs=30, lr=0.1, seed=5)(data, index)
    for k, node in enumerate(index.tolist()):
        theirs = _pyg_gnnexplainer(model, data, level="node", seed=5 + k, index=node)
        edges, nodes = ours.edge_group == k, ours.node_group == k
        assert torch.allclose(theirs.edge_mask[ours.edge_id[edges]], ours.edge_mask[edges], atol=1e-5)
        outside = torch.ones(data.num_edges, dtype=torch.bool)
        outside[ours.edge_id[edges]] = False
        assert (theirs.edge_mask[outside] == 0).all(), "PyG's mask is zero outside the part"
        assert torch.allclose(theirs.node_mask[ours.node_id[nodes], 0], ours.node_mask[nodes], atol=1e-5)
    assert not torch.allclose(ours.edge_mask[ours.edge_group == 0], ours.edge_mask[ours.edge_group == 0].mean())


def test_gnnexplainer_equals_pyg_for_each_graph_of_a_batch():
    molecules, model = make_molecules(3, seed=0), _gin()
    ours = GNNExplainer(model, epochs=30, lr=0.1, seed=2)(molecules)
    for k, molecule in enumerate(molecules):
        theirs = _pyg_gnnexplainer(model, molecule, level="graph", seed=2 + k,
                                   batch=torch.zeros(molecule.num_nodes, dtype=torch.long))
        assert torch.allclose(theirs.edge_mask, ours.edge_mask[ours.edge_group == k], atol=1e-5)
        assert torch.allclose(theirs.node_mask[:, 0], ours.node_mask[ours.node_group == k], atol=1e-5)


@pytest.mark.parametrize("method", ["Saliency", "IntegratedGradients"])
def test_gradient_explainers_equal_pyg_captum(method):
    data, model = _small_ba(), _gcn()
    index = torch.tensor([41, 3])
    ours = (GradientSaliency(model) if method == "Saliency" else IntegratedGradients(model, steps=16))(data, index)
    extra = {} if method == "Saliency" else dict(n_steps=16, method="riemann_middle")
    explainer = Explainer(model, CaptumExplainer(method, **extra), explanation_type="model",
                          node_mask_type="attributes", edge_mask_type="object", model_config=_config("node"))
    for k, node in enumerate(index.tolist()):
        theirs = explainer(data.x, data.edge_index, index=node)
        edges, nodes = ours.edge_group == k, ours.node_group == k
        assert torch.allclose(theirs.edge_mask[ours.edge_id[edges]], ours.edge_mask[edges], atol=1e-6)
        assert torch.allclose(theirs.node_mask[ours.node_id[nodes]], ours.feature_mask[nodes], atol=1e-6)
        assert torch.allclose(ours.node_mask[nodes], ours.feature_mask[nodes].sum(1) if method != "Saliency"
                              else ours.feature_mask[nodes].abs().sum(1))


def test_integrated_gradients_is_complete_for_a_graph_task():
    """Completeness: the attributions of features and edges sum to f(input) - f(baseline)."""
    molecules, model = make_molecules(4, seed=1), _gin()
    ours = IntegratedGradients(model, steps=256)(molecules, target=1)
    batch = batch_of(molecules)
    with torch.no_grad():
        full = model(batch.x, batch.edge_index, batch.batch)[:, 1]
        empty = model(torch.zeros_like(batch.x), batch.edge_index[:, :0], batch.batch)[:, 1]
    total = (torch.zeros(4).index_add_(0, ours.node_group, ours.node_mask)
             + torch.zeros(4).index_add_(0, ours.edge_group, ours.edge_mask))
    assert torch.allclose(total, full - empty, atol=2e-3)


def test_random_explainer_is_seeded_and_zero_outside_the_computation_graph():
    data, model = _small_ba(), _gcn()
    first = RandomExplainer(model, seed=1)(data, torch.tensor([41, 3]))
    assert torch.equal(first.edge_mask, RandomExplainer(model, seed=1)(data, torch.tensor([41, 3])).edge_mask)
    assert not torch.equal(first.edge_mask, RandomExplainer(model, seed=2)(data, torch.tensor([41, 3])).edge_mask)
    assert (first.edge_mask[~first.active] == 0).all() and (first.edge_mask[first.active] > 0).all()


def test_explainers_check_their_inputs():
    data, model = _small_ba(), _gcn()
    with pytest.raises(TypeError, match="model"):
        GradientSaliency("not a model")
    with pytest.raises(ValueError, match="epochs"):
        GNNExplainer(model, epochs=0)
    with pytest.raises(ValueError, match="index"):
        GradientSaliency(model)(data)
    with pytest.raises(ValueError, match="target"):
        GradientSaliency(model)(data, torch.tensor([1, 2]), target=torch.tensor([0]))
    with pytest.raises(ValueError, match="num_hops"):
        GradientSaliency(torch.nn.Linear(2, 2))(data, torch.tensor([1]))
    with pytest.raises(ValueError, match="steps"):
        IntegratedGradients(model, steps=0)


# ----------------------------------------------------------------------------- metrics


def _brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores.tolist(), labels.tolist()) if y]
    neg = [s for s, y in zip(scores.tolist(), labels.tolist()) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_brute_force_and_pyg():
    g = torch.Generator().manual_seed(0)
    for size in (7, 30, 200):
        scores = torch.randint(0, 5, (size,), generator=g).float() / 4  # many ties
        labels = torch.rand(size, generator=g) < 0.4
        labels[0], labels[1] = True, False
        ours = auroc(scores, labels).item()
        assert abs(ours - _brute_auroc(scores, labels)) < 1e-12
        assert abs(ours - groundtruth_metrics(scores, labels.float(), "auroc")) < 1e-6
    group = torch.randint(0, 4, (200,), generator=g)
    per_group = auroc(scores, labels, group)
    for k in range(4):
        chosen = group == k
        assert abs(per_group[k].item() - _brute_auroc(scores[chosen], labels[chosen])) < 1e-12
    assert torch.isnan(auroc(scores[:3], torch.ones(3, dtype=torch.bool)))
    with pytest.raises(TypeError, match="labels"):
        auroc(scores, labels.float())
    with pytest.raises(ValueError, match="group"):
        auroc(scores, labels, group[:5])


def test_precision_at_k_and_top_k_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    scores, labels = torch.rand(60, generator=g), torch.rand(60, generator=g) < 0.3
    group = torch.randint(0, 5, (60,), generator=g)
    top = top_k_mask(scores, 4, group)
    got = precision_at_k(scores, labels, 4, group)
    for k in range(5):
        members = (group == k).nonzero()[:, 0].tolist()
        best = sorted(members, key=lambda i: -scores[i].item())[:4]
        assert set(top.nonzero()[:, 0].tolist()) & set(members) == set(best)
        assert abs(got[k].item() - sum(labels[i].item() for i in best) / len(best)) < 1e-12
    assert precision_at_k(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, True]), 2).item() == 0.5
    with pytest.raises(ValueError, match="k"):
        precision_at_k(scores, labels, 0)


def test_symmetrize_averages_the_two_directions():
    edge_index = torch.tensor([[0, 1, 1, 2, 3], [1, 0, 2, 1, 0]])
    mask = torch.tensor([1.0, 3.0, 0.0, 4.0, 5.0])
    assert torch.equal(graphs.symmetrize(mask, edge_index), torch.tensor([2.0, 2.0, 2.0, 2.0, 5.0]))
    active = torch.tensor([True, True, True, False, True])
    assert torch.equal(graphs.symmetrize(mask, edge_index, active), torch.tensor([2.0, 2.0, 0.0, 4.0, 5.0]))
    # a random mask stays at chance when some reverse directions are inactive
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, 300, (2, 3000), generator=g)
    pairs = torch.unique(torch.cat([pairs, pairs.flip(0)], 1), dim=1)
    active = torch.rand(pairs.shape[1], generator=g) < 0.7
    scores, truth = torch.rand(pairs.shape[1], generator=g), pairs.min(0).values < 100
    both = graphs.symmetrize(scores, pairs, active)
    assert abs(auroc(both[active], truth[active]).item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="edge_index"):
        graphs.symmetrize(mask, edge_index[:, :3])


def test_fidelity_equals_pyg_for_graphs_and_for_a_node():
    molecules, model = make_molecules(16, seed=2), _gin()
    explanation = RandomExplainer(model, seed=0)(molecules)
    node_mask = (torch.rand(len(explanation.x), generator=torch.Generator().manual_seed(3)) > 0.5).float()
    edge_mask = top_k_mask(explanation.edge_mask, 5, explanation.edge_group).float()
    ours = fidelity(model, explanation, node_mask, edge_mask)
    batch = batch_of(molecules)
    explainer = Explainer(model, PyGGNNExplainer(epochs=1), explanation_type="model", node_mask_type="object",
                          edge_mask_type="object", model_config=_config("graph"))
    theirs = explainer(batch.x, batch.edge_index, batch=batch.batch)
    theirs.node_mask, theirs.edge_mask = node_mask[:, None], edge_mask
    assert ours == pytest.approx(pyg_fidelity(explainer, theirs), abs=1e-6)

    data, gcn = _small_ba(), _gcn()
    node = 47
    explanation = GradientSaliency(gcn)(data, torch.tensor([node]))
    edge_mask = top_k_mask(explanation.edge_mask, 4).float()
    ours = fidelity(gcn, explanation, edge_mask=edge_mask)
    explainer = Explainer(gcn, PyGGNNExplainer(epochs=1), explanation_type="model", edge_mask_type="object",
                          model_config=_config("node"))
    theirs = explainer(data.x, data.edge_index, index=node)
    whole = torch.zeros(data.num_edges)
    whole[explanation.edge_id] = edge_mask
    theirs.edge_mask = whole
    assert ours == pytest.approx(pyg_fidelity(explainer, theirs), abs=1e-6)


def test_fidelity_sees_a_decisive_explanation():
    """On the molecules, removing the true group (its atoms' features and its bonds) changes most
    of a trained GIN's 'nitro' predictions; removing nothing changes none."""
    molecules = make_molecules(200, seed=4)
    torch.manual_seed(0)
    model = GIN(4, 2, hidden_channels=16)
    fit_gnn(model, molecules, epochs=15, lr=0.01)
    positives = [m for m in molecules if m.y.item() == 1]
    explanation = RandomExplainer(model)(positives)
    batch = batch_of(positives)
    nodes, edges = batch.node_mask.float(), batch.edge_mask[explanation.edge_id].float()
    plus_truth, minus_truth = fidelity(model, explanation, nodes, edges)
    plus_none, minus_none = fidelity(model, explanation, torch.zeros_like(nodes), torch.zeros_like(edges))
    assert plus_none == 0.0, "removing nothing changes nothing"
    assert plus_truth > 0.5, (plus_truth, minus_truth, minus_none)


# ----------------------------------------------------------------------------- training


def test_fit_gnn_trains_a_node_and_a_graph_classifier():
    molecules = make_molecules(160, seed=5)
    torch.manual_seed(0)
    model = GIN(4, 2, hidden_channels=16)
    losses = fit_gnn(model, molecules[:120], epochs=40, lr=0.01, seed=0)
    assert losses[-1] < losses[0] / 2
    assert graphs.accuracy(model, molecules[120:]) >= 0.85
    data = _small_ba()
    gcn = GCN(10, 4)
    losses = fit_gnn(gcn, data, epochs=50, lr=0.01)
    assert losses[-1] < losses[0]
    with pytest.raises(TypeError, match="data"):
        fit_gnn(model, [1, 2])
    with pytest.raises(ValueError, match="epochs"):
        fit_gnn(model, molecules, epochs=0)
    with pytest.raises(ValueError, match="split"):
        graphs.accuracy(gcn, data, split="val")


# ----------------------------------------------------------------------------- model state

DATA = _small_ba
NODES = torch.tensor([41, 3])

CASES = {
    "fit_gnn": (_gcn, lambda m: fit_gnn(m, DATA(), epochs=2), True),
    "predict_gnn": (_gcn, lambda m: graphs.predict_gnn(m, DATA()), False),
    "accuracy": (_gcn, lambda m: graphs.accuracy(m, DATA()), False),
    "GNNExplainer": (_gcn, lambda m: GNNExplainer(m, epochs=3)(DATA(), NODES), False),
    "GNNExplainer (graphs)": (_gin, lambda m: GNNExplainer(m, epochs=3)(make_molecules(3)), False),
    "GradientSaliency": (_gcn, lambda m: GradientSaliency(m)(DATA(), NODES), False),
    "IntegratedGradients": (_gin, lambda m: IntegratedGradients(m, steps=3)(make_molecules(3)), False),
    "RandomExplainer": (_gcn, lambda m: RandomExplainer(m)(DATA(), NODES), False),
    "fidelity": (_gcn, lambda m: fidelity(m, RandomExplainer(m)(DATA(), NODES)), False),
}


def _masks_cleared(model) -> bool:
    return all(not module.explain and module._edge_mask is None
               for module in model.modules() if isinstance(module, MessagePassing))


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_function_keeps_the_model_state(name):
    factory, call, trains = CASES[name]
    model = mix_states(factory())
    before = snapshot(model)
    call(model)
    assert_state_kept(model, before, trains=trains)
    assert _masks_cleared(model), "edge masks left in the model"


@pytest.mark.parametrize("name", sorted(name for name, case in CASES.items() if not case[2]))
def test_public_function_keeps_the_model_state_under_no_grad(name):
    factory, call, _ = CASES[name]
    model = mix_states(factory())
    before = snapshot(model)
    with torch.no_grad():
        call(model)
    assert_state_kept(model, before)


def test_every_public_function_that_takes_a_model_is_covered():
    covered = {name.split(" ")[0] for name in CASES}
    missing = public_api_taking_a_model(graphs) - covered
    assert not missing, f"no state test for {sorted(missing)}"


# ----------------------------------------------------------------------------- chapter 9's questions


def _questions():
    from xnn_lab.grading.questions import ch09_graphs

    return ch09_graphs.QUESTIONS


@functools.cache
def _solution_namespace() -> dict:
    notebook = nbformat.read(ROOT / "solutions" / "09_graphs.ipynb", as_version=4)
    namespace: dict = {"__name__": "solution_09_graphs"}
    for cell in notebook.cells:
        grading = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not grading.get("grade", False):
            exec(compile(cell.source, f"<09_graphs {grading.get('grade_id')}>", "exec"), namespace)
    return namespace


def _leaves(value):
    if isinstance(value, torch.Tensor):
        return [str(value.dtype), value.tolist()]
    if isinstance(value, (tuple, list)):
        return [_leaves(v) for v in value]
    return value


def _fails(question, result, expected) -> bool:
    try:
        question.compare(result, expected)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("name", ["gcn_layer", "k_hop_nodes", "edge_auroc", "precision_at_k"])
def test_question_trials_are_fresh_and_the_solution_passes_them(name):
    question = next(q for q in _questions() if q.name == name)
    trials = question.inputs(0)
    assert len(trials) >= 3
    assert _leaves(trials) == _leaves(question.inputs(0)), "reproducible per seed"
    assert _leaves(trials) != _leaves(question.inputs(1)), "fresh per seed"
    answer = _solution_namespace()[name]
    for seed in (0, 1, 2):
        expected = [question.reference(*t) for t in question.inputs(seed)]
        for trial, want in zip(question.inputs(seed), expected):
            question.compare(answer(*trial), want)
        assert any(_fails(question, expected[0], other) for other in expected[1:])


def test_wrong_answers_fail_the_questions():
    questions = {q.name: q for q in _questions()}
    ns = _solution_namespace()
    wrong = {
        "gcn_layer": _gcn_without_self_loops,
        "k_hop_nodes": lambda e, node, hops, n: ns["k_hop_nodes"](e, node, max(hops - 1, 0), n),
        "edge_auroc": lambda s, y: float(((s[y][:, None] > s[~y][None]).double()).mean()),
        "precision_at_k": lambda s, y, k: ns["precision_at_k"](s, y, k + 1),
    }
    for name, answer in wrong.items():
        question = questions[name]
        failed = any(_fails(question, answer(*trial), question.reference(*trial)) for trial in question.inputs(0))
        assert failed, name


def _gcn_without_self_loops(x, edge_index, weight, bias):
    degree = torch.zeros(len(x), dtype=x.dtype).index_add_(0, edge_index[1], torch.ones(edge_index.shape[1],
                                                                                            dtype=x.dtype))
    norm = (degree[edge_index[0]] * degree[edge_index[1]]).rsqrt()
    messages = (x @ weight.T)[edge_index[0]] * norm[:, None]
    return torch.zeros(len(x), weight.shape[0], dtype=x.dtype).index_add_(0, edge_index[1], messages) + bias


def test_questions_match_the_solution_cells():
    notebook = nbformat.read(ROOT / "solutions" / "09_graphs.ipynb", as_version=4)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in notebook.cells}
    assert len(_questions()) >= 4
    for question in _questions():
        answer, check = cells[question.grade_id], cells[f"{question.grade_id}_test"]
        assert "### BEGIN SOLUTION" in answer.source and question.name in answer.source
        assert check.metadata["nbgrader"]["points"] == question.points


def test_bench_graphs_times_every_house_node(capsys):
    from xnn_lab.bench import bench_graphs

    result = bench_graphs(epochs=2, steps=2, pyg_nodes=1, repeats=1, device="cpu")
    assert result["nodes"] == 400
    assert all(result[key] > 0 for key in ("gnnexplainer_s", "saliency_s", "integrated_gradients_s",
                                            "pyg_gnnexplainer_s"))
    assert result["pyg/xnn_lab gnnexplainer"] == pytest.approx(result["pyg_gnnexplainer_s"] / result["gnnexplainer_s"])
    assert "400 house nodes" in capsys.readouterr().out
    with pytest.raises(ValueError, match="pyg_nodes"):
        bench_graphs(pyg_nodes=0)


def test_graph_figures_draw_parts_and_check_their_inputs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xnn_lab.viz import plot_explanations, plot_graph

    data, model = _small_ba(), _gcn()
    explanation = GradientSaliency(model)(data, torch.tensor([41, 3]))
    fig = plot_explanations(explanation, [0, 1], titles=["a", "b"])
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["a", "b"]
    with pytest.raises(ValueError, match="edge_values"):
        plot_graph(explanation.edge_index, len(explanation.x), edge_values=torch.ones(3))
    with pytest.raises(ValueError, match="titles"):
        plot_explanations(explanation, [0, 1], titles=["a"])
    plt.close("all")
