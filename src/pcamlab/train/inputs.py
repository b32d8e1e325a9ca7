"""The data of one training run: the two splits as batch sources, their checks, and the input contract.

:func:`open_training_data` opens ``config.data``'s splits (or the readers a protocol passes), decodes them
into RAM or streams them, refuses data a detector cannot learn from (nothing readable, one class only,
fewer patches than one batch), fits the stain normaliser and measures the channel statistics that the
input contract stores.

Example:
    >>> from pcamlab.config import load_config
    >>> data = open_training_data(load_config(None, ["data.path=sample"]), readers=None, say=print, progress=False)
    >>> data.contract.patch_size
    96
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pcamlab.config import RunConfig
from pcamlab.errors import ConfigError, DataError

__all__ = ["TrainingData", "open_training_data"]


@dataclass
class TrainingData:
    """The opened splits of a run.

    Attributes:
        train_reader / valid_reader: the readers (``valid_reader`` None for a final fit).
        train_source / valid_source: their batch sources (``InMemoryBatches`` or ``StreamingBatches``).
        contract: the input contract (patch size, channel statistics, stain normaliser, threshold).
        monitor: ``train.monitor``, or ``val_loss`` when validation holds one class (no ROC AUC).
        one_class_valid: the validation split holds one class only.
        warnings: lines for ``summary.json`` (already said).
    """

    train_reader: Any
    valid_reader: Any
    train_source: Any
    valid_source: Any
    contract: Any
    monitor: str
    one_class_valid: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def validated(self) -> bool:
        return self.valid_source is not None

    @property
    def skipped(self) -> int:
        return self.train_source.skipped + (self.valid_source.skipped if self.valid_source else 0)

    def facts(self) -> dict[str, Any]:
        """The ``data`` entry of ``summary.json``."""
        train_source, valid_source = self.train_source, self.valid_source
        return {
            "root": str(self.train_reader.root), "format": self.train_reader.format, "loading": train_source.kind,
            "train_patches": train_source.num_samples, "valid_patches": valid_source.num_samples if valid_source else 0,
            "train_class_counts": {str(k): int(v) for k, v in zip(*np.unique(train_source.labels.numpy(), return_counts=True))},
            "skipped_files": self.skipped,
        }


def open_training_data(config: RunConfig, readers: tuple[Any, Any | None] | None, say: Callable[[str], object],
                       progress: bool) -> TrainingData:
    """Open, decode and check the training and validation data of ``config`` (or ``readers``).

    Raises:
        DataError: no readable training or validation patch, or a training split with one class only.
        ConfigError: ``train.batch_size`` larger than the training split; stain normalisation while streaming.
    """
    from pcamlab.data import PATCH_SIZE, open_split
    from pcamlab.data.loader import InMemoryBatches, make_batch_source
    from pcamlab.progress import progress_bar
    from pcamlab.runtime.contract import InputContract

    data_config, train_config = config.data, config.train
    if readers is None:
        options = dict(format=data_config.format, valid_fraction=data_config.valid_fraction, seed=data_config.seed)
        train_reader = open_split(data_config.path, data_config.train_split, **options)
        valid_reader = open_split(data_config.path, data_config.valid_split, **options)
    else:
        train_reader, valid_reader = readers
    valid_count = len(valid_reader) if valid_reader is not None else 0
    say(f"data: {train_reader.root} ({train_reader.format}); train {len(train_reader)}, valid {valid_count} patches")
    for note in dict.fromkeys([*train_reader.notes, *(valid_reader.notes if valid_reader is not None else [])]):
        say(f"data: note: {note}")

    update, close = progress_bar("decoding train", progress)
    # drop_last: every training step has train.batch_size patches, never a last partial batch of one
    # patch that batch-norm cannot train on (801 patches in batches of 32: 25 steps, a different patch
    # left out each epoch as the order is reshuffled)
    train_source = make_batch_source(
        train_reader, data_config, train_config.batch_size, shuffle=True, drop_last=True, progress=update
    )
    close()
    valid_source = None
    if valid_reader is not None:
        update, close = progress_bar("decoding valid", progress)
        valid_source = make_batch_source(
            valid_reader, data_config, config.evaluate.batch_size, shuffle=False, progress=update
        )
        close()
    _check_readable(train_reader, train_source, valid_reader, valid_source)
    monitor, warnings, one_class_valid = _choose_monitor(config, valid_reader, valid_source)
    for line in warnings:
        say(f"warning: {line}")
    if len(train_source) == 0:
        raise ConfigError(
            f"train.batch_size {train_config.batch_size} is larger than the {train_source.num_samples} "
            "training patches; lower it"
        )
    skipped = train_source.skipped + (valid_source.skipped if valid_source else 0)
    if train_source.kind == "ram":
        say(f"data: decoded into RAM; {skipped} unreadable files skipped")
    else:
        say("data: streaming from disk; unreadable files are counted as they are met (see summary.json)")

    stain = _fit_stain_normalizer(config, [s for s in (train_source, valid_source) if s is not None])
    train_images = train_source.images if isinstance(train_source, InMemoryBatches) else None
    mean, std = _data_stats(train_images, train_reader, data_config.skip_bad or getattr(train_reader, "skip_bad", False))
    # every reader yields PATCH_SIZE patches (checked per image), so no item needs decoding for it
    # scored in fp32 on every machine (validation, evaluate, predict): bf16 scores moved the chosen threshold
    # and lost ties (626 distinct bf16 probabilities of 1,024) for no speed-up on a CPU without bf16 hardware
    contract = InputContract(patch_size=PATCH_SIZE, mean=mean, std=std, precision="fp32",
                             input_scaling=data_config.input_scaling,
                             threshold=config.evaluate.threshold, stain_normalization=stain)
    if stain is not None:
        say(f"data: {config.data.stain_normalization} stain normalisation fitted on training patches")
    return TrainingData(train_reader, valid_reader, train_source, valid_source, contract, monitor, one_class_valid,
                        warnings)


def _check_readable(train_reader, train_source, valid_reader, valid_source) -> None:
    if train_source.num_samples == 0:
        raise DataError(
            f"no readable training patch in split {train_reader.split!r} of {str(train_reader.root)!r}: all "
            f"{len(train_reader)} were skipped (first: {train_reader.name(0)}); fix or replace the files"
        )
    if valid_source is not None and valid_source.num_samples == 0:
        raise DataError(
            f"no readable validation patch in split {valid_reader.split!r} of {str(valid_reader.root)!r}: all "
            f"{len(valid_reader)} were skipped (first: {valid_reader.name(0)}); fix or replace the files"
        )
    train_classes = sorted(set(train_source.labels.tolist()))
    if len(train_classes) < 2:
        raise DataError(
            f"training split {train_reader.split!r} of {str(train_reader.root)!r} holds only class "
            f"{train_classes[0]} ({train_source.num_samples} patches): a detector needs both classes to learn "
            "from; add patches of the other class"
        )


def _choose_monitor(config: RunConfig, valid_reader, valid_source) -> tuple[str, list[str], bool]:
    """``(monitor, warnings, one_class_valid)``: val_loss when validation holds one class (no ROC AUC)."""
    monitor = config.train.monitor
    warnings: list[str] = []
    valid_classes = sorted(set(valid_source.labels.tolist())) if valid_source is not None else [0, 1]
    one_class_valid = len(valid_classes) < 2
    if one_class_valid:  # ROC AUC and threshold choice need both classes
        warnings.append(
            f"validation split {valid_reader.split!r} holds only class {valid_classes[0]} "
            f"({valid_source.num_samples} patches): val_auc is undefined"
            + ("; monitoring val_loss instead of val_auc" if monitor == "val_auc" else "")
            + (f"; evaluate.threshold_method {config.evaluate.threshold_method} needs both classes, so the threshold "
               f"stays at evaluate.threshold {config.evaluate.threshold:g}"
               if config.evaluate.threshold_method != "fixed" else "")
            + "; add patches of the other class to the validation split"
        )
        monitor = "val_loss"
    return monitor, warnings, one_class_valid


def _data_stats(images, reader, skip_bad: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units from the training images (a sample of them when streaming).

    When streaming, up to 2,048 seeded picks are decoded; with ``skip_bad`` unreadable ones are left out.
    """
    from pcamlab.data.normalize import channel_stats

    if images is not None:
        return channel_stats(images.numpy())
    from pcamlab.data import BadImageError

    rng = np.random.default_rng(0)
    picks = rng.choice(len(reader), size=min(len(reader), 2048), replace=False)
    sample, skipped = [], 0
    for index in sorted(picks):
        try:
            sample.append(reader[int(index)][0])
        except BadImageError:
            if not skip_bad:
                raise
            skipped += 1  # the same files are skipped (and counted) by the batches
    if not sample:
        raise DataError(
            f"none of the {len(picks)} training patches sampled for the channel statistics is readable (first: "
            f"{reader.name(int(min(picks)))}); fix or replace the files"
        )
    return channel_stats(np.stack(sample))


def _fit_stain_normalizer(config: RunConfig, sources: list) -> dict[str, Any] | None:
    """Fit the configured stain normaliser on training patches and apply it to RAM-cached splits."""
    method = config.data.stain_normalization
    if method == "none":
        return None
    from pcamlab.data.loader import InMemoryBatches
    from pcamlab.data.normalize import NORMALIZERS

    if not all(isinstance(source, InMemoryBatches) for source in sources):
        raise ConfigError(
            "data.stain_normalization needs the decoded images in RAM; set data.cache=ram "
            "(or raise data.memory_budget_gb)"
        )
    train_images = sources[0].images.numpy()
    picks = np.random.default_rng(config.data.seed).choice(len(train_images), size=min(64, len(train_images)), replace=False)
    normalizer = NORMALIZERS.get(method, "data.stain_normalization")().fit(train_images[np.sort(picks)])
    for source in sources:
        images = source.images.numpy()
        images[:] = normalizer.transform(images)
    return normalizer.to_dict()
