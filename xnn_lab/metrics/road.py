r"""ROAD: remove and debias (Rong et al., 2022), with noisy linear imputation.

Deletion puts a constant on the removed pixels, which leaves images unlike any training image
and leaks the shape of the removed region (the mask) to the model. ROAD instead fills each
removed pixel with the weighted mean of its eight neighbours, solved jointly for all removed
pixels, and adds a little Gaussian noise:

.. math:: x_i = \frac{\sum_{j \in N(i)} w_{ij} x_j}{\sum_{j \in N(i)} w_{ij}}
   \quad \text{for every removed pixel } i, \qquad
   w_{ij} = 1/6 \text{ (edge neighbours)},\ 1/12 \text{ (diagonal ones)},

with the kept pixels fixed; :math:`N(i)` are the neighbours inside the image. This is a sparse,
symmetric positive definite linear system (a weighted graph Laplacian on the removed pixels).
On a CPU it is solved exactly, one sparse LU factorisation per image (SciPy's ``spsolve``, all
channels at once), which is the fastest way there; on a GPU, for every image and channel of the
batch at once by Jacobi-preconditioned conjugate gradients.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xnn_lab._core.checks import check_choice, check_float, check_images, check_int, check_tensor, input_errors
from xnn_lab._core.state import model_state
from xnn_lab.metrics.perturbation import _check_curve_inputs, _target_probabilities, saliency_ranks

#: ROAD's neighbour weights: 1/6 for the four edge neighbours, 1/12 for the four diagonal ones.
NEIGHBOUR_WEIGHTS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def _neighbour_sum(values: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij values_j over the neighbours inside the image, for (M, 1, H, W) values."""
    return F.conv2d(values, kernel, padding=1)


def _coarse_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A first guess for the removed pixels: the mean of the kept ones in ever larger blocks (push-pull)."""
    levels = [(x * known, known)]
    while min(levels[-1][0].shape[-2:]) > 1:
        total, count = levels[-1]
        levels.append((F.avg_pool2d(total, 2, ceil_mode=True), F.avg_pool2d(count, 2, ceil_mode=True)))
    total, count = levels[-1]
    fill = torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))
    for total, count in reversed(levels[:-1]):
        fill = F.interpolate(fill, size=total.shape[-2:], mode="bilinear", align_corners=False)
        fill = torch.where(count > 0, total / count.clamp_min(1e-12), fill)
    return fill


_OFFSETS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
            (1, 0, 1 / 6), (-1, 0, 1 / 6))


def _direct_solve(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The system of one (C, H, W) float64 image, built as a sparse matrix and solved by sparse LU."""
    import scipy.sparse
    import scipy.sparse.linalg

    channels, height, width = image.shape
    flat = image.reshape(channels, -1).T
    mask = removed.reshape(-1)
    unknown = np.flatnonzero(mask)
    count = len(unknown)
    variable = np.full(height * width, -1, dtype=np.int64)
    variable[unknown] = np.arange(count)
    row, col = np.divmod(unknown, width)
    rows, cols, values = [np.arange(count)], [np.arange(count)], []
    degree = np.zeros(count)
    rhs = np.zeros((count, channels))
    for dy, dx, weight in _OFFSETS:
        y, x = row + dy, col + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        degree[inside] += weight
        equation = np.flatnonzero(inside)
        neighbour = y[inside] * width + x[inside]
        free = mask[neighbour]
        rows.append(equation[free])
        cols.append(variable[neighbour[free]])
        values.append(np.full(int(free.sum()), -weight))
        np.add.at(rhs, equation[~free], weight * flat[neighbour[~free]])
    matrix = scipy.sparse.csc_matrix((np.concatenate([degree, *values]), (np.concatenate(rows), np.concatenate(cols))),
                                     shape=(count, count))
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(count, channels)
    out = flat.copy()
    out[unknown] = solution
    return out.T.reshape(channels, height, width)


def noisy_linear_imputation(images: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01, seed: int = 0,
                            method: str = "auto", tol: float = 1e-4, max_iter: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation: removed pixels become the weighted mean of their neighbours, plus noise.

    Solves, for each image and channel, the linear system of the module docstring (every removed
    pixel equals the weighted mean of its in-image neighbours, kept pixels fixed), then adds
    Gaussian noise of standard deviation ``noise`` to the imputed pixels only. An image with every
    pixel removed has no value to spread and is filled with 0 (plus noise).

    Args:
        images: (N, C, H, W) images.
        removed: (N, H, W) or (N, 1, H, W) bool, True where a pixel is removed (all its channels).
        noise: standard deviation of the noise added to the imputed pixels, >= 0 (ROAD uses 0.01).
        seed: seeds the noise (drawn on the CPU, so one seed gives the same noise on every device).
        method: ``"direct"`` (sparse LU per image on the CPU, exact), ``"cg"`` (batched conjugate
            gradients on the images' device) or ``"auto"`` (direct for CPU tensors, else cg).
        tol: conjugate gradients stop when every system's residual norm is below ``tol`` times
            the norm of its right-hand side.
        max_iter: the most iterations; by default H * W, the bound at which conjugate gradients
            are exact in exact arithmetic.

    Returns:
        (N, C, H, W) images: kept pixels unchanged, removed ones imputed.

    Raises:
        RuntimeError: conjugate gradients did not reach ``tol`` within ``max_iter`` iterations.
    """
    check_images("images", images)
    check_tensor("removed", removed, ndim=(3, 4))
    if removed.dtype != torch.bool:
        raise TypeError(f"removed must be a bool tensor, got dtype {removed.dtype}")
    n, c, h, w = images.shape
    if removed.ndim == 4:
        if removed.shape[1] != 1:
            raise ValueError(f"removed must have shape (N, H, W) or (N, 1, H, W), got {tuple(removed.shape)}")
        removed = removed[:, 0]
    if removed.shape != (n, h, w):
        raise ValueError(f"removed must have shape {(n, h, w)} (one mask per image), got {tuple(removed.shape)}")
    noise = check_float("noise", noise, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    tol = check_float("tol", tol, minimum=0.0, open_min=True)
    max_iter = h * w if max_iter is None else check_int("max_iter", max_iter, minimum=1)
    check_choice("method", method, ("auto", "direct", "cg"))
    if method == "direct" or (method == "auto" and images.device.type == "cpu"):
        generator = torch.Generator().manual_seed(seed)
        jitter = noise * torch.randn(images.shape, generator=generator, dtype=torch.float64)
        source = images.detach().cpu().to(torch.float64).numpy()
        mask = removed.cpu().numpy()
        filled = np.stack([_direct_solve(source[k], mask[k]) if mask[k].any() and not mask[k].all()
                           else np.where(mask[k], 0.0, source[k]) for k in range(n)])
        out = torch.from_numpy(filled) + jitter * removed.cpu()[:, None]
        return out.to(images.device, images.dtype)

    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(dtype).reshape(n * c, 1, h, w)
    unknown = removed.to(images.device).repeat_interleave(c, dim=0)[:, None]            # (M, 1, H, W)
    known = (~unknown).to(dtype)
    kernel = NEIGHBOUR_WEIGHTS.to(dtype=dtype, device=images.device).view(1, 1, 3, 3)
    # sum of the weights of the in-image neighbours: 1 inside, less at the border
    degree = _neighbour_sum(torch.ones(1, 1, h, w, dtype=dtype, device=images.device), kernel)
    mask = unknown.to(dtype)

    def operator(v):  # (D - W) restricted to the removed pixels: SPD when a kept pixel exists
        return mask * (degree * v - _neighbour_sum(v * mask, kernel))

    b = mask * _neighbour_sum(x * known, kernel)
    solution = mask * _coarse_fill(x, known)  # a smooth first guess saves most of the iterations
    residual = b - operator(solution)
    inverse_diagonal = mask / degree
    z = inverse_diagonal * residual
    direction = z.clone()
    rz = (residual * z).sum((1, 2, 3))
    goal = tol * b.flatten(1).norm(dim=1)
    for _ in range(max_iter):
        if bool((residual.flatten(1).norm(dim=1) <= goal).all()):
            break
        q = operator(direction)
        dq = (direction * q).sum((1, 2, 3))
        step = torch.where(dq > 0, rz / dq.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(rz))
        solution = solution + step.view(-1, 1, 1, 1) * direction
        residual = residual - step.view(-1, 1, 1, 1) * q
        z = inverse_diagonal * residual
        rz_new = (residual * z).sum((1, 2, 3))
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(rz))
        direction = z + beta.view(-1, 1, 1, 1) * direction
        rz = rz_new
    else:
        if not bool((residual.flatten(1).norm(dim=1) <= goal).all()):
            raise RuntimeError(f"noisy_linear_imputation: conjugate gradients did not converge to tol={tol} in "
                               f"{max_iter} iterations; raise max_iter or tol")
    generator = torch.Generator().manual_seed(seed)
    jitter = noise * torch.randn(x.shape, generator=generator, dtype=dtype).to(images.device)
    filled = torch.where(unknown, solution + jitter, x)
    return filled.view(n, c, h, w).to(images.dtype)


def road_curve(model, images: torch.Tensor, maps: torch.Tensor, target, *, fractions=None, order: str = "morf",
               noise: float = 0.01, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """ROAD (Rong et al., 2022): the class probability as pixels are removed and imputed.

    For each fraction p, the floor(p H W) most salient pixels (``"morf"``, most relevant first:
    a faithful map makes the probability fall fast, a low :func:`area_under_curve` is good) or
    least salient ones (``"lerf"``: the probability should stay high) of each image are removed
    and filled by :func:`noisy_linear_imputation`, and the model scores the result. The
    imputation removes what constant-colour deletion leaks: the model cannot read the removed
    region's shape from a uniform patch.

    Args:
        model: the classifier, mapping (B, C, H, W) images to (B, classes) logits; run in eval
            mode (each module's flag restored afterwards), without gradients.
        images: (N, C, H, W) images.
        maps: (N, H, W) saliency maps at the images' size (ties in random order, see
            :func:`xnn_lab.metrics.saliency_ranks`).
        target: the class to score, an int or an (N,) int tensor.
        fractions: the fractions of pixels removed, each in [0, 1]; by default 0, 0.1, ..., 0.9
            (ROAD's percentages, with the unperturbed image first).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        noise: the imputation's noise standard deviation (ROAD's 0.01).
        batch_size: perturbed images imputed and scored together.
        seed: orders pixels of equal saliency and seeds the noise.

    Returns:
        (N, F) softmax probabilities of the target class, one column per fraction.
    """
    target = _check_curve_inputs(model, images, maps, target)
    n, _, height, width = images.shape
    check_choice("order", order, ("morf", "lerf"))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if fractions is None:
        fractions = [i / 10 for i in range(10)]
    fractions = torch.as_tensor(fractions, dtype=torch.float64)
    if fractions.ndim != 1 or not len(fractions) or not bool(((fractions >= 0) & (fractions <= 1)).all()):
        raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {fractions.tolist()}")
    pixels = height * width
    ranks = saliency_ranks(maps.to(images.device), seed=seed)
    if order == "lerf":
        ranks = pixels - 1 - ranks
    counts = (fractions * pixels).floor().long().to(images.device)
    steps = len(counts)
    pairs = n * steps
    scores = torch.empty(pairs, dtype=images.dtype, device=images.device)
    with model_state(model), torch.no_grad():
        for chunk, start in enumerate(range(0, pairs, batch_size)):
            rows = torch.arange(start, min(start + batch_size, pairs), device=images.device)
            image, step = rows // steps, rows % steps
            removed = (ranks[image] < counts[step][:, None]).view(-1, height, width)
            imputed = noisy_linear_imputation(images[image], removed, noise=noise, seed=seed + chunk)
            with input_errors("images", images):
                logits = model(imputed)
            scores[start:start + len(rows)] = _target_probabilities(logits, target, target[image], first=start == 0)
    return scores.view(n, steps)
