"""RAM and streaming batch sources yield the same patches, in a seeded order, safely across workers.

The fixtures hold REAL sample patches (``fixtures_data``) written losslessly as the official HDF5
pair and as PNG class folders, so the two sources can be compared pixel for pixel.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from pcamlab.config import DataConfig
from pcamlab.data import BadImageError, load_split_arrays, open_split
from pcamlab.data import loader
from pcamlab.data.loader import InMemoryBatches, StreamingBatches, fits_in_memory, make_batch_source
from fixtures_data import sample_patches, write_bad_image, write_folders, write_h5

COUNT = 22  # not a multiple of BATCH_SIZE, so the last batch is short
BATCH_SIZE = 8
PATCH_BYTES = 96 * 96 * 3


@pytest.fixture(scope="module")
def patches():
    return sample_patches(COUNT, "train", seed=3)


@pytest.fixture(scope="module")
def roots(tmp_path_factory, patches):
    tmp = tmp_path_factory.mktemp("loader")
    return {
        "h5": write_h5(tmp / "h5", {"train": patches}),
        "folders": write_folders(tmp / "folders", {"train": patches}, image_format="png"),
    }


def _ram(reader, **options) -> InMemoryBatches:
    images, labels, skipped = load_split_arrays(reader)
    return InMemoryBatches(images, labels, BATCH_SIZE, skipped=skipped, **options)


def _keys(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, int]]:
    """One (pixel hash, label) key per patch of a batch."""
    return [
        (hashlib.sha256(image.numpy().tobytes()).hexdigest(), int(label)) for image, label in zip(images, labels)
    ]


def _epoch_keys(source, seed: int = 0) -> list[list[tuple[str, int]]]:
    """The keys of every batch of one epoch, batch by batch."""
    batches = []
    for images, labels, _ in source.epoch(seed=seed):
        assert images.dtype == torch.uint8 and images.shape[1:] == (96, 96, 3)
        assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
        batches.append(_keys(images, labels))
    return batches


def _flat(batches: list[list]) -> list:
    return [key for batch in batches for key in batch]


@pytest.mark.parametrize("layout", ["h5", "folders"])
def test_ram_and_streaming_yield_the_same_pairs_as_the_files(roots, patches, layout):
    reader = open_split(roots[layout], "train")
    expected = sorted(_keys(torch.from_numpy(patches[0]), torch.from_numpy(patches[1])))
    ram = _epoch_keys(_ram(reader), seed=5)
    stream = _epoch_keys(StreamingBatches(reader, BATCH_SIZE), seed=5)
    assert sorted(_flat(ram)) == expected
    assert sorted(_flat(stream)) == expected
    assert [len(batch) for batch in ram] == [8, 8, 6]
    # same seed: switching data.cache does not change what the model sees, batch by batch
    assert ram == stream


@pytest.mark.parametrize("kind", ["ram", "stream"])
def test_same_seed_same_order_and_different_seed_different_order(roots, kind):
    reader = open_split(roots["h5"], "train")
    source = _ram(reader) if kind == "ram" else StreamingBatches(reader, BATCH_SIZE)
    first = _flat(_epoch_keys(source, seed=11))
    assert _flat(_epoch_keys(source, seed=11)) == first
    other = _flat(_epoch_keys(source, seed=12))
    assert other != first and sorted(other) == sorted(first)


@pytest.mark.parametrize("kind", ["ram", "stream"])
def test_no_shuffle_keeps_the_reader_order(roots, patches, kind):
    reader = open_split(roots["folders"], "train")
    source = _ram(reader, shuffle=False) if kind == "ram" else StreamingBatches(reader, BATCH_SIZE, shuffle=False)
    expected = _keys(torch.from_numpy(patches[0]), torch.from_numpy(patches[1]))  # fixture order = file order
    assert _flat(_epoch_keys(source, seed=1)) == expected == _flat(_epoch_keys(source, seed=2))


@pytest.mark.parametrize("kind", ["ram", "stream"])
def test_drop_last_drops_only_the_short_batch(roots, kind):
    reader = open_split(roots["h5"], "train")
    keep = _ram(reader) if kind == "ram" else StreamingBatches(reader, BATCH_SIZE)
    drop = _ram(reader, drop_last=True) if kind == "ram" else StreamingBatches(reader, BATCH_SIZE, drop_last=True)
    assert (len(keep), len(drop)) == (3, 2)
    kept, dropped = _epoch_keys(keep, seed=4), _epoch_keys(drop, seed=4)
    assert [len(batch) for batch in dropped] == [8, 8]
    assert dropped == kept[:2]  # the same full batches, only the remainder of 6 goes
    assert keep.num_samples == drop.num_samples == COUNT


def test_streaming_h5_with_two_workers_matches_the_main_process(roots):
    reader = open_split(roots["h5"], "train")
    reader[0]  # the parent opens its HDF5 handle before the workers fork: each must open its own
    assert reader._pid == os.getpid()
    single = _epoch_keys(StreamingBatches(reader, BATCH_SIZE, num_workers=0), seed=7)
    workers = _epoch_keys(StreamingBatches(reader, BATCH_SIZE, num_workers=2), seed=7)
    assert workers == single
    assert sorted(_flat(workers)) == sorted(_flat(_epoch_keys(_ram(reader), seed=0)))
    # the parent's handle is untouched by the workers and still reads
    assert reader._pid == os.getpid()
    np.testing.assert_array_equal(reader[COUNT - 1][0], load_split_arrays(reader)[0][COUNT - 1])


def test_cache_auto_picks_ram_under_the_budget_and_streams_over_it(roots):
    reader = open_split(roots["h5"], "train")
    exact_gb = COUNT * PATCH_BYTES / 1024**3
    assert fits_in_memory(reader, exact_gb) and not fits_in_memory(reader, exact_gb * 0.999)
    under = make_batch_source(reader, DataConfig(cache="auto", memory_budget_gb=exact_gb), BATCH_SIZE)
    over = make_batch_source(reader, DataConfig(cache="auto", memory_budget_gb=exact_gb * 0.999), BATCH_SIZE)
    assert isinstance(under, InMemoryBatches) and under.kind == "ram"
    assert isinstance(over, StreamingBatches) and over.kind == "stream"
    assert under.images.shape == (COUNT, 96, 96, 3)
    # an explicit choice wins over the budget
    assert make_batch_source(reader, DataConfig(cache="ram", memory_budget_gb=1e-9), BATCH_SIZE).kind == "ram"
    assert make_batch_source(reader, DataConfig(cache="stream", memory_budget_gb=64), BATCH_SIZE).kind == "stream"


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory, patches):
    root = write_folders(tmp_path_factory.mktemp("broken"), {"train": patches}, image_format="png")
    write_bad_image(root / "train" / "0" / "100.png", "truncated", source=patches[0][0])
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_skip_bad_counts_the_corrupt_file(broken_root, patches, num_workers):
    reader = open_split(broken_root, "train")
    assert len(reader) == COUNT + 1
    config = DataConfig(cache="stream", skip_bad=True, num_workers=num_workers)
    source = make_batch_source(reader, config, BATCH_SIZE)
    per_batch = []
    keys = []
    for images, labels, skipped in source.epoch(seed=0):
        per_batch.append(skipped)
        keys += _keys(images, labels)
    assert sum(per_batch) == 1 and source.skipped == 1
    second_epoch = sum(skipped for _, _, skipped in source.epoch(seed=1))  # workers persist across epochs
    assert second_epoch == 1 and source.skipped == 1  # the same bad file met again is counted once
    assert sorted(keys) == sorted(_keys(torch.from_numpy(patches[0]), torch.from_numpy(patches[1])))
    ram = make_batch_source(reader, DataConfig(cache="ram", skip_bad=True), BATCH_SIZE)
    assert ram.skipped == 1 and ram.num_samples == COUNT


def test_streaming_without_skip_bad_stops_at_the_corrupt_file(broken_root):
    source = make_batch_source(open_split(broken_root, "train"), DataConfig(cache="stream"), BATCH_SIZE)
    with pytest.raises(BadImageError, match="100.png"):
        for _ in source.epoch(seed=0):
            pass


def test_streaming_honours_the_readers_skip_bad_like_load_split_arrays(broken_root):
    reader = open_split(broken_root, "train", skip_bad=True)
    assert load_split_arrays(reader)[2] == 1
    source = StreamingBatches(reader, BATCH_SIZE)  # skip_bad not passed: the reader's default applies
    assert sum(skipped for _, _, skipped in source.epoch(seed=0)) == 1


def test_streaming_hands_torch_writable_arrays(tmp_path, patches, monkeypatch):
    # Pillow's arrays are read-only; torch.from_numpy on one warns (once per process) of undefined behaviour
    root = write_folders(tmp_path, {"train": (patches[0][:2], patches[1][:2])}, image_format="jpg")
    seen, original = [], torch.from_numpy

    def from_numpy(array):
        seen.append(array.flags.writeable)
        return original(array)

    monkeypatch.setattr(loader.torch, "from_numpy", from_numpy)
    next(StreamingBatches(open_split(root, "train"), 4).epoch(seed=0))
    assert seen == [True, True]
