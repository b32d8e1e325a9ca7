"""Batches of uint8 patches for training and evaluation, from RAM or streamed from disk.

Both sources yield ``(images, labels, skipped)``: uint8 ``(B, H, W, 3)`` tensors, int64 ``(B,)`` labels
and the number of unreadable files skipped in that batch. The conversion to float, augmentation and
normalisation happen afterwards on the training device, as tensor operations.

``cache: auto`` decodes the split into RAM when ``N x 96 x 96 x 3`` bytes fit ``memory_budget_gb`` (the
fastest path: no decoding after the first pass), and streams from disk through a ``DataLoader``
otherwise. Streaming readers open their files lazily inside each worker, so several workers are safe.

Example:
    >>> source = make_batch_source(open_split("sample", "train"), DataConfig(), batch_size=64)
    >>> for images, labels, skipped in source.epoch(seed=0): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from pcamlab.config import DataConfig
from pcamlab.data.readers import BadImageError, PatchReader, load_split_arrays

__all__ = ["InMemoryBatches", "StreamingBatches", "make_batch_source", "fits_in_memory"]

Batch = tuple[torch.Tensor, torch.Tensor, int]


def _order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    if not shuffle:
        return np.arange(count)
    return np.random.default_rng(seed).permutation(count)


class InMemoryBatches:
    """Batches cut from decoded arrays held in RAM (shared memory, no copies per epoch)."""

    kind = "ram"

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = True,
        drop_last: bool = False, skipped: int = 0,
    ):
        self.images = torch.from_numpy(images)  # (N, H, W, 3) uint8
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.skipped = skipped  # unreadable files skipped while decoding

    def __len__(self) -> int:
        count = len(self.labels)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def epoch(self, seed: int = 0) -> Iterator[Batch]:
        order = torch.from_numpy(_order(len(self.labels), self.shuffle, seed))
        for index in range(len(self)):
            take = order[index * self.batch_size : (index + 1) * self.batch_size]
            yield self.images[take], self.labels[take], 0


class _SkippingDataset(torch.utils.data.Dataset):
    def __init__(self, reader: PatchReader, skip_bad: bool):
        self.reader = reader
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        try:
            image, label = self.reader[index]
        except BadImageError:
            if not self.skip_bad:
                raise
            return None
        return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])), int(label)  # Pillow arrays are read-only


def _collate(items: list) -> Batch:
    kept = [item for item in items if item is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return torch.empty((0, 96, 96, 3), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), skipped
    images = torch.stack([image for image, _ in kept])  # (B, H, W, 3)
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    return images, labels, skipped


class StreamingBatches:
    """Batches decoded from disk on the fly by ``num_workers`` DataLoader workers."""

    kind = "stream"

    def __init__(
        self, reader: PatchReader, batch_size: int, *, shuffle: bool = True, drop_last: bool = False,
        num_workers: int = 0, skip_bad: bool = False,
    ):
        self.reader = reader
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.dataset = _SkippingDataset(reader, skip_bad or getattr(reader, "skip_bad", False))  # as load_split_arrays
        self.skipped = 0  # grows as epochs meet unreadable files

    def __len__(self) -> int:
        count = len(self.reader)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.reader)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.reader.labels, dtype=np.int64))

    def epoch(self, seed: int = 0) -> Iterator[Batch]:
        order = _order(len(self.reader), self.shuffle, seed).tolist()
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=_collate,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )
        for images, labels, skipped in loader:
            self.skipped += skipped
            yield images, labels, skipped


def fits_in_memory(reader: PatchReader, budget_gb: float, patch_size: int = 96) -> bool:
    """True when the decoded split (uint8) fits within ``budget_gb``."""
    return len(reader) * patch_size * patch_size * 3 <= budget_gb * 1024**3


def make_batch_source(
    reader: PatchReader,
    config: DataConfig,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> InMemoryBatches | StreamingBatches:
    """RAM or streaming batches for one split, following ``config.cache`` and its memory budget."""
    cache = config.cache
    if cache == "auto":
        cache = "ram" if fits_in_memory(reader, config.memory_budget_gb) else "stream"
    if cache == "ram":
        images, labels, skipped = load_split_arrays(reader, skip_bad=config.skip_bad, progress=progress)
        return InMemoryBatches(images, labels, batch_size, shuffle=shuffle, drop_last=drop_last, skipped=skipped)
    return StreamingBatches(
        reader, batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=config.num_workers,
        skip_bad=config.skip_bad,
    )
