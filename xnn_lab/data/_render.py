"""Batched rendering primitives shared by the synthetic image sets.

Geometry lives in pixel units: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``
and is tested at its centre ``(col + 0.5, row + 0.5)``; ``x`` runs right, ``y`` runs down.
Shapes have hard edges (no antialiasing), so a membership test on the pixel centres *is* the
ground-truth mask. Geometry is computed in float64, so only pixels whose centres lie within
about 1e-9 px of an outline can be classified differently from an exact rasteriser.

Objects are small, so they are tested and painted inside a per-image :class:`Window` around
them rather than over the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xnn_lab._core.checks import check_int

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256
IMAGE_SIZE_STEP = 16
# Images per rendering chunk times pixels per image: bounds the temporaries of a chunk.
CHUNK_PIXELS = 2**21
# Half-width of the uniform background noise (standard deviation 0.02).
BACKGROUND_NOISE = 0.02 * math.sqrt(3)


def check_image_size(image_size) -> int:
    """Return ``image_size`` if it is a supported side length, or raise naming it."""
    check_int("image_size", image_size)
    if not (MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE) or image_size % IMAGE_SIZE_STEP:
        raise ValueError(f"image_size must be a multiple of {IMAGE_SIZE_STEP} in "
                         f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    return int(image_size)


def split_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, stream) pair; streams below 1000 never collide."""
    return torch.Generator().manual_seed(seed * 1000 + stream)


def chunks(n: int, image_size: int) -> list[slice]:
    """Slices that cover ``range(n)`` in chunks of at most ``CHUNK_PIXELS`` pixels."""
    step = max(1, CHUNK_PIXELS // image_size**2)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    """Float32 samples from ``U(low, high)`` of the given shape."""
    return low + (high - low) * torch.rand(shape, generator=generator)


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Convert HSV (each ``(N,)``, hue in turns) to RGB ``(N, 3)`` in [0, 1]."""
    # Standard piecewise-linear formula: channel k peaks where the hue is k/3 of a turn away.
    offsets = torch.tensor([5.0, 3.0, 1.0])
    k = (offsets + hue[:, None] * 6.0) % 6.0
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * ramp)


@dataclass(frozen=True)
class Window:
    """Per-image pixel windows of a common shape, placed inside the image.

    Attributes:
        top_left: ``(B, 2)`` int64 (row, col) of each window's top-left pixel.
        height: rows per window.
        width: columns per window.
    """

    top_left: torch.Tensor
    height: int
    width: int

    @classmethod
    def around(cls, center: torch.Tensor, reach: tuple[float, float], image_size: int) -> Window:
        """Windows that hold every pixel within ``reach`` (x, y) px of ``center`` ``(B, 2)``.

        Windows are shifted (not cut) at the image border, so parts of objects that stick out of
        the image are simply not drawn.
        """
        width = min(image_size, math.ceil(2 * reach[0]) + 2)
        height = min(image_size, math.ceil(2 * reach[1]) + 2)
        col = torch.floor(center[:, 0] - reach[0]).long().clamp(0, image_size - width)
        row = torch.floor(center[:, 1] - reach[1]).long().clamp(0, image_size - height)
        return cls(torch.stack([row, col], dim=1), height, width)

    @property
    def xs(self) -> torch.Tensor:
        """Pixel-centre x coordinates, ``(B, 1, width)`` float64."""
        return (self.top_left[:, 1, None] + torch.arange(self.width) + 0.5).double()[:, None]

    @property
    def ys(self) -> torch.Tensor:
        """Pixel-centre y coordinates, ``(B, height, 1)`` float64."""
        return (self.top_left[:, 0, None] + torch.arange(self.height) + 0.5).double()[:, :, None]

    def _pixel_index(self, image_index: torch.Tensor | None = None):
        if image_index is None:
            image_index = torch.arange(self.top_left.shape[0])
        batch = image_index[:, None, None]
        rows = (self.top_left[:, 0, None] + torch.arange(self.height))[:, :, None]
        cols = (self.top_left[:, 1, None] + torch.arange(self.width))[:, None, :]
        return batch, rows, cols

    def to_image(self, values: torch.Tensor, image_size: int) -> torch.Tensor:
        """Place window values ``(B, height, width)`` into zero (False) ``(B, S, S)`` images."""
        batch, rows, cols = self._pixel_index()
        full = torch.zeros(values.shape[0], image_size, image_size, dtype=values.dtype)
        full[batch, rows, cols] = values
        return full

    def paint(self, images: torch.Tensor, mask: torch.Tensor, color: torch.Tensor,
              image_index: torch.Tensor | None = None) -> None:
        """Set the window pixels in ``mask`` ``(B, height, width)`` to ``color``, in place.

        Args:
            images: ``(N, 3, S, S)`` images, changed in place.
            mask: ``(B, height, width)`` bool, the pixels to paint.
            color: ``(B, 3)`` (one colour per window) or ``(B, height, width, 3)`` (per pixel).
            image_index: ``(B,)`` int64, the image each window belongs to; by default window b
                belongs to image b.
        """
        batch, rows, cols = self._pixel_index(image_index)
        pixels = images[batch, :, rows, cols]  # (B, height, width, 3)
        if color.ndim == 2:
            color = color[:, None, None]
        images[batch, :, rows, cols] = torch.where(mask[..., None], color, pixels)


def disc_mask(window: Window, center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Window pixels whose centres lie in closed discs of ``center`` ``(B, 2)``, ``radius`` ``(B,)``.

    Returns:
        ``(B, height, width)`` bool mask.
    """
    dx = window.xs - center[:, 0, None, None]
    dy = window.ys - center[:, 1, None, None]
    return dx**2 + dy**2 <= radius[:, None, None] ** 2


def polygon_mask(window: Window, vertices: torch.Tensor) -> torch.Tensor:
    """Window pixels whose centres lie inside polygons, by the even-odd rule.

    Each pixel row is a horizontal scan line: its crossings with the polygon's edges are
    sorted, and a pixel is inside when an odd number of crossings lie left of its centre.
    Edges use the half-open rule (one endpoint counts), so scan lines through vertices are
    handled exactly. Polygons may be non-convex.

    Args:
        window: the windows, ``B`` of them.
        vertices: ``(B, V, 2)`` float64 vertices (x, y), in order around each polygon.

    Returns:
        ``(B, height, width)`` bool mask.
    """
    ys = window.ys.transpose(1, 2)  # (B, 1, height)
    x0, y0 = vertices[..., 0, None], vertices[..., 1, None]  # (B, V, 1)
    x1, y1 = x0.roll(-1, dims=1), y0.roll(-1, dims=1)
    crosses = (y0 > ys) != (y1 > ys)  # (B, V, height): the edge spans this scan line
    fraction = (ys - y0) / torch.where(crosses, y1 - y0, torch.ones_like(y0))
    crossing_x = torch.where(crosses, x0 + fraction * (x1 - x0), torch.inf)
    crossing_x = crossing_x.transpose(1, 2).sort(dim=-1).values.contiguous()  # (B, height, V)
    xs = window.xs.expand(-1, window.height, -1).contiguous()
    crossings_left = torch.searchsorted(crossing_x, xs)  # crossings with x < the pixel's x
    return crossings_left % 2 == 1


def sample_background(n: int, generator: torch.Generator, image_size: int) -> dict[str, torch.Tensor]:
    """Draw the parameters of ``n`` textured backgrounds (see :func:`render_background`)."""
    scale = image_size / 64
    # Muted colours: low saturation, middle value, so saturated objects stand out.
    hue = torch.rand(2 * n, generator=generator)
    colors = hsv_to_rgb(hue, uniform(generator, 2 * n, 0.1, 0.35),
                        uniform(generator, 2 * n, 0.3, 0.6)).reshape(n, 2, 3)
    return {
        "colors": colors,
        "gradient_angle": uniform(generator, n, 0.0, 2 * math.pi),
        "stripe_angle": uniform(generator, n, 0.0, math.pi),
        "stripe_period": uniform(generator, n, 5.0 * scale, 12.0 * scale),
        "stripe_phase": uniform(generator, n, 0.0, 2 * math.pi),
        "stripe_amplitude": uniform(generator, n, 0.03, 0.08),
    }


def render_background(params: dict[str, torch.Tensor], image_size: int,
                      noise_generator: torch.Generator) -> torch.Tensor:
    """Render textured backgrounds: a colour gradient, oriented sinusoidal stripes and noise.

    Args:
        params: a (row slice of the) dict from :func:`sample_background`, ``B`` rows.
        image_size: side length ``S``.
        noise_generator: the generator the pixel noise is drawn from.

    Returns:
        ``(B, 3, S, S)`` float32 images in [0, 1].
    """
    n = params["colors"].shape[0]
    coords = (torch.arange(image_size) + 0.5 - image_size / 2)[None]  # centred, (1, S)

    def along(angle):  # (B, S, S) coordinate along direction ``angle``
        x_part = (torch.cos(angle)[:, None] * coords)[:, None, :]
        y_part = (torch.sin(angle)[:, None] * coords)[:, :, None]
        return x_part + y_part

    blend = (along(params["gradient_angle"]) / image_size + 0.5).clamp_(0.0, 1.0)
    stripes = torch.sin(along(params["stripe_angle"]) * (2 * math.pi / params["stripe_period"])[:, None, None]
                        + params["stripe_phase"][:, None, None])
    shade = stripes.mul_(params["stripe_amplitude"][:, None, None])[:, None]
    first, second = params["colors"][:, 0, :, None, None], params["colors"][:, 1, :, None, None]
    images = torch.rand(n, 3, image_size, image_size, generator=noise_generator)
    images = images.mul_(2 * BACKGROUND_NOISE).sub_(BACKGROUND_NOISE).add_(shade).add_(first)
    images.add_((second - first) * blend[:, None])
    return images.clamp_(0.0, 1.0)
