"""CUB-200-2011 (Wah et al. 2011) from its official on-disk layout; nothing is downloaded.

The folder ``root`` (usually ``CUB_200_2011``) holds ``images.txt``, ``image_class_labels.txt``,
``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``, the images in one folder per
class under ``images/``, and ``attributes/image_attribute_labels.txt``; the attribute names are in
``attributes.txt``, found in ``root``, in ``root/attributes`` or beside ``root`` (where the
official archive puts it). Identifiers in the files are 1-based; labels here are 0-based.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor, resize

from xnn_lab._core.checks import check_choice, check_int

SPLITS = ("train", "test", "all")


def _read_table(root: Path, name: str, columns: int) -> list[list[str]]:
    """The rows of a whitespace-separated file, each cut to its first ``columns`` fields.

    The last field keeps any spaces (image and class names have none, attribute names neither).
    """
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"CUB-200-2011 file {name} not found in root {root}")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < columns:
                raise ValueError(f"{path}, line {number}: expected {columns} fields, got {line.strip()!r}")
            rows.append(fields[:columns])
    if not rows:
        raise ValueError(f"{path} is empty")
    return rows


def _ids(path: str, rows: list[list[str]], column: int = 0) -> np.ndarray:
    try:
        return np.array([int(row[column]) for row in rows])
    except ValueError as err:
        raise ValueError(f"{path}: identifiers must be integers ({err})") from err


def _by_image(name: str, rows: list[list[str]], image_ids: np.ndarray) -> list[list[str]]:
    """The rows keyed by their first field (an image id), in the order of ``image_ids``."""
    table = {int(row[0]): row[1:] for row in rows}
    missing = [int(i) for i in image_ids if int(i) not in table]
    if missing:
        raise ValueError(f"{name} has no row for image id(s) {missing[:5]}")
    return [table[int(i)] for i in image_ids]


class CUBData(Dataset):
    """CUB-200-2011 images with labels, bounding boxes and attributes; ``data[i] -> (image, label)``.

    Images are read from disk on access: cropped to their bounding box (``crop=True``), resized to
    ``image_size`` x ``image_size`` and scaled to [0, 1], or passed to ``transform``.

    Attributes:
        labels: (N,) int64 class indices in [0, 200).
        boxes: (N, 4) float32 bounding boxes (x, y, width, height) in pixels.
        attributes: (N, A) float32 0/1, whether each attribute is present (A = 312 in the release),
            or ``None`` when loaded without attributes.
        attribute_certainty: (N, A) int64 certainty ids (1 not visible ... 4 definitely), or ``None``.
        image_paths: the N image files.
        image_ids: (N,) int64 ids of the images in ``images.txt``.
        class_names: the 200 class names, e.g. ``"001.Black_footed_Albatross"``.
        attribute_names: e.g. ``"has_bill_shape::curved_(up_or_down)"``; empty without attributes.
        split: ``"train"``, ``"test"`` or ``"all"``.
    """

    def __init__(self, root: Path, image_ids: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                 paths: list[Path], class_names: tuple[str, ...], attributes: torch.Tensor | None,
                 certainty: torch.Tensor | None, attribute_names: tuple[str, ...], split: str,
                 image_size: int, crop: bool, transform):
        self.root = root
        self.image_ids = torch.as_tensor(image_ids, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.boxes = torch.as_tensor(boxes, dtype=torch.float32)
        self.image_paths = paths
        self.class_names = class_names
        self.attributes = attributes
        self.attribute_certainty = certainty
        self.attribute_names = attribute_names
        self.split = split
        self.image_size = image_size
        self.crop = crop
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image, cropped to its bounding box when ``crop`` is set."""
        path = self.image_paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"CUB-200-2011 image {path} listed in images.txt is missing") from err
        if self.crop:
            x, y, width, height = self.boxes[index].tolist()
            left, top = max(0, round(x)), max(0, round(y))
            right = min(image.width, max(left + 1, round(x + width)))
            bottom = min(image.height, max(top + 1, round(y + height)))
            image = image.crop((left, top, right, bottom))
        return image

    def __getitem__(self, index: int):
        index = check_int("index", index, minimum=-len(self), maximum=len(self) - 1) % len(self)
        image = self.load_image(index)
        if self.transform is not None:
            return self.transform(image), self.labels[index]
        image = resize(image, [self.image_size, self.image_size], antialias=True)
        return pil_to_tensor(image).float() / 255, self.labels[index]

    def __repr__(self) -> str:
        return f"CUBData(n={len(self)}, split={self.split!r}, image_size={self.image_size}, crop={self.crop})"


def _attribute_names(root: Path) -> tuple[str, ...]:
    for folder in (root, root / "attributes", root.parent):
        if (folder / "attributes.txt").is_file():
            rows = _read_table(folder, "attributes.txt", 2)
            order = np.argsort(_ids("attributes.txt", rows))
            return tuple(rows[i][1] for i in order)
    raise FileNotFoundError(f"CUB-200-2011 file attributes.txt not found in {root}, {root / 'attributes'} "
                            f"or {root.parent}")


def _attributes(root: Path, image_ids: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = _read_table(root, "attributes/image_attribute_labels.txt", 4)
    try:
        table = np.array(rows, dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"attributes/image_attribute_labels.txt must hold integers ({err})") from err
    position = {int(image_id): i for i, image_id in enumerate(image_ids)}
    present = torch.zeros(len(image_ids), count)
    certainty = torch.zeros(len(image_ids), count, dtype=torch.long)
    rows_here = np.array([int(image_id) in position for image_id in table[:, 0]], dtype=bool)
    table = table[rows_here]
    if len(table) and (table[:, 1].min() < 1 or table[:, 1].max() > count):
        raise ValueError(f"attributes/image_attribute_labels.txt has attribute ids outside [1, {count}]")
    image_rows = torch.as_tensor([position[int(image_id)] for image_id in table[:, 0]], dtype=torch.long)
    attribute_columns = torch.as_tensor(table[:, 1] - 1)
    present[image_rows, attribute_columns] = torch.as_tensor(table[:, 2], dtype=torch.float32)
    certainty[image_rows, attribute_columns] = torch.as_tensor(table[:, 3])
    return present, certainty


def load_cub(root: str | Path, split: str = "train", *, image_size: int = 224, crop: bool = True,
             attributes: bool = True, transform=None) -> CUBData:
    """Load CUB-200-2011 from its official on-disk layout (see the module docstring).

    Args:
        root: the folder that holds ``images.txt`` (e.g. ``.../CUB_200_2011``).
        split: ``"train"`` or ``"test"`` (the official split of ``train_test_split.txt``), or ``"all"``.
        image_size: side of the square images returned (without ``transform``).
        crop: crop each image to its bounding box first.
        attributes: read the per-image attribute labels (and their names).
        transform: a callable applied to the (cropped) PIL image instead of resizing and scaling;
            e.g. a torchvision transform with normalisation.

    Returns:
        a :class:`CUBData`; images are read when accessed.

    Raises:
        FileNotFoundError: for a missing root, metadata file or image.
        ValueError: for malformed metadata.
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root {root} is not a folder; it must be the CUB_200_2011 folder that holds "
                                "images.txt (nothing is downloaded)")
    split = check_choice("split", split, SPLITS)
    image_size = check_int("image_size", image_size, minimum=1)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable, got {type(transform).__name__}")

    images = _read_table(root, "images.txt", 2)
    image_ids = _ids("images.txt", images)
    order = np.argsort(image_ids)
    image_ids = image_ids[order]
    names = [images[i][1] for i in order]
    classes = _read_table(root, "classes.txt", 2)
    class_order = np.argsort(_ids("classes.txt", classes))
    class_names = tuple(classes[i][1] for i in class_order)
    labels = np.array([int(row[0]) for row in _by_image("image_class_labels.txt",
                                                        _read_table(root, "image_class_labels.txt", 2), image_ids)]) - 1
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"image_class_labels.txt has class ids outside [1, {len(class_names)}]")
    is_train = np.array([int(row[0]) for row in _by_image("train_test_split.txt",
                                                          _read_table(root, "train_test_split.txt", 2), image_ids)])
    boxes = np.array(_by_image("bounding_boxes.txt", _read_table(root, "bounding_boxes.txt", 5), image_ids),
                     dtype=np.float32)
    for name, label in zip(names, labels):
        folder = Path(name).parts[0]
        if folder != class_names[label]:
            raise ValueError(f"image {name} is labelled {class_names[label]!r} but lies in class folder {folder!r}")

    keep = np.ones(len(image_ids), dtype=bool) if split == "all" else is_train == (1 if split == "train" else 0)
    image_ids, labels, boxes = image_ids[keep], labels[keep], boxes[keep]
    paths = [root / "images" / name for name, kept in zip(names, keep) if kept]
    present = certainty = None
    attribute_names: tuple[str, ...] = ()
    if attributes:
        attribute_names = _attribute_names(root)
        present, certainty = _attributes(root, image_ids, len(attribute_names))
    return CUBData(root, image_ids, labels, boxes, paths, class_names, present, certainty, attribute_names, split,
                   image_size, crop, transform)
