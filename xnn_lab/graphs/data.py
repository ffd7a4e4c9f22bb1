"""Graph data sets whose true explanation is known, generated in code (nothing is downloaded).

- :func:`make_ba_shapes`: node classification on BA-Shapes (Ying et al., 2019), built with
  PyTorch Geometric's ``ExplainerDataset``: a Barabasi-Albert graph with house motifs attached;
  a node's class is its place in a house (0 base, 1 middle, 2 bottom, 3 the roof's top). The house edges
  are the true explanation.
- :func:`make_molecules`: graph classification on molecule-like graphs. Random scaffolds of
  carbon rings and chains carry decoy groups; class 1 graphs also carry one nitro-like group
  (a nitrogen bonded to two oxygens) on a ring carbon. The group's three atoms and its two N-O
  bonds are the true explanation.
- :func:`make_superpixel_graphs`: the Shapes images of chapters 1 to 3 cut into SLIC
  superpixels, as region adjacency graphs whose nodes carry colour, position and size; a
  superpixel is true evidence when most of its pixels lie on the target object's mask.

Graphs are ``torch_geometric.data.Data`` objects; edges are stored in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from xnn_lab._core.checks import check_float, check_int

ATOM_TYPES = ("C", "N", "O", "S")
HOUSE_ROLES = ("base", "middle", "bottom", "top")
SUPERPIXEL_FEATURES = ("red", "green", "blue", "x", "y", "size", "spread")


def _seed(seed) -> int:
    return check_int("seed", seed, minimum=0)


def make_ba_shapes(num_base: int = 300, num_motifs: int = 80, *, base_edges: int = 5,
                   train_fraction: float = 0.8, seed: int = 0) -> Data:
    """BA-Shapes: a Barabasi-Albert graph with ``num_motifs`` five-node houses attached.

    The graph and motifs come from ``torch_geometric.datasets.ExplainerDataset`` (with
    ``BAGraph`` and the ``"house"`` motif), drawn under ``seed``; PyTorch's and NumPy's global
    random streams are left as they were. As in the paper, every node has the same 10 features (all ones), so only the
    structure tells the classes apart.

    Args:
        num_base: nodes of the Barabasi-Albert graph, at least ``base_edges + 1``.
        num_motifs: houses attached, each by one edge to a random base node.
        base_edges: edges each new Barabasi-Albert node brings.
        train_fraction: share of the nodes in ``train_mask``; the rest are ``test_mask``.
        seed: a non-negative integer.

    Returns:
        a ``Data`` with ``x`` (N, 10), ``y`` (N,) in ``HOUSE_ROLES`` order, ``edge_index``
        (2, E), the ground truth ``node_mask`` (N,) and ``edge_mask`` (E,) (bool: on a house),
        ``motif`` (N,) the house of each node (-1 for base nodes), and bool ``train_mask`` and
        ``test_mask`` (N,).
    """
    from torch_geometric.datasets import ExplainerDataset
    from torch_geometric.datasets.graph_generator import BAGraph

    base_edges = check_int("base_edges", base_edges, minimum=1)
    num_base = check_int("num_base", num_base, minimum=base_edges + 1)
    num_motifs = check_int("num_motifs", num_motifs, minimum=1)
    train_fraction = check_float("train_fraction", train_fraction, minimum=0.0, maximum=1.0,
                                 open_min=True)
    seed = _seed(seed)
    numpy_state = np.random.get_state()  # PyG's barabasi_albert_graph draws from NumPy too
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            dataset = ExplainerDataset(graph_generator=BAGraph(num_base, base_edges),
                                       motif_generator="house", num_motifs=num_motifs)
            graph = dataset[0]
            order = torch.randperm(graph.num_nodes)
    finally:
        np.random.set_state(numpy_state)
    n = graph.num_nodes
    motif = torch.full((n,), -1, dtype=torch.long)
    motif[num_base:] = torch.arange(n - num_base) // 5
    train = torch.zeros(n, dtype=torch.bool)
    train[order[: int(round(train_fraction * n))]] = True
    return Data(x=torch.ones(n, 10), y=graph.y, edge_index=graph.edge_index,
                node_mask=graph.node_mask.bool(), edge_mask=graph.edge_mask.bool(), motif=motif,
                train_mask=train, test_mask=~train)


class _Molecule:
    """A molecule under construction: atom types and bonds, with the true group marked."""

    def __init__(self, g: torch.Generator):
        self.g, self.atoms, self.bonds, self.group = g, [], [], set()

    def rand(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.g))

    def add(self, atom: str, *neighbours: int) -> int:
        self.atoms.append(ATOM_TYPES.index(atom))
        index = len(self.atoms) - 1
        self.bonds += [(n, index) for n in neighbours]
        return index

    def ring(self, attach: int | None) -> list[int]:
        size = 5 + self.rand(2)
        first = self.add("C", *(() if attach is None else (attach,)))
        ring = [first]
        for _ in range(size - 1):
            ring.append(self.add("S" if self.rand(8) == 0 else "C", ring[-1]))
        self.bonds.append((ring[-1], first))
        return ring

    def substituent(self, at: int, kind: str) -> None:
        if kind == "hydroxyl":
            self.add("O", at)
        elif kind == "amine":
            self.add("N", at)
        elif kind == "nitroso":
            self.add("O", self.add("N", at))
        elif kind == "carboxyl":
            carbon = self.add("C", at)
            self.add("O", carbon)
            self.add("O", carbon)
        elif kind == "peroxide":
            self.add("O", self.add("O", at))
        elif kind == "nitro":
            nitrogen = self.add("N", at)
            self.group |= {nitrogen, self.add("O", nitrogen), self.add("O", nitrogen)}
        else:  # methyl
            self.add("C", at)


DECOYS = ("hydroxyl", "amine", "nitroso", "carboxyl", "peroxide", "methyl")


def _molecule(label: int, g: torch.Generator) -> Data:
    mol = _Molecule(g)
    rings = [mol.ring(None)]
    for _ in range(mol.rand(3)):
        chain = rings[-1][mol.rand(len(rings[-1]))]
        for _ in range(mol.rand(3)):
            chain = mol.add("C", chain)
        rings.append(mol.ring(chain))
    ring_atoms = [a for ring in rings for a in ring]
    free = [a for a in ring_atoms]
    order = torch.randperm(len(free), generator=g).tolist()
    sites = [free[i] for i in order]
    kinds = [DECOYS[mol.rand(len(DECOYS))] for _ in range(min(2 + mol.rand(4), len(sites) - 1))]
    if label == 1:
        kinds.insert(mol.rand(len(kinds) + 1), "nitro")
    for site, kind in zip(sites, kinds):
        mol.substituent(site, kind)
    n = len(mol.atoms)
    bonds = torch.tensor(mol.bonds, dtype=torch.long).t()
    edge_index = torch.cat([bonds, bonds.flip(0)], 1)
    node_mask = torch.zeros(n, dtype=torch.bool)
    node_mask[list(mol.group)] = True
    edge_mask = node_mask[edge_index[0]] & node_mask[edge_index[1]]
    x = torch.nn.functional.one_hot(torch.tensor(mol.atoms), len(ATOM_TYPES)).float()
    return Data(x=x, edge_index=edge_index, y=torch.tensor([label]), node_mask=node_mask,
                edge_mask=edge_mask)


def make_molecules(n: int = 600, *, seed: int = 0) -> list[Data]:
    """Molecule-like graphs whose class is decided by a nitro-like functional group.

    Each graph is a scaffold of 1 to 3 carbon rings (5 or 6 atoms; a ring atom is sulphur with
    probability 1/8) joined by carbon chains of 0 to 2 atoms, with 2 to 5 decoy groups on ring
    atoms: hydroxyl (O), amine (N), nitroso (N-O), carboxyl-like (C with two O), peroxide-like
    (O-O) and methyl (C). Half the graphs (class 1) also carry one nitro-like group: an N on a
    ring atom bonded to two O. Only that group tells the classes apart: each of its parts (an N
    on a ring, an N-O bond, an atom with two O neighbours) also occurs in the decoys.

    Args:
        n: number of graphs (classes alternate 0, 1, 0, ...).
        seed: a non-negative integer.

    Returns:
        a list of ``Data``, each with ``x`` (atoms, 4) one-hot over ``ATOM_TYPES``,
        ``edge_index``, ``y`` (1,), and the ground truth ``node_mask`` (the group's N and two O)
        and ``edge_mask`` (its two N-O bonds, both directions); both all False in class 0.
    """
    n = check_int("n", n, minimum=1)
    g = torch.Generator().manual_seed(_seed(seed))
    return [_molecule(i % 2, g) for i in range(n)]


@dataclass(frozen=True, eq=False, repr=False)
class SuperpixelGraphs:
    """Images as region adjacency graphs of SLIC superpixels.

    Attributes:
        graphs: one ``Data`` per image: ``x`` (regions, 7) with ``SUPERPIXEL_FEATURES`` (mean
            RGB, centroid x and y in [0, 1], share of the image's pixels, and the mean RGB
            standard deviation within the region), ``edge_index`` between regions that touch
            (4-neighbourhood), ``y`` (1,), ``node_mask`` (regions,) bool: at least half of the
            region on the object's mask, and ``overlap`` (regions,) that share.
        segments: ``(N, H, W)`` int64, each pixel's region index within its graph.
        images: the images, ``(N, 3, H, W)``; masks: their ground-truth masks, ``(N, H, W)``.
        labels: ``(N,)``.
    """

    graphs: list
    segments: torch.Tensor
    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.graphs)

    def __repr__(self) -> str:
        nodes = sum(g.num_nodes for g in self.graphs) / max(len(self.graphs), 1)
        return f"SuperpixelGraphs(n={len(self)}, mean regions={nodes:.1f})"


def _region_graph(image: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple:
    regions = int(labels.max()) + 1
    height, width = labels.shape
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=regions).astype(np.float64)
    pixels = image.reshape(-1, 3).astype(np.float64)
    mean = np.stack([np.bincount(flat, pixels[:, c], regions) for c in range(3)], 1) / counts[:, None]
    square = np.stack([np.bincount(flat, pixels[:, c] ** 2, regions) for c in range(3)], 1)
    spread = np.sqrt(np.clip(square / counts[:, None] - mean**2, 0, None)).mean(1)
    rows, cols = np.divmod(np.arange(flat.size), width)
    cx = np.bincount(flat, cols, regions) / counts / (width - 1)
    cy = np.bincount(flat, rows, regions) / counts / (height - 1)
    features = np.column_stack([mean, cx, cy, counts / flat.size, spread])
    pairs = np.concatenate([np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
                            np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)
    overlap = np.bincount(flat, mask.ravel().astype(np.float64), regions) / counts
    return features, pairs.T, overlap


def make_superpixel_graphs(shapes, *, n_segments: int = 60, compactness: float = 10.0) -> SuperpixelGraphs:
    """Cut images with ground-truth masks into SLIC superpixels and build their adjacency graphs.

    Args:
        shapes: a data set with ``images`` (N, 3, H, W) in [0, 1], ``masks`` (N, H, W) and
            ``labels`` (N,), such as ``xnn_lab.data.make_shapes(...)``.
        n_segments: the number of superpixels SLIC aims at per image.
        compactness: SLIC's trade-off between colour and space (higher: squarer regions).

    Returns:
        a :class:`SuperpixelGraphs`. SLIC is deterministic, so the same images give the same graphs.
    """
    from skimage.segmentation import slic

    for name in ("images", "masks", "labels"):
        if not isinstance(getattr(shapes, name, None), torch.Tensor):
            raise TypeError(f"shapes must have tensors images, masks and labels (like make_shapes' "
                            f"result), got {type(shapes).__name__} without {name!r}")
    if shapes.images.ndim != 4 or shapes.images.shape[1] != 3:
        raise ValueError(f"shapes.images must be (N, 3, H, W), got {tuple(shapes.images.shape)}")
    n_segments = check_int("n_segments", n_segments, minimum=2)
    compactness = check_float("compactness", compactness, minimum=0.0, open_min=True)
    images = shapes.images.detach().cpu()
    masks = shapes.masks.detach().cpu().bool()
    labels = shapes.labels.detach().cpu()
    graphs, segments = [], []
    for image, mask, label in zip(images.permute(0, 2, 3, 1).numpy(), masks.numpy(), labels):
        regions = slic(image, n_segments=n_segments, compactness=compactness, start_label=0,
                       channel_axis=-1)
        features, edges, overlap = _region_graph(image, regions, mask)
        overlap = torch.from_numpy(overlap).float()
        graphs.append(Data(x=torch.from_numpy(features).float(), edge_index=torch.from_numpy(edges).long(),
                           y=label.view(1), node_mask=overlap >= 0.5, overlap=overlap))
        segments.append(torch.from_numpy(regions).long())
    return SuperpixelGraphs(graphs, torch.stack(segments), images, masks, labels)


def node_maps(node_scores: torch.Tensor, batch: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Paint each superpixel's score onto its pixels: node scores to (N, H, W) saliency maps.

    Args:
        node_scores: (total regions,) one score per node of a batch of superpixel graphs.
        batch: (total regions,) the graph of each node (as in a ``Batch``), graphs 0..N-1.
        segments: (N, H, W) each pixel's region index within its graph.

    Returns:
        (N, H, W) maps on ``node_scores``' device, so a graph explanation can be scored with the
        pixel-level metrics of chapter 3 (``xnn_lab.metrics``).
    """
    from xnn_lab._core.checks import check_tensor

    check_tensor("node_scores", node_scores, ndim=1)
    check_tensor("batch", batch, ndim=1, integral=True)
    check_tensor("segments", segments, ndim=3, integral=True)
    if len(batch) != len(node_scores):
        raise ValueError(f"batch must have one entry per node score ({len(node_scores)}), got {len(batch)}")
    counts = torch.bincount(batch, minlength=len(segments))
    if len(counts) != len(segments):
        raise ValueError(f"batch names {len(counts)} graphs but segments holds {len(segments)}")
    offsets = torch.cumsum(counts, 0) - counts
    segments = segments.to(node_scores.device)
    index = segments + offsets.to(node_scores.device)[:, None, None]
    if bool((segments.flatten(1).amax(1).cpu() >= counts.cpu()).any()):
        raise ValueError("segments name more regions than batch holds for some graph")
    return node_scores[index]


def batch_of(graphs) -> Batch:
    """The graphs as one ``torch_geometric.data.Batch`` (one disjoint graph)."""
    if isinstance(graphs, Batch):
        return graphs
    if isinstance(graphs, Data):
        return Batch.from_data_list([graphs])
    graphs = list(graphs)
    if not graphs or not all(isinstance(g, Data) for g in graphs):
        raise TypeError("graphs must be a non-empty sequence of torch_geometric.data.Data")
    return Batch.from_data_list(graphs)
