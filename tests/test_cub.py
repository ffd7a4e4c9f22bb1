"""The CUB-200-2011 loader on a tiny fixture written in the official on-disk format."""

import numpy as np
import pytest
import torch
from PIL import Image

from xnn_lab.data.cub import load_cub

CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
ATTRIBUTES = ("has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_wing_color::brown",
              "has_size::small_(5_-_9_in)")
# (image id, class id, is training, box (x, y, w, h), colour inside the box, file suffix); the ids
# in images.txt are listed out of order, as nothing in the format promises order.
IMAGES = [
    (3, 2, 1, (4.0, 6.0, 10.0, 8.0), (255, 0, 0), "jpg"),
    (1, 1, 1, (2.0, 3.0, 12.0, 9.0), (0, 255, 0), "png"),
    (2, 1, 0, (0.0, 0.0, 20.0, 16.0), (0, 0, 255), "png"),
    (4, 3, 0, (10.0, 2.0, 8.0, 12.0), (255, 255, 0), "jpg"),
    (5, 3, 1, (5.5, 4.5, 6.0, 7.0), (255, 0, 255), "png"),
]
# (image id, attribute id, is present, certainty); one line carries the extra field some official
# lines have.
ATTRIBUTE_ROWS = [(i, a, int((i + a) % 2 == 0), 1 + (i * a) % 4) for i, *_ in IMAGES for a in range(1, 5)]


def write_cub(root, *, attributes_txt_in="root"):
    """The official layout under root (CUB_200_2011), 20 x 16 images whose box is one colour."""
    (root / "attributes").mkdir(parents=True)
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for image_id, class_id, train, (x, y, w, h), colour, suffix in IMAGES:
        name = f"{CLASSES[class_id - 1]}/{CLASSES[class_id - 1].split('.')[1]}_{image_id:04d}.{suffix}"
        pixels = np.full((16, 20, 3), 128, dtype=np.uint8)
        pixels[round(y):round(y + h), round(x):round(x + w)] = colour
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / name, **({"quality": 100, "subsampling": 0} if suffix == "jpg" else {}))
        lines["images.txt"].append(f"{image_id} {name}")
        lines["image_class_labels.txt"].append(f"{image_id} {class_id}")
        lines["train_test_split.txt"].append(f"{image_id} {train}")
        lines["bounding_boxes.txt"].append(f"{image_id} {x} {y} {w} {h}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(CLASSES, 1)))
    rows = [f"{i} {a} {p} {c} 3.5" for i, a, p, c in ATTRIBUTE_ROWS]
    rows[3] += " 0"
    (root / "attributes" / "image_attribute_labels.txt").write_text("\n".join(rows) + "\n")
    folder = {"root": root, "attributes": root / "attributes", "parent": root.parent}[attributes_txt_in]
    (folder / "attributes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(ATTRIBUTES, 1)))
    return root


@pytest.fixture
def cub_root(tmp_path):
    return write_cub(tmp_path / "CUB_200_2011")


def test_splits_labels_boxes_and_paths(cub_root):
    train, test, everything = (load_cub(cub_root, split) for split in ("train", "test", "all"))
    assert train.image_ids.tolist() == [1, 3, 5] and test.image_ids.tolist() == [2, 4]
    assert everything.image_ids.tolist() == [1, 2, 3, 4, 5]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 2]
    assert train.class_names == CLASSES
    assert torch.equal(train.boxes[1], torch.tensor([4.0, 6.0, 10.0, 8.0]))
    assert train.image_paths[0] == cub_root / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0001.png"
    assert len(train) == 3 and repr(train) == "CUBData(n=3, split='train', image_size=224, crop=True)"


def test_images_are_cropped_to_their_box_resized_and_scaled(cub_root):
    data = load_cub(cub_root, "all", image_size=12)
    images = torch.stack([data[i][0] for i in range(len(data))])
    assert images.shape == (5, 3, 12, 12) and images.dtype == torch.float32
    colours = torch.tensor([colour for *_, colour, _ in sorted(IMAGES)], dtype=torch.float32) / 255
    # Inside the box every pixel has the box colour (JPEG, without chroma subsampling, within a
    # few levels), so after the crop
    # the whole image does.
    assert torch.allclose(images.mean(dim=(2, 3)), colours, atol=0.03)
    _, label = data[2]
    assert label.item() == 1 and label.dtype == torch.int64
    uncropped = load_cub(cub_root, "all", image_size=12, crop=False)
    assert not torch.allclose(uncropped[0][0].mean(dim=(1, 2)), colours[0], atol=0.03)


def test_transform_receives_the_cropped_pil_image(cub_root):
    data = load_cub(cub_root, "train", transform=lambda image: image.size)
    assert data[0][0] == (12, 9) and data[1][0] == (10, 8)


def test_attributes_follow_the_labels_file(cub_root):
    data = load_cub(cub_root, "test")
    assert data.attribute_names == ATTRIBUTES
    assert data.attributes.shape == (2, 4) and data.attribute_certainty.shape == (2, 4)
    expected = {(i, a): (p, c) for i, a, p, c in ATTRIBUTE_ROWS}
    for row, image_id in enumerate(data.image_ids.tolist()):
        for column in range(4):
            present, certainty = expected[(image_id, column + 1)]
            assert data.attributes[row, column].item() == present
            assert data.attribute_certainty[row, column].item() == certainty
    assert load_cub(cub_root, "test", attributes=False).attributes is None


@pytest.mark.parametrize("place", ["attributes", "parent"])
def test_attribute_names_are_found_where_the_releases_put_them(tmp_path, place):
    root = write_cub(tmp_path / "CUB_200_2011", attributes_txt_in=place)
    assert load_cub(root).attribute_names == ATTRIBUTES


def test_a_torch_dataloader_batches_it(cub_root):
    images, labels = next(iter(torch.utils.data.DataLoader(load_cub(cub_root, image_size=8), batch_size=3)))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 2]


def test_clear_errors(cub_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="root .* is not a folder"):
        load_cub(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cub(cub_root, "val")
    (cub_root / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt not found"):
        load_cub(cub_root)


def test_malformed_or_inconsistent_files_are_named(tmp_path):
    root = write_cub(tmp_path / "a" / "CUB_200_2011")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 3\n5\n")
    with pytest.raises(ValueError, match="image_class_labels.txt, line 5: expected 2 fields"):
        load_cub(root)
    root = write_cub(tmp_path / "b" / "CUB_200_2011")
    (root / "image_class_labels.txt").write_text("1 2\n2 1\n3 2\n4 3\n5 3\n")
    with pytest.raises(ValueError, match="lies in class folder '001.Black_footed_Albatross'"):
        load_cub(root)
    root = write_cub(tmp_path / "c" / "CUB_200_2011")
    next((root / "images" / CLASSES[0]).glob("*_0001.png")).unlink()
    with pytest.raises(FileNotFoundError, match="listed in images.txt is missing"):
        load_cub(root)[0]
