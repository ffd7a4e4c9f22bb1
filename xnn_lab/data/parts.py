"""The Parts set: fine-grained "birds" that share one body and differ only by local parts.

A class is a combination of a head colour, a wing pattern and a tail shape. Every part value
is shared by several classes and any two parts determine the class, so no single part is
enough to classify: a model must look at (at least) two parts, which is what prototype and
concept models are meant to show. Two more attributes, the wing colour and the tail colour,
are drawn per image independently of the class, as individual birds of one species differ
(CUB's attributes are per image too): a label alone does not tell them. Part masks and
attribute labels are the ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xnn_lab._core.checks import check_choice, check_int
from xnn_lab.data import _render
from xnn_lab.data._base import ImageSet

SPLITS = ("train", "val", "test")
# Random streams of this set start here, apart from those of the Shapes set.
_STREAM_OFFSET = 100

PART_NAMES = ("head", "wing", "tail")
# Groups the class determines, then groups drawn per image with equal odds; each is one-hot.
CLASS_ATTRIBUTE_GROUPS = {
    "head_color": ("red", "blue", "yellow"),
    "wing_pattern": ("plain", "striped", "spotted"),
    "tail_shape": ("fan", "forked", "pointed"),
}
IMAGE_ATTRIBUTE_GROUPS = {
    "wing_color": ("brown", "grey"),
    "tail_color": ("dark", "rufous"),
}
ATTRIBUTE_GROUPS = {**CLASS_ATTRIBUTE_GROUPS, **IMAGE_ATTRIBUTE_GROUPS}
ATTRIBUTE_NAMES = tuple(f"{group}::{value}" for group, values in ATTRIBUTE_GROUPS.items()
                        for value in values)
# (head colour, wing pattern, tail shape) of each class: every value is used by two or three
# classes, and the classes differ pairwise in at least two parts.
CLASS_PARTS = (
    ("red", "plain", "fan"),
    ("red", "striped", "forked"),
    ("red", "spotted", "pointed"),
    ("blue", "plain", "forked"),
    ("blue", "striped", "pointed"),
    ("blue", "spotted", "fan"),
    ("yellow", "plain", "pointed"),
    ("yellow", "striped", "fan"),
)
CLASS_NAMES = tuple("-".join(parts) for parts in CLASS_PARTS)


# Which attributes the class determines: the first 9 of 13.
CLASS_DETERMINED = torch.tensor([group in CLASS_ATTRIBUTE_GROUPS for group, values in ATTRIBUTE_GROUPS.items()
                                 for _ in values])


def _one_hot_groups(values: torch.Tensor) -> torch.Tensor:
    """``(N, G)`` value indices, one per attribute group, to ``(N, 13)`` one-hot attributes."""
    sizes = [len(group) for group in ATTRIBUTE_GROUPS.values()]
    return torch.cat([torch.nn.functional.one_hot(values[:, g], size).float()
                      for g, size in enumerate(sizes)], dim=1)


def _class_attributes() -> torch.Tensor:
    """Each class's expected attributes: 0/1 where the class decides, 1/2 for per-image groups."""
    class_values = torch.tensor([[values.index(part) for part, values in
                                  zip(parts, CLASS_ATTRIBUTE_GROUPS.values())] for parts in CLASS_PARTS])
    padded = torch.cat([class_values, torch.zeros(len(CLASS_PARTS), len(IMAGE_ATTRIBUTE_GROUPS),
                                                  dtype=torch.long)], dim=1)
    sizes = [len(values) for values in ATTRIBUTE_GROUPS.values()]
    means = torch.cat([torch.full((size,), 1.0 / size) for size in sizes])
    return torch.where(CLASS_DETERMINED, _one_hot_groups(padded), means)


CLASS_ATTRIBUTES = _class_attributes()  # (8, 13) float32

# Nominal RGB colours; each image jitters them within COLOR_JITTER per channel.
HEAD_COLORS = {"red": (0.85, 0.12, 0.12), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.15)}
BODY_COLOR = (0.8, 0.78, 0.72)
WING_COLORS = {"brown": (0.42, 0.3, 0.18), "grey": (0.55, 0.58, 0.64)}
WING_PATTERN_COLOR = (0.96, 0.94, 0.86)
TAIL_COLORS = {"dark": (0.32, 0.28, 0.26), "rufous": (0.78, 0.4, 0.16)}
BEAK_COLOR = (0.25, 0.22, 0.2)
EYE_COLOR = (0.05, 0.05, 0.05)
COLOR_JITTER = 0.04
BODY_BRIGHTNESS = (0.9, 1.1)
SCALE_RANGE = (0.85, 1.15)

# Geometry in bird units (1 px at 64 px and scale 1): f points forward (to the beak), v down,
# origin at the body centre.
BODY_SEMI_AXES = (11.0, 7.0)
HEAD_CENTER, HEAD_RADIUS = (10.0, -5.0), 5.0
EYE_CENTER, EYE_RADIUS = (11.8, -6.2), 1.1
BEAK = ((14.0, -6.3), (18.5, -4.6), (14.0, -3.2))
WING_CENTER, WING_SEMI_AXES, WING_TILT = (-2.5, -0.3), (7.0, 4.0), 0.15
STRIPE_PERIOD = 4.0
SPOT_SPACING, SPOT_RADIUS = 4.6, 1.15


def _fan(apex=(-7.0, -1.0), radius=12.0, half_angle=0.6, steps=7):
    angles = [math.pi - half_angle + 2 * half_angle * k / (steps - 1) for k in range(steps)]
    return (apex, *((apex[0] + radius * math.cos(a), apex[1] + radius * math.sin(a)) for a in angles))


TAILS = {
    "fan": _fan(),
    "forked": ((-8.0, -3.0), (-20.0, -7.0), (-15.0, -1.0), (-20.0, 5.0), (-8.0, 2.0)),
    "pointed": ((-8.0, -3.5), (-22.0, -1.0), (-8.0, 2.5)),
}
# Bounds on |f| and |v| over the whole bird (tail tip, head top), for placing it in the image.
BIRD_REACH = (22.0, 10.0)

# Region codes of the label map, painted in this order; parts keep the order of PART_NAMES.
_BODY, _HEAD, _WING, _TAIL = 1, 2, 3, 4


@dataclass(frozen=True, eq=False, repr=False)
class PartsData(ImageSet):
    """A generated Parts set; indexing gives ``(image, label)``.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 indices into ``class_names``.
        part_masks: ``(N, 3, H, W)`` bool, the visible pixels of each part in ``part_names``
            order; the parts are disjoint.
        body_masks: ``(N, H, W)`` bool, the whole bird, parts included.
        attributes: ``(N, 13)`` float32 0/1, the attributes of each image: the 9 its class
            determines, then wing and tail colour, drawn per image.
        class_attributes: ``(8, 13)`` float32, each class's expected attributes: 0/1 for the
            attributes the class determines, 1/2 for those drawn per image.
        class_determined: ``(13,)`` bool, which attributes the class determines.
        class_names: names such as ``"red-striped-forked"``.
        part_names: ``("head", "wing", "tail")``.
        attribute_names: names such as ``"head_color::red"``.
        split: the split it was drawn for.
        seed: the seed it was drawn with.
    """

    images: torch.Tensor
    labels: torch.Tensor
    part_masks: torch.Tensor
    body_masks: torch.Tensor
    attributes: torch.Tensor
    class_attributes: torch.Tensor
    class_determined: torch.Tensor
    class_names: tuple[str, ...]
    part_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    split: str
    seed: int

    def __repr__(self) -> str:
        return (f"PartsData(n={len(self)}, image_size={self.images.shape[-1]}, "
                f"split={self.split!r}, seed={self.seed})")


def make_parts(n: int, *, split: str = "train", image_size: int = 64, seed: int = 0) -> PartsData:
    """Generate the Parts set: 8 bird classes that differ only by their parts.

    A class is a head colour, a wing pattern and a tail shape (``CLASS_PARTS``). Every bird has
    the same body (one colour, small brightness jitter), a head with eye and beak at the front,
    a wing on the body and a tail at the back; position, scale (+-15 %), facing direction, wing
    colour (brown or grey) and tail colour (dark or rufous) vary per image, and part colours
    jitter within a narrow band, on the textured background of the Shapes set. Each (seed, split) pair has its own random stream, so the
    same arguments give bit-identical data.

    Args:
        n: number of images, at least 1.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side length, a multiple of 16 in [32, 256]; sizes scale with it.
        seed: a non-negative integer.

    Returns:
        a :class:`PartsData`.
    """
    n = check_int("n", n, minimum=1)
    split = check_choice("split", split, SPLITS)
    image_size = _render.check_image_size(image_size)
    seed = check_int("seed", seed, minimum=0, maximum=2**48)

    generator = _render.split_generator(seed, _STREAM_OFFSET + SPLITS.index(split))
    birds = _sample_birds(n, generator, image_size)
    images, region_maps = _render_birds(birds, image_size)
    part_masks = torch.stack([region_maps == code for code in (_HEAD, _WING, _TAIL)], dim=1)
    labels = birds["labels"]
    return PartsData(
        images=images, labels=labels, part_masks=part_masks, body_masks=region_maps > 0,
        attributes=_one_hot_groups(birds["attribute_values"]), class_attributes=CLASS_ATTRIBUTES.clone(),
        class_determined=CLASS_DETERMINED.clone(),
        class_names=CLASS_NAMES, part_names=PART_NAMES, attribute_names=ATTRIBUTE_NAMES,
        split=split, seed=seed)


def _jittered(nominal, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` copies of an RGB colour (or ``(n, 3)`` colours), jittered per channel."""
    jitter = _render.uniform(generator, (n, 3), -COLOR_JITTER, COLOR_JITTER)
    return (torch.as_tensor(nominal, dtype=torch.float32) + jitter).clamp(0.0, 1.0)


def _sample_birds(n: int, generator: torch.Generator, image_size: int) -> dict:
    """Draw every random choice of ``n`` birds, as a dict of tensors."""
    labels = (torch.arange(n) % len(CLASS_NAMES))[torch.randperm(n, generator=generator)]
    part_values = torch.tensor([[values.index(part) for part, values in
                                 zip(parts, CLASS_ATTRIBUTE_GROUPS.values())] for parts in CLASS_PARTS])
    head_value, wing_value, tail_value = part_values[labels].unbind(1)
    wing_color_value, tail_color_value = (torch.randint(0, len(values), (n,), generator=generator)
                                    for values in IMAGE_ATTRIBUTE_GROUPS.values())
    unit = _render.uniform(generator, n, *SCALE_RANGE) * (image_size / 64)
    margin = 2 * image_size / 64
    reach = torch.stack([BIRD_REACH[0] * unit, BIRD_REACH[1] * unit], dim=1) + margin
    center = reach + torch.rand(n, 2, generator=generator) * (image_size - 2 * reach)
    head_colors = torch.tensor(list(HEAD_COLORS.values()))[head_value]
    body_brightness = _render.uniform(generator, (n, 1), *BODY_BRIGHTNESS)
    return {
        "labels": labels,
        "attribute_values": torch.stack([head_value, wing_value, tail_value, wing_color_value, tail_color_value], 1),
        "wing_pattern": wing_value,
        "tail_shape": tail_value,
        "center": center,
        "unit": unit,
        "facing": torch.randint(0, 2, (n,), generator=generator) * 2 - 1,  # +1: beak to the right
        "pattern_phase": torch.rand(n, 2, generator=generator),
        "body_color": (torch.tensor(BODY_COLOR) * body_brightness).clamp(0.0, 1.0),
        "head_color": _jittered(head_colors, n, generator),
        "wing_color": _jittered(torch.tensor(list(WING_COLORS.values()))[wing_color_value], n, generator),
        "pattern_color": _jittered(WING_PATTERN_COLOR, n, generator),
        "tail_color": _jittered(torch.tensor(list(TAIL_COLORS.values()))[tail_color_value], n, generator),
        "beak_color": _jittered(BEAK_COLOR, n, generator),
        "eye_color": _jittered(EYE_COLOR, n, generator),
        "background": _render.sample_background(n, generator, image_size),
        "noise_seed": int(torch.randint(0, 2**62, (1,), generator=generator)),
    }


def _render_birds(birds: dict, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render sampled birds.

    Returns:
        ``(images, region_maps)``: ``(N, 3, S, S)`` float32 and ``(N, S, S)`` int8 region codes
        (0 background, then body, head, wing, tail).
    """
    n = birds["labels"].shape[0]
    images = torch.empty(n, 3, image_size, image_size)
    region_maps = torch.empty(n, image_size, image_size, dtype=torch.int8)
    noise_generator = torch.Generator().manual_seed(birds["noise_seed"])
    max_unit = SCALE_RANGE[1] * image_size / 64
    for part in _render.chunks(n, image_size):
        chunk_birds = {key: value[part] for key, value in birds.items()
                       if key not in ("background", "noise_seed")}
        background = {key: value[part] for key, value in birds["background"].items()}
        chunk = _render.render_background(background, image_size, noise_generator)
        center = chunk_birds["center"].double()
        window = _render.Window.around(center, (BIRD_REACH[0] * max_unit,
                                                BIRD_REACH[1] * max_unit), image_size)
        regions, colors = _draw_birds(window, center, chunk_birds)
        window.paint(chunk, regions > 0, colors)
        images[part] = chunk
        region_maps[part] = window.to_image(regions, image_size)
    return images, region_maps


def _padded_tails() -> torch.Tensor:
    """The tail outlines as one ``(3, V, 2)`` tensor in ``tail_shape`` order.

    Shorter outlines repeat their last vertex, which adds no edge crossing.
    """
    outlines = [TAILS[shape] for shape in ATTRIBUTE_GROUPS["tail_shape"]]
    longest = max(len(outline) for outline in outlines)
    return torch.tensor([list(outline) + [outline[-1]] * (longest - len(outline))
                         for outline in outlines], dtype=torch.float64)


_TAIL_OUTLINES = _padded_tails()


def _draw_birds(window: _render.Window, center: torch.Tensor, birds: dict):
    """Region codes ``(B, h, w)`` int8 and colours ``(B, h, w, 3)`` of birds in their windows."""
    unit = birds["unit"].double()
    facing = birds["facing"].double()
    # Bird coordinates of the pixel centres: forward (B, 1, w) and down (B, h, 1).
    forward = (window.xs - center[:, 0, None, None]) * (facing / unit)[:, None, None]
    down = (window.ys - center[:, 1, None, None]) / unit[:, None, None]

    def disc(disc_center, radius):
        return (forward - disc_center[0]) ** 2 + (down - disc_center[1]) ** 2 <= radius**2

    def polygon(outline):  # outline (V, 2) or (B, V, 2) in bird units
        image_x = center[:, 0, None] + (facing * unit)[:, None] * outline[..., 0]
        image_y = center[:, 1, None] + unit[:, None] * outline[..., 1]
        return _render.polygon_mask(window, torch.stack([image_x, image_y], dim=-1))

    body = (forward / BODY_SEMI_AXES[0]) ** 2 + (down / BODY_SEMI_AXES[1]) ** 2 <= 1.0
    head = disc(HEAD_CENTER, HEAD_RADIUS)
    beak = polygon(torch.tensor(BEAK, dtype=torch.float64))
    eye = disc(EYE_CENTER, EYE_RADIUS)
    tail = polygon(_TAIL_OUTLINES[birds["tail_shape"]])
    wing, pattern = _wing(forward, down, birds)
    wing &= body

    # Later regions cover earlier ones: tail behind the body, wing on it, head in front.
    regions = torch.zeros(wing.shape, dtype=torch.int8)
    for code, mask in ((_TAIL, tail), (_BODY, body), (_WING, wing), (_HEAD, head | beak | eye)):
        regions[mask] = code
    layers = ((tail, "tail_color"), (body, "body_color"), (wing, "wing_color"),
              (wing & pattern, "pattern_color"), (head, "head_color"), (beak, "beak_color"),
              (eye, "eye_color"))
    colors = torch.zeros(*wing.shape, 3)
    for mask, key in layers:
        colors = torch.where(mask[..., None], birds[key][:, None, None], colors)
    return regions, colors


def _wing(forward: torch.Tensor, down: torch.Tensor, birds: dict):
    """The wing ellipse and its pattern pixels, each ``(B, h, w)`` bool."""
    cos, sin = math.cos(WING_TILT), math.sin(WING_TILT)
    along = (forward - WING_CENTER[0]) * cos + (down - WING_CENTER[1]) * sin
    across = -(forward - WING_CENTER[0]) * sin + (down - WING_CENTER[1]) * cos
    wing = (along / WING_SEMI_AXES[0]) ** 2 + (across / WING_SEMI_AXES[1]) ** 2 <= 1.0
    phase = birds["pattern_phase"].double()[:, :, None, None]
    stripes = torch.remainder(along / STRIPE_PERIOD + phase[:, 0], 1.0) < 0.5
    spot_along = torch.remainder(along / SPOT_SPACING + phase[:, 0], 1.0) - 0.5
    spot_across = torch.remainder(across / SPOT_SPACING + phase[:, 1], 1.0) - 0.5
    spots = (spot_along**2 + spot_across**2) * SPOT_SPACING**2 <= SPOT_RADIUS**2
    wing_pattern = birds["wing_pattern"][:, None, None]
    striped, spotted = (ATTRIBUTE_GROUPS["wing_pattern"].index(p) for p in ("striped", "spotted"))
    pattern = torch.where(wing_pattern == striped, stripes, (wing_pattern == spotted) & spots)
    return wing, pattern
