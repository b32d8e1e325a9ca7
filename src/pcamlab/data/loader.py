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


def _batch_count(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``count`` samples: a last short batch counts unless ``drop_last``."""
    return count // batch_size if drop_last else -(-count // batch_size)


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
        return _batch_count(len(self.labels), self.batch_size, self.drop_last)

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
            return index  # a bad file: its index travels back so each one is counted once
        return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])), int(label)  # Pillow arrays are read-only


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    kept = [item for item in items if isinstance(item, tuple)]
    bad = [item for item in items if not isinstance(item, tuple)]
    if not kept:
        return torch.empty((0, 0, 0, 3), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    images = torch.stack([image for image, _ in kept])  # (B, H, W, 3)
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    return images, labels, bad


class _EpochOrder(torch.utils.data.Sampler):
    """A sampler whose order is set before each epoch, so worker processes can persist across epochs."""

    def __init__(self, count: int):
        self.order = list(range(count))

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


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
        self.bad_indices: set[int] = set()  # unreadable files met so far, each counted once
        self._sampler = _EpochOrder(len(reader))
        self._loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=self._sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=_collate,
            persistent_workers=num_workers > 0,  # no worker start-up (and h5 re-open) every epoch
            prefetch_factor=4 if num_workers else None,
            # the loader draws its workers' base seed when an iterator starts (every epoch without
            # workers, the first epoch with persistent ones); from its own generator, never from torch's
            # global one, which seeds dropout: a resumed run must see the same dropout as a straight one
            generator=torch.Generator().manual_seed(0),
        )

    @property
    def skipped(self) -> int:
        """Unreadable files met so far (each counted once however many epochs meet it)."""
        return len(self.bad_indices)

    def __len__(self) -> int:
        return _batch_count(len(self.reader), self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        return len(self.reader)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.reader.labels, dtype=np.int64))

    def epoch(self, seed: int = 0) -> Iterator[Batch]:
        self._sampler.order = _order(len(self.reader), self.shuffle, seed).tolist()
        for images, labels, bad in self._loader:
            self.bad_indices.update(bad)
            yield images, labels, len(bad)


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
