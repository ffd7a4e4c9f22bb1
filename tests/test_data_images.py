"""The synthetic image sets (Shapes, Parts): determinism, fields, and ground truth checked
against independent rasterisations and statistics."""

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path

from xnn_lab.data import parts, shapes
from xnn_lab.data.parts import CLASS_ATTRIBUTES, PartsData, make_parts
from xnn_lab.data.shapes import SHAPE_CLASSES, ShapesData, make_shapes, shape_vertices

# Pixels whose centres lie this close to an outline may fall on either side of it.
OUTLINE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def shapes_train():
    return make_shapes(300, seed=3)


@pytest.fixture(scope="module")
def spurious_sets():
    return {split: make_shapes(2000, split=split, spurious=True, seed=1)
            for split in ("train", "clean_test")}


@pytest.fixture(scope="module")
def parts_train():
    return make_parts(800, seed=2)


def _pixel_centres(image_size):
    centres = np.arange(image_size) + 0.5
    xs, ys = np.meshgrid(centres, centres)  # row-major: (row, col) -> (y, x)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _distance_to_outline(points, vertices):
    """Distance (P,) from points (P, 2) to a closed polygon's edges, vertices (V, 2)."""
    start, end = vertices, np.roll(vertices, -1, axis=0)
    edge = end - start  # (V, 2)
    t = ((points[:, None] - start) * edge).sum(-1) / (edge**2).sum(-1)
    closest = start + np.clip(t, 0.0, 1.0)[..., None] * edge  # (P, V, 2)
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def _reference_mask(kind, center, size, rotation, image_size):
    """Independent rasterisation: matplotlib's point-in-polygon test, or distance for circles.

    Returns the mask (S, S) and each pixel centre's distance to the outline (S, S)."""
    points = _pixel_centres(image_size)
    if kind == "circle":
        distance = np.linalg.norm(points - center, axis=1)
        inside, to_outline = distance <= size, np.abs(distance - size)
    else:
        vertices = shape_vertices(kind, center, size, rotation).numpy()
        inside = Path(vertices).contains_points(points)
        to_outline = _distance_to_outline(points, vertices)
    return inside.reshape(image_size, image_size), to_outline.reshape(image_size, image_size)


# --- Shapes -------------------------------------------------------------------------------------


def test_shapes_same_arguments_give_identical_bytes():
    for kwargs in ({}, {"spurious": True, "split": "clean_test", "image_size": 32}):
        first, second = make_shapes(40, seed=5, **kwargs), make_shapes(40, seed=5, **kwargs)
        for field in ("images", "labels", "masks", "watermark_masks", "watermark_positions"):
            assert torch.equal(getattr(first, field), getattr(second, field)), field
        for key, value in first.params.items():
            assert torch.equal(value, second.params[key]), key


def test_generation_leaves_the_global_random_state_alone():
    state = torch.get_rng_state()
    make_shapes(5, spurious=True)
    make_parts(5)
    assert torch.equal(state, torch.get_rng_state())


def test_shapes_seeds_and_splits_give_different_images():
    reference = make_shapes(20, seed=5).images
    assert not torch.equal(reference, make_shapes(20, seed=6).images)
    for split in ("val", "test"):
        assert not torch.equal(reference, make_shapes(20, seed=5, split=split).images)
    test, clean = (make_shapes(20, seed=5, split=split, spurious=True) for split in ("test", "clean_test"))
    assert not torch.equal(test.images, clean.images)


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_shapes_fields_have_documented_shapes_and_dtypes(image_size):
    n, s = 12, image_size
    data = make_shapes(n, image_size=image_size, spurious=True)
    assert isinstance(data, ShapesData) and isinstance(data, torch.utils.data.Dataset)
    assert data.images.shape == (n, 3, s, s) and data.images.dtype == torch.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert 0 <= data.labels.min() and data.labels.max() < len(SHAPE_CLASSES)
    for field in ("masks", "watermark_masks"):
        assert getattr(data, field).shape == (n, s, s) and getattr(data, field).dtype == torch.bool
    assert data.watermark_positions.shape == (n,) and data.watermark_positions.dtype == torch.int64
    assert data.class_names == SHAPE_CLASSES == ("circle", "square", "triangle", "star", "cross")
    expected = {"center": (n, 2), "size": (n,), "rotation": (n,), "color": (n, 3)}
    assert {key: tuple(value.shape) for key, value in data.params.items()} == expected
    assert (data.split, data.seed, data.spurious) == ("train", 0, True)
    assert len(data) == n
    image, label = data[3]
    assert torch.equal(image, data.images[3]) and label == data.labels[3]
    assert data.tensors[0] is data.images and data.tensors[1] is data.labels
    assert (data.masks.sum((1, 2)) > 0).all()


def test_shapes_labels_are_balanced():
    counts = make_shapes(500, seed=4).labels.bincount(minlength=len(SHAPE_CLASSES))
    assert (counts == 100).all()


def test_shapes_masked_pixels_have_exactly_the_target_color(shapes_train):
    color = shapes_train.params["color"][:, :, None, None]
    same_color = (shapes_train.images == color).all(dim=1)
    assert (same_color | ~shapes_train.masks).all()


@pytest.mark.parametrize("image_size, n", [(64, 120), (32, 15), (128, 15)])
def test_shapes_mask_equals_an_independent_rasterisation(image_size, n):
    data = make_shapes(n, image_size=image_size, seed=7)
    for i in range(n):
        kind = SHAPE_CLASSES[data.labels[i]]
        center, size, rotation = (data.params[key][i].double().numpy()
                                  for key in ("center", "size", "rotation"))
        reference, to_outline = _reference_mask(kind, center, size, rotation, image_size)
        differ = data.masks[i].numpy() != reference
        assert (to_outline[differ] < OUTLINE_TOLERANCE).all(), (i, kind, differ.sum())


def test_shape_vertices_trace_the_named_shapes():
    center, size, rotation = torch.tensor([30.0, 20.0]), 10.0, 0.3
    for kind, count in (("square", 4), ("triangle", 3), ("star", 10), ("cross", 12)):
        vertices = shape_vertices(kind, center, size, rotation)
        assert vertices.shape == (count, 2)
        radii = (vertices - center).norm(dim=1)
        assert radii.max() == pytest.approx(size)  # the size is the circumradius
        sides = (vertices - vertices.roll(-1, 0)).norm(dim=1)
        if kind in ("square", "triangle"):  # regular polygons
            torch.testing.assert_close(sides, torch.full_like(sides, sides[0].item()))
            torch.testing.assert_close(radii, torch.full_like(radii, size))
        if kind == "star":  # five tips on the circumcircle, alternating with inner corners
            torch.testing.assert_close(radii[::2], torch.full((5,), size, dtype=radii.dtype))
            assert (radii[1::2] < 0.6 * size).all()
    batch = shape_vertices("star", torch.rand(4, 2), torch.rand(4), torch.rand(4))
    assert batch.shape == (4, 10, 2)


def test_shapes_mask_areas_match_the_shape_areas(shapes_train):
    for i in range(len(shapes_train)):
        kind = SHAPE_CLASSES[shapes_train.labels[i]]
        size = float(shapes_train.params["size"][i])
        if kind == "circle":
            area, perimeter = math.pi * size**2, 2 * math.pi * size
        else:
            vertices = shape_vertices(kind, shapes_train.params["center"][i], size,
                                      shapes_train.params["rotation"][i]).numpy()
            x, y = vertices[:, 0], vertices[:, 1]
            area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
            perimeter = np.linalg.norm(vertices - np.roll(vertices, -1, 0), axis=1).sum()
        # Pixel-centre sampling misses at most about half a pixel along the outline.
        assert abs(int(shapes_train.masks[i].sum()) - area) <= 0.6 * perimeter, (i, kind)


def test_removing_the_target_changes_only_its_pixels():
    # Render one sampled scene with and without its target (an internal hook of the renderer).
    scene = shapes._sample_scene(50, torch.Generator().manual_seed(0), 64)
    scene["watermark_positions"] = torch.randint(0, 8, (50,), generator=torch.Generator().manual_seed(1))
    with_target, masks, watermark_masks = shapes._render_scene(scene, 64)
    without_target, masks_again, _ = shapes._render_scene(scene, 64, draw_target=False)
    assert torch.equal(masks, masks_again)
    elsewhere = ~(masks | watermark_masks)[:, None].expand_as(with_target)
    assert torch.equal(with_target[elsewhere], without_target[elsewhere])
    # Under the target there is something else: background or distractors.
    target_pixels = masks[:, None].expand_as(with_target)
    assert not torch.equal(with_target[target_pixels], without_target[target_pixels])


def test_spurious_images_are_the_clean_images_plus_the_watermark():
    clean, marked = make_shapes(100, seed=8), make_shapes(100, seed=8, spurious=True)
    assert torch.equal(clean.labels, marked.labels) and torch.equal(clean.masks, marked.masks)
    outside = ~marked.watermark_masks[:, None].expand_as(clean.images)
    assert torch.equal(clean.images[outside], marked.images[outside])
    assert not clean.watermark_masks.any() and (clean.watermark_positions == -1).all()


def test_watermark_agrees_with_the_label_in_biased_splits_only(spurious_sets):
    train, clean = spurious_sets["train"], spurious_sets["clean_test"]
    agreement = (train.watermark_positions == train.labels).float().mean().item()
    assert 0.9 <= agreement <= 0.99
    clean_agreement = (clean.watermark_positions == clean.labels).float().mean().item()
    assert abs(clean_agreement - 1 / 8) < 0.04
    # In clean_test every position occurs for every class.
    pairs = clean.labels * 8 + clean.watermark_positions
    assert (pairs.bincount(minlength=40) > 0).all()
    for bias, expected in ((0.0, 0.0), (1.0, 1.0)):
        data = make_shapes(200, spurious=True, bias=bias)
        assert (data.watermark_positions == data.labels).float().mean().item() == expected


def test_watermarks_touch_the_border_and_never_the_target(spurious_sets):
    for data in spurious_sets.values():
        marks = data.watermark_masks
        side = shapes.watermark_size(64)
        assert (marks.sum((1, 2)) == side**2).all()
        border = marks[:, 0].any(1) | marks[:, -1].any(1) | marks[:, :, 0].any(1) | marks[:, :, -1].any(1)
        assert border.all()
        assert not (marks & data.masks).any()
        # High contrast: black frame, white inside.
        pixels = data.images.permute(0, 2, 3, 1)[marks]
        assert ((pixels == 0) | (pixels == 1)).all(1).all()
        assert (pixels == 0).all(1).any() and (pixels == 1).all(1).any()
        # Each position index is one fixed place, and the 8 places differ.
        places = []
        for position in range(8):
            chosen = marks[data.watermark_positions == position]
            assert len(chosen) and (chosen == chosen[0]).all()
            places.append(chosen[0])
        assert len({tuple(place.nonzero().flatten().tolist()) for place in places}) == 8


# --- Parts --------------------------------------------------------------------------------------


def test_parts_same_arguments_give_identical_bytes():
    first, second = make_parts(40, seed=5), make_parts(40, seed=5)
    for field in ("images", "labels", "part_masks", "body_masks", "attributes"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


def test_parts_seeds_and_splits_give_different_images():
    reference = make_parts(20, seed=5).images
    assert not torch.equal(reference, make_parts(20, seed=6).images)
    for split in ("val", "test"):
        assert not torch.equal(reference, make_parts(20, seed=5, split=split).images)
    # A different set from the Shapes set with the same seed and split.
    assert not torch.equal(reference, make_shapes(20, seed=5).images)


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_parts_fields_have_documented_shapes_and_dtypes(image_size):
    n, s = 10, image_size
    data = make_parts(n, image_size=image_size)
    assert isinstance(data, PartsData) and isinstance(data, torch.utils.data.Dataset)
    assert data.images.shape == (n, 3, s, s) and data.images.dtype == torch.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert data.part_masks.shape == (n, 3, s, s) and data.part_masks.dtype == torch.bool
    assert data.body_masks.shape == (n, s, s) and data.body_masks.dtype == torch.bool
    assert data.attributes.shape == (n, 13) and data.attributes.dtype == torch.float32
    assert data.class_attributes.shape == (8, 13) and data.class_attributes.dtype == torch.float32
    assert data.class_determined.shape == (13,) and data.class_determined.dtype == torch.bool
    assert data.part_names == ("head", "wing", "tail")
    assert len(data.class_names) == 8 and len(data.attribute_names) == 13
    assert (data.split, data.seed, len(data)) == ("train", 0, n)
    image, label = data[2]
    assert torch.equal(image, data.images[2]) and label == data.labels[2]
    assert data.tensors[0] is data.images and data.tensors[1] is data.labels


def test_part_masks_are_disjoint_visible_and_inside_the_body(parts_train):
    part_masks, body = parts_train.part_masks, parts_train.body_masks
    assert (part_masks.sum(1) <= 1).all()
    assert not (part_masks.any(1) & ~body).any()
    assert (part_masks.sum((2, 3)) >= 3).all()  # every part of every bird shows
    # The whole bird lies inside the image, clear of its border.
    edges = body[:, 0].any(1) | body[:, -1].any(1) | body[:, :, 0].any(1) | body[:, :, -1].any(1)
    assert not edges.any()


def test_class_determined_attributes_are_the_class_attributes(parts_train):
    determined = parts_train.class_determined
    assert determined.tolist() == [True] * 9 + [False] * 4
    expected = parts_train.class_attributes[parts_train.labels]
    assert torch.equal(parts_train.attributes[:, determined], expected[:, determined])
    assert torch.equal(parts_train.class_attributes, CLASS_ATTRIBUTES)
    assert parts_train.labels.bincount(minlength=8).tolist() == [100] * 8


def test_per_image_attributes_vary_within_every_class(parts_train):
    attributes, labels = parts_train.attributes, parts_train.labels
    per_image = attributes[:, ~parts_train.class_determined]  # wing colour (2), tail colour (2)
    assert (per_image.reshape(-1, 2, 2).sum(-1) == 1).all()  # one value per group
    assert torch.equal(parts_train.class_attributes[:, ~parts_train.class_determined], torch.full((8, 4), 0.5))
    for label in range(8):
        share = per_image[labels == label].mean(0)
        assert ((share > 0.3) & (share < 0.7)).all(), (label, share)  # both values in every class
    # Independent of each other and of the class: the four (wing, tail) colour pairs are about equally common.
    pairs = (per_image[:, 0] * 2 + per_image[:, 2]).long().bincount(minlength=4).float() / len(labels)
    assert ((pairs > 0.2) & (pairs < 0.3)).all(), pairs


def test_class_design_needs_more_than_one_part():
    determined = CLASS_ATTRIBUTES[:, parts.CLASS_DETERMINED]
    groups = determined.reshape(8, 3, 3)  # class, part, value
    assert (groups.sum(-1) == 1).all()  # one value per part
    assert (determined.sum(0) >= 2).all()  # every value shared by two classes or more
    values = groups.argmax(-1)  # (8, 3)
    assert len({tuple(row) for row in values.tolist()}) == 8
    # No single part determines the class: each part value leaves at least two classes ...
    for part in range(3):
        for value in range(3):
            assert (values[:, part] == value).sum() >= 2
    # ... but any two parts do: classes differ pairwise in at least two parts.
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert len({tuple(row) for row in values[:, pair].tolist()}) == 8
    names = parts.ATTRIBUTE_NAMES
    assert names[0] == "head_color::red" and names[4] == "wing_pattern::striped"
    assert names[6] == "tail_shape::fan"
    for name, row in zip(parts.CLASS_NAMES, determined):
        chosen = [names[j].split("::")[1] for j in row.nonzero().flatten()]
        assert name == "-".join(chosen)


def _mean_color(images, masks):
    """Mean RGB (3,) over the masked pixels of all images."""
    return images.permute(0, 2, 3, 1)[masks].mean(0)


def test_classes_share_the_body(parts_train):
    images, labels = parts_train.images, parts_train.labels
    body_only = parts_train.body_masks & ~parts_train.part_masks.any(1)
    overall = _mean_color(images, body_only)
    mean_area = body_only.sum((1, 2)).float().mean()
    for label in range(8):
        chosen = labels == label
        assert (_mean_color(images[chosen], body_only[chosen]) - overall).abs().max() < 0.02
        area = body_only[chosen].sum((1, 2)).float().mean()
        assert abs(area - mean_area) < 0.1 * mean_area


def test_parts_look_like_their_attributes(parts_train):
    images, attributes = parts_train.images, parts_train.attributes
    head, wing, tail = parts_train.part_masks.unbind(1)
    red, blue, yellow = (_mean_color(images[attributes[:, k] == 1], head[attributes[:, k] == 1])
                         for k in range(3))
    assert red[0] > red[1] + 0.3 and red[0] > red[2] + 0.3
    assert blue[2] > blue[0] + 0.3 and blue[2] > blue[1] + 0.3
    assert min(yellow[0], yellow[1]) > yellow[2] + 0.3
    # Wing patterns: share of light pattern pixels in the wing.
    light = images.min(1).values > 0.8
    pattern_share = [(light & wing)[attributes[:, 3 + k] == 1].sum() / wing[attributes[:, 3 + k] == 1].sum()
                     for k in range(3)]
    plain, striped, spotted = (float(share) for share in pattern_share)
    assert plain < 0.02 and striped > 0.3 and 0.08 < spotted < striped
    # Tail shapes: the fan is the widest tail, the pointed one the slimmest.
    fan, forked, pointed = (tail[attributes[:, 6 + k] == 1].sum((1, 2)).float().mean() for k in range(3))
    assert fan > forked > pointed
    # Per-image colours: a grey wing is bluer than a brown one; a rufous tail redder than a dark one.
    plain_wing = wing & ~light
    brown, grey = (_mean_color(images[attributes[:, 9 + k] == 1], plain_wing[attributes[:, 9 + k] == 1])
                   for k in range(2))
    assert grey[2] > brown[2] + 0.3 and grey[2] > grey[0]
    dark, rufous = (_mean_color(images[attributes[:, 11 + k] == 1], tail[attributes[:, 11 + k] == 1])
                    for k in range(2))
    assert rufous[0] > dark[0] + 0.3 and rufous[0] > rufous[2] + 0.4


# --- Argument checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_shapes, make_parts])
@pytest.mark.parametrize("kwargs, error, match", [
    ({"n": 0}, ValueError, "^n must"),
    ({"n": -3}, ValueError, "^n must"),
    ({"n": 2.0}, TypeError, "^n must"),
    ({"n": "10"}, TypeError, "^n must"),
    ({"split": "training"}, ValueError, "split"),
    ({"split": None}, TypeError, "split"),
    ({"image_size": 50}, ValueError, "image_size"),
    ({"image_size": 16}, ValueError, "image_size"),
    ({"image_size": 512}, ValueError, "image_size"),
    ({"image_size": 64.0}, TypeError, "image_size"),
    ({"image_size": "64"}, TypeError, "image_size"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
])
def test_bad_arguments_raise_errors_that_name_them(make, kwargs, error, match):
    kwargs = {"n": 4, **kwargs}
    with pytest.raises(error, match=match):
        make(kwargs.pop("n"), **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"split": "clean_test"}, ValueError, "clean_test.*spurious"),
    ({"spurious": True, "bias": -0.1}, ValueError, "bias"),
    ({"spurious": True, "bias": 1.5}, ValueError, "bias"),
    ({"spurious": True, "bias": "high"}, TypeError, "bias"),
    ({"spurious": 1}, TypeError, "spurious"),
])
def test_bad_shapes_arguments_raise_errors_that_name_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_shapes(4, **kwargs)


def test_parts_have_no_clean_test_split_and_circles_no_vertices():
    with pytest.raises(ValueError, match="split"):
        make_parts(4, split="clean_test")
    with pytest.raises(ValueError, match="kind"):
        shape_vertices("circle", (1.0, 1.0), 1.0, 0.0)
