"""Build the real PCam sample shipped inside the package (``src/pcamlab/data/sample``).

Copies the ORIGINAL JPEG bytes (no re-encoding) of a seeded, class-balanced random selection of
patches from the shared development data, writes ``SHA256SUMS`` and ``PROVENANCE.md``.

Usage:
    python scripts/make_sample.py [--source /work/shared/data/pcam-jpg] [--seed 2018]

Selection: for each split and class, the source file names are sorted, then
``numpy.random.default_rng(seed).choice(count, size, replace=False)`` (one generator, drawn in the
order train/0, train/1, valid/0, valid/1) picks the files, which are copied under their own names.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DESTINATION = REPO / "src" / "pcamlab" / "data" / "sample"
DEFAULT_SOURCE = Path("/work/shared/data/pcam-jpg")
PER_CLASS = {"train": 400, "valid": 100}
SEED = 2018

PROVENANCE = """\
# Embedded PCam sample

Real H&E lymph-node patches from PatchCamelyon (PCam), shipped so that `pcamlab demo`, the tests and
`data.path: sample` work on a fresh machine without any download. Not synthetic.

## Source

- The shared development copy `pcam-jpg/` (see its PROVENANCE.md), which holds every unique patch of
  the GitHub repository `vflorenc/AI4ALL-PCam`, commit `1907292c0a399a624763d6f89024246ac025d240`,
  paths `data/{{train,valid}}/{{0,1}}/patchNNNNNNN.jpg`: 96x96 RGB baseline JPEG (IJG quality 75, 4:2:0
  chroma), decoded pixels de-duplicated by SHA-256 across splits.
- Folder name = label: `1` = metastatic tumour tissue in the centre 32x32 px region, `0` = none.
- `NNNNNNN` appears to be the row index in the matching official PCam HDF5 split (undocumented).
- PCam's split is by whole-slide image, so `train` and `valid` come from different slides.

## License

The images are PatchCamelyon (Veeling et al. 2018, "Rotation Equivariant CNNs for Digital Pathology",
Zenodo record 2546921), released by its authors under CC0 1.0 (public domain dedication). The source
repository states no license of its own.

## Selection

`scripts/make_sample.py --seed {seed}`: for each split and class the source file names are sorted and
`numpy.random.default_rng({seed}).choice(count, size, replace=False)` picks the files (one generator,
drawn in the order train/0, train/1, valid/0, valid/1). The ORIGINAL JPEG bytes are copied unchanged,
under their original names.

## Counts

| folder | label 0 | label 1 | drawn from |
|---|---|---|---|
{table}

Total size of the images: {total_bytes:,} bytes. Checksums of every file: `SHA256SUMS` (run
`cd src/pcamlab/data/sample && sha256sum -c SHA256SUMS`).
"""


def list_jpegs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="pcam-jpg folder")
    parser.add_argument("--seed", type=int, default=SEED, help="numpy default_rng seed")
    parser.add_argument("--out", type=Path, default=DESTINATION, help="sample folder to (re)write")
    args = parser.parse_args()

    generator = np.random.default_rng(args.seed)
    rows, sums, total_bytes = [], [], 0
    for split, size in PER_CLASS.items():
        counts, available = [], []
        for label in ("0", "1"):
            files = list_jpegs(args.source / split / label)
            if len(files) < size:
                raise SystemExit(f"{args.source / split / label} has {len(files)} files, need {size}")
            chosen = sorted(generator.choice(len(files), size=size, replace=False).tolist())
            folder = args.out / split / label
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            for index in chosen:
                data = files[index].read_bytes()
                (folder / files[index].name).write_bytes(data)
                sums.append(f"{hashlib.sha256(data).hexdigest()}  {split}/{label}/{files[index].name}")
                total_bytes += len(data)
            counts.append(size)
            available.append(len(files))
        rows.append(
            f"| `{split}/{{0,1}}/` | {counts[0]} | {counts[1]} | "
            f"{available[0]:,} + {available[1]:,} source patches |"
        )
    (args.out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    (args.out / "PROVENANCE.md").write_text(
        PROVENANCE.format(seed=args.seed, table="\n".join(rows), total_bytes=total_bytes)
    )
    print(f"wrote {len(sums)} patches ({total_bytes:,} bytes) into {args.out}")


if __name__ == "__main__":
    main()
