"""The Shapes set: one target shape per image on a textured background with distractors.

The class is the shape of the target; its exact pixel mask is the ground truth for saliency
methods. The spurious variant adds a small watermark on the image border whose position
agrees with the class in most training images, for the shortcut-learning demo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xnn_lab._core.checks import check_choice, check_float, check_int
from xnn_lab.data import _render
from xnn_lab.data._base import ImageSet

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")
POLYGON_SHAPES = SHAPE_CLASSES[1:]
SPLITS = ("train", "val", "test", "clean_test")
WATERMARK_POSITIONS = ("top-left", "top", "top-right", "right",
                       "bottom-right", "bottom", "bottom-left", "left")
MAX_DISTRACTORS = 3
DISTRACTOR_KINDS = ("ring", "bar", "dots")
DOTS_PER_CLUSTER = 4
# Size ranges in pixels at 64 px; they scale with the image size.
TARGET_SIZE = (9.0, 16.0)  # circumradius (radius for circles)
DISTRACTOR_SIZE = (4.0, 8.0)  # ring: outer radius; bar: half-length / _BAR_LENGTH; dots: cluster radius
DISTRACTOR_THICKNESS = (1.2, 2.2)  # ring: thickness; bar: width; dots: dot radius / _DOT_RADIUS
_BAR_LENGTH = 1.4
_DOT_RADIUS = 0.9

# Polygon outlines with circumradius 1, pointing up (y runs down), in order around the shape.
_STAR_INNER_RADIUS = 0.45
_CROSS_HALF_WIDTH = 0.3


def _regular_angles(count: int) -> torch.Tensor:
    return -math.pi / 2 + 2 * math.pi * torch.arange(count, dtype=torch.float64) / count


def _unit_polygons() -> dict[str, torch.Tensor]:
    square_angles = _regular_angles(4) + math.pi / 4
    triangle_angles = _regular_angles(3)
    star_angles = _regular_angles(10)
    star_radii = torch.tensor([1.0, _STAR_INNER_RADIUS] * 5, dtype=torch.float64)
    w = _CROSS_HALF_WIDTH
    arm = math.sqrt(1.0 - w**2)  # the arm corners lie on the unit circle
    cross = torch.tensor([[-w, -arm], [w, -arm], [w, -w], [arm, -w], [arm, w], [w, w],
                          [w, arm], [-w, arm], [-w, w], [-arm, w], [-arm, -w], [-w, -w]],
                         dtype=torch.float64)

    def on_circle(angles, radii=1.0):
        return torch.stack([radii * torch.cos(angles), radii * torch.sin(angles)], dim=-1)

    return {"square": on_circle(square_angles), "triangle": on_circle(triangle_angles),
            "star": on_circle(star_angles, star_radii), "cross": cross}


_UNIT_POLYGONS = _unit_polygons()


def shape_vertices(kind: str, center, size, rotation) -> torch.Tensor:
    """Outline of a polygon shape, as drawn by :func:`make_shapes`.

    Args:
        kind: one of ``"square"``, ``"triangle"``, ``"star"``, ``"cross"``.
        center: ``(2,)`` or ``(B, 2)`` centre (x, y) in pixels.
        size: scalar or ``(B,)`` circumradius in pixels.
        rotation: scalar or ``(B,)`` angle in radians (y runs down, so clockwise on screen).

    Returns:
        ``(V, 2)`` or ``(B, V, 2)`` float64 vertices (x, y), in order around the outline.
    """
    check_choice("kind", kind, POLYGON_SHAPES)
    center = torch.as_tensor(center, dtype=torch.float64)
    size = torch.as_tensor(size, dtype=torch.float64)[..., None, None]
    rotation = torch.as_tensor(rotation, dtype=torch.float64)
    cos, sin = torch.cos(rotation)[..., None], torch.sin(rotation)[..., None]
    unit = _UNIT_POLYGONS[kind]
    x, y = unit[:, 0], unit[:, 1]
    rotated = torch.stack([x * cos - y * sin, x * sin + y * cos], dim=-1)
    return center[..., None, :] + size * rotated


@dataclass(frozen=True, eq=False, repr=False)
class ShapesData(ImageSet):
    """A generated Shapes set; indexing gives ``(image, label)``.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 indices into ``class_names``.
        masks: ``(N, H, W)`` bool, exactly the target object's pixels.
        watermark_masks: ``(N, H, W)`` bool, the watermark's pixels (all False without one).
        watermark_positions: ``(N,)`` int64 indices into ``WATERMARK_POSITIONS`` (-1 without).
        class_names: the shape names, ``SHAPE_CLASSES``.
        params: the target's ``"center"`` ``(N, 2)`` (x, y in pixels), ``"size"`` ``(N,)``
            (circumradius in pixels, the radius for circles), ``"rotation"`` ``(N,)`` (radians)
            and ``"color"`` ``(N, 3)`` (RGB, exactly its pixel values), all float32.
        split: the split it was drawn for.
        seed: the seed it was drawn with.
        spurious: whether it carries the watermark.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    watermark_masks: torch.Tensor
    watermark_positions: torch.Tensor
    class_names: tuple[str, ...]
    params: dict[str, torch.Tensor]
    split: str
    seed: int
    spurious: bool

    def __repr__(self) -> str:
        return (f"ShapesData(n={len(self)}, image_size={self.images.shape[-1]}, "
                f"split={self.split!r}, seed={self.seed}, spurious={self.spurious})")


def make_shapes(n: int, *, split: str = "train", spurious: bool = False, bias: float = 0.95,
                image_size: int = 64, seed: int = 0) -> ShapesData:
    """Generate the Shapes set: classify the shape of one target object.

    Every image holds one target (circle, square, triangle, star or cross; random colour, size,
    position and rotation; hard edges) drawn over 1 to 3 distractors that are no class shape
    (rings, bars, dot clusters) on a textured background. Each (seed, split) pair has its own
    random stream, so the same arguments give bit-identical data; with ``spurious=True`` the
    images are those of ``spurious=False`` plus the watermark.

    Args:
        n: number of images, at least 1.
        split: ``"train"``, ``"val"``, ``"test"``, or ``"clean_test"`` (only with
            ``spurious=True``: the watermark position is independent of the class there).
        spurious: add a 5x5 px (at 64 px) watermark at one of 8 positions touching the border
            (``WATERMARK_POSITIONS``). Outside ``"clean_test"`` its position index equals the
            label with probability ``bias``, else it is another position, uniformly.
        bias: probability in [0, 1] that the watermark position equals the label.
        image_size: side length, a multiple of 16 in [32, 256]; sizes scale with it.
        seed: a non-negative integer.

    Returns:
        a :class:`ShapesData`.
    """
    n = check_int("n", n, minimum=1)
    split = check_choice("split", split, SPLITS)
    if not isinstance(spurious, bool):
        raise TypeError(f"spurious must be a bool, got {spurious!r} ({type(spurious).__name__})")
    if split == "clean_test" and not spurious:
        raise ValueError("split 'clean_test' exists only with spurious=True (it is the "
                         "watermark-independent test set); got spurious=False")
    bias = check_float("bias", bias, minimum=0.0, maximum=1.0)
    image_size = _render.check_image_size(image_size)
    seed = check_int("seed", seed, minimum=0, maximum=2**48)

    generator = _render.split_generator(seed, SPLITS.index(split))
    scene = _sample_scene(n, generator, image_size)
    if spurious:
        scene["watermark_positions"] = _sample_watermark_positions(
            scene["labels"], generator, bias, independent=split == "clean_test")
    else:
        scene["watermark_positions"] = torch.full((n,), -1, dtype=torch.int64)
    images, masks, watermark_masks = _render_scene(scene, image_size)
    return ShapesData(
        images=images, labels=scene["labels"], masks=masks, watermark_masks=watermark_masks,
        watermark_positions=scene["watermark_positions"], class_names=SHAPE_CLASSES,
        params={key: scene["target_" + key] for key in ("center", "size", "rotation", "color")},
        split=split, seed=seed, spurious=spurious)


def watermark_size(image_size: int) -> int:
    """Side length in pixels of the watermark at this image size (5 at 64 px)."""
    return max(5, round(5 * image_size / 64))


def _target_margin(image_size: int) -> int:
    # Keeps every target pixel clear of the watermark squares on the border.
    return watermark_size(image_size) + math.ceil(2 * image_size / 64)


def _saturated_colors(hue: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = hue.numel()
    return _render.hsv_to_rgb(hue.flatten() % 1.0, _render.uniform(generator, n, 0.7, 1.0),
                              _render.uniform(generator, n, 0.8, 1.0)).reshape(*hue.shape, 3)


def _sample_scene(n: int, generator: torch.Generator, image_size: int) -> dict:
    """Draw every random choice of ``n`` images except the watermark, as a dict of tensors."""
    scale = image_size / 64
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=generator)]
    size = _render.uniform(generator, n, TARGET_SIZE[0] * scale, TARGET_SIZE[1] * scale)
    reach = _target_margin(image_size) + size  # closest the centre may come to the border
    center = reach[:, None] + torch.rand(n, 2, generator=generator) * (image_size - 2 * reach[:, None])
    target_hue = torch.rand(n, generator=generator)
    scene = {
        "labels": labels,
        "target_center": center,
        "target_size": size,
        "target_rotation": _render.uniform(generator, n, 0.0, 2 * math.pi),
        "target_color": _saturated_colors(target_hue, generator),
        "background": _render.sample_background(n, generator, image_size),
    }
    slots = (n, MAX_DISTRACTORS)
    count = torch.randint(1, MAX_DISTRACTORS + 1, (n, 1), generator=generator)
    kind = torch.randint(0, len(DISTRACTOR_KINDS), slots, generator=generator)
    # Hues kept away from the target's, so a distractor never merges with the target's outline.
    hue_offset = _render.uniform(generator, slots, 0.2, 0.8)
    scene["distractors"] = {
        "kind": torch.where(torch.arange(MAX_DISTRACTORS) < count, kind, -1),
        "center": _render.uniform(generator, (*slots, 2), 0.0, image_size),
        "rotation": _render.uniform(generator, slots, 0.0, math.pi),
        "size": _render.uniform(generator, slots, *(s * scale for s in DISTRACTOR_SIZE)),
        "thickness": _render.uniform(generator, slots, *(t * scale for t in DISTRACTOR_THICKNESS)),
        "dot_offsets": _unit_disc_points(generator, (*slots, DOTS_PER_CLUSTER)),
        "color": _saturated_colors(target_hue[:, None] + hue_offset, generator),
    }
    scene["noise_seed"] = int(torch.randint(0, 2**62, (1,), generator=generator))
    return scene


def _unit_disc_points(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    radius = torch.sqrt(torch.rand(shape, generator=generator))
    angle = _render.uniform(generator, shape, 0.0, 2 * math.pi)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)


def _sample_watermark_positions(labels: torch.Tensor, generator: torch.Generator, bias: float,
                                independent: bool) -> torch.Tensor:
    n, positions = labels.shape[0], len(WATERMARK_POSITIONS)
    if independent:
        return torch.randint(0, positions, (n,), generator=generator)
    agrees = torch.rand(n, generator=generator) < bias
    other = (labels + torch.randint(1, positions, (n,), generator=generator)) % positions
    return torch.where(agrees, labels, other)


def _watermark_top_left(positions: torch.Tensor, image_size: int) -> torch.Tensor:
    """(row, col) of the watermark's top-left pixel for position indices ``(B,)``."""
    last = image_size - watermark_size(image_size)
    # Row and column anchors of each position, in the order of WATERMARK_POSITIONS.
    anchors = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 1], [2, 0], [1, 0]])
    offsets = torch.tensor([0, last // 2, last])
    return offsets[anchors[positions]]


def _render_scene(scene: dict, image_size: int, draw_target: bool = True):
    """Render a scene from :func:`_sample_scene` plus ``"watermark_positions"``.

    Returns:
        ``(images, masks, watermark_masks)``; ``draw_target=False`` leaves the target out
        (its mask is still returned), for checking that nothing else depends on it.
    """
    n = scene["labels"].shape[0]
    images = torch.empty(n, 3, image_size, image_size)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    watermark_masks = torch.zeros(n, image_size, image_size, dtype=torch.bool)
    noise_generator = torch.Generator().manual_seed(scene["noise_seed"])
    for part in _render.chunks(n, image_size):
        background = {key: value[part] for key, value in scene["background"].items()}
        chunk = _render.render_background(background, image_size, noise_generator)
        distractors = {key: value[part] for key, value in scene["distractors"].items()}
        _draw_distractors(chunk, distractors, image_size)
        masks[part] = _draw_targets(chunk, scene, part, image_size, draw_target)
        watermark_masks[part] = _draw_watermarks(chunk, scene["watermark_positions"][part],
                                                 image_size)
        images[part] = chunk
    return images, masks, watermark_masks


def _draw_targets(images: torch.Tensor, scene: dict, part: slice, image_size: int,
                  draw_target: bool) -> torch.Tensor:
    """Paint the targets of the scene rows ``part`` into ``images``; return their masks."""
    labels = scene["labels"][part]
    center = scene["target_center"][part].double()
    size = scene["target_size"][part].double()
    rotation = scene["target_rotation"][part].double()
    color = scene["target_color"][part]
    masks = torch.empty(labels.shape[0], image_size, image_size, dtype=torch.bool)
    reach = TARGET_SIZE[1] * image_size / 64
    for label, kind in enumerate(SHAPE_CLASSES):
        index = (labels == label).nonzero().flatten()
        if not index.numel():
            continue
        window = _render.Window.around(center[index], (reach, reach), image_size)
        if kind == "circle":
            mask = _render.disc_mask(window, center[index], size[index])
        else:
            vertices = shape_vertices(kind, center[index], size[index], rotation[index])
            mask = _render.polygon_mask(window, vertices)
        masks[index] = window.to_image(mask, image_size)
        if draw_target:
            window.paint(images, mask, color[index], image_index=index)
    return masks


def _draw_distractors(images: torch.Tensor, distractors: dict, image_size: int) -> None:
    scale = image_size / 64
    max_size, max_thickness = DISTRACTOR_SIZE[1] * scale, DISTRACTOR_THICKNESS[1] * scale
    reach = {"ring": max_size, "bar": _BAR_LENGTH * max_size + max_thickness / 2,
             "dots": max_size + _DOT_RADIUS * max_thickness}
    for slot in range(MAX_DISTRACTORS):
        for kind_index, kind in enumerate(DISTRACTOR_KINDS):
            index = (distractors["kind"][:, slot] == kind_index).nonzero().flatten()
            if not index.numel():
                continue
            params = {key: value[index, slot] for key, value in distractors.items()}
            center = params["center"].double()
            window = _render.Window.around(center, (reach[kind],) * 2, image_size)
            mask = _distractor_mask(kind, window, center, params)
            window.paint(images, mask, params["color"], image_index=index)


def _distractor_mask(kind: str, window: _render.Window, center: torch.Tensor,
                     params: dict) -> torch.Tensor:
    size, thickness = params["size"].double(), params["thickness"].double()
    if kind == "ring":
        inner = _render.disc_mask(window, center, size - thickness)
        return _render.disc_mask(window, center, size) & ~inner
    if kind == "bar":
        rotation = params["rotation"].double()
        along = torch.stack([torch.cos(rotation), torch.sin(rotation)], dim=-1)[:, None]
        across = along.flip(-1) * torch.tensor([-1.0, 1.0], dtype=torch.float64)
        # Corner signs (along, across), in order around the bar.
        signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]],
                             dtype=torch.float64)[None, :, :, None]
        half_length = (_BAR_LENGTH * size)[:, None, None]
        half_width = (thickness / 2)[:, None, None]
        corners = (center[:, None] + signs[:, :, 0] * half_length * along
                   + signs[:, :, 1] * half_width * across)
        return _render.polygon_mask(window, corners)
    dot_centers = center[:, None] + params["dot_offsets"].double() * size[:, None, None]
    mask = torch.zeros(center.shape[0], window.height, window.width, dtype=torch.bool)
    for dot in range(DOTS_PER_CLUSTER):
        mask |= _render.disc_mask(window, dot_centers[:, dot], _DOT_RADIUS * thickness)
    return mask


def _draw_watermarks(images: torch.Tensor, positions: torch.Tensor,
                     image_size: int) -> torch.Tensor:
    """Paint the watermarks (rows with position >= 0) into ``images``; return their masks."""
    index = (positions >= 0).nonzero().flatten()
    side = watermark_size(image_size)
    border = max(1, side // 5)
    window = _render.Window(_watermark_top_left(positions[index], image_size), side, side)
    inner = torch.zeros(index.numel(), side, side, dtype=torch.bool)
    inner[:, border:side - border, border:side - border] = True
    black, white = torch.zeros(index.numel(), 3), torch.ones(index.numel(), 3)
    window.paint(images, torch.ones_like(inner), black, image_index=index)
    window.paint(images, inner, white, image_index=index)
    masks = torch.zeros(positions.shape[0], image_size, image_size, dtype=torch.bool)
    masks[index] = window.to_image(torch.ones_like(inner), image_size)
    return masks
