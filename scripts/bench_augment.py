"""Throughput of pcamlab.data.augment.augment_batch: patches per second, median of a few repeats.

Usage:
    .venv/bin/python scripts/bench_augment.py                 # CPU, batch 128 of 96x96
    .venv/bin/python scripts/bench_augment.py --threads 1 --each
    .venv/bin/python scripts/bench_augment.py --device cuda

``--each`` also times every operation alone. Compare with a training step of the default CNN
(roughly 500-1500 patches/s on the 2-core development CPU): augmentation should be well above it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pcamlab.config import AugmentConfig
from pcamlab.data.augment import augment_batch

CONFIGS = {
    "dihedral only (default)": AugmentConfig(),
    "everything on": AugmentConfig(
        dihedral=True,
        brightness=0.1,
        contrast=0.1,
        saturation=0.1,
        hue=0.04,
        hed=0.05,
        blur=0.2,
        blur_sigma=1.0,
        crop_scale=0.8,
    ),
    "everything but crop": AugmentConfig(
        dihedral=True, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.04, hed=0.05, blur=0.2
    ),
}
SINGLE = {
    "crop": AugmentConfig(dihedral=False, crop_scale=0.8),
    "hed": AugmentConfig(dihedral=False, hed=0.05),
    "brightness": AugmentConfig(dihedral=False, brightness=0.1),
    "contrast": AugmentConfig(dihedral=False, contrast=0.1),
    "saturation": AugmentConfig(dihedral=False, saturation=0.1),
    "hue": AugmentConfig(dihedral=False, hue=0.04),
    "blur": AugmentConfig(dihedral=False, blur=1.0),
}


def measure(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, repeats: int
) -> tuple[float, float]:
    """(median, best) patches per second over ``repeats`` calls, after one warm-up call.

    On a shared machine the best repeat is the closer estimate of an idle machine.
    """
    synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    augment_batch(images, config, generator)
    synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        augment_batch(images, config, generator)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return len(images) / statistics.median(seconds), len(images) / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=96, help="patch side in pixels")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--each", action="store_true", help="also time each operation alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.size, args.size, generator=generator, device=device)
    configs = dict(CONFIGS, **(SINGLE if args.each else {}))
    print(
        f"batch {args.batch_size} x 3 x {args.size} x {args.size}, device {device}, "
        f"threads {torch.get_num_threads()}, median of {args.repeats} repeats"
    )
    for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        batch = images.contiguous(memory_format=memory_format)
        for name, config in configs.items():
            median, best = measure(batch, config, generator, args.repeats)
            print(f"  {layout:13s} {name:26s} {median:8.0f} patches/s (best {best:.0f})")


if __name__ == "__main__":
    main()
