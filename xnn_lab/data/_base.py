"""What every generated image set shares: indexing as a Dataset and its ``(images, labels)`` tensors."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class ImageSet(Dataset):
    """Base of the image dataclasses: ``len``, ``set[i] -> (image, label)`` and ``tensors``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(images, labels)`` pair, for code that slices the tensors directly (``xnn_lab.fit``)."""
        return self.images, self.labels
