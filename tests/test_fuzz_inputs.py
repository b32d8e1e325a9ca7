"""Property-based fuzzing of every reader and of ``predict`` with inputs made from real patches (issue 10).

Hypothesis (seeded: ``derandomize=True``, no example database) draws a real PCam patch of the shipped
sample and breaks it: cuts the file short, flips bytes, replaces it by a web page, text or nothing, or
writes it in an odd shape (size, channels, bit depth, alpha). The broken file goes into a tiny dataset in
each layout (class folders, Kaggle ``train/*.tif`` + CSV, official HDF5 pair) and through ``pcamlab data
info`` and ``pcamlab predict`` in this process. The properties, for every drawn input:

- never a traceback: ``main()`` returns 0 or 2, any other exception fails the test;
- a failure is exactly one line ``pcamlab: error: ...`` naming the broken file, and writes no output;
- never a silent result: a success accounts for every patch (counts, one CSV row each), and where the
  format can detect damage (a shorter file, a zlib-compressed PNG or HDF5 chunk, an odd shape, a file
  that is not an image) a success means the pixels read are exactly the real patch's.

Damage no format can detect is allowed to pass (a flipped byte inside JPEG entropy data or an
uncompressed TIFF strip decodes to other pixels, and no checksum says so); those cases are counted.

The last test prints how many inputs were tried (``pytest -s tests/test_fuzz_inputs.py``). Budget: 25
inputs per property, a few seconds of CPU; ``PCAMLAB_FUZZ_EXAMPLES=500`` runs a deeper, still seeded search.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import H5_NAME, _png16, sample_patches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pcamlab.cli.main import main
from pcamlab.config import ModelConfig, RunConfig

FUZZ = settings(
    max_examples=int(os.environ.get("PCAMLAB_FUZZ_EXAMPLES", 25)),  # per property; a deeper run: e.g. 500
    derandomize=True,  # the same inputs on every run and machine
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
TRIED: Counter = Counter()  # inputs tried per test, printed at the end of each
PATCHES, LABELS = sample_patches(6, "valid", seed=11)  # real patches, 3 per class


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny untrained course baseline with a real input contract (predict needs a model, not a good one)."""
    from pcamlab.models import build_model
    from pcamlab.runtime import InputContract, save_checkpoint

    config = RunConfig(model=ModelConfig(name="baseline", options={"filters": [4, 8], "dense_units": 8}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.model).eval()
    contract = InputContract(patch_size=96, mean=[0.7, 0.54, 0.69], std=[0.24, 0.28, 0.22], threshold=0.5)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "best.safetensors", network, config, contract, {})


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])  # anything but a PcamlabError propagates: a traceback fails here
    captured = capsys.readouterr()
    assert code in (0, 2), f"exit {code}: {captured.err}"
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pcamlab: error: "), captured.err
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------
# Encoding real patches, and breaking them.


def encode(image: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format={".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF"}[suffix], quality=95)
    return buffer.getvalue()


@st.composite
def odd_shape(draw, image: np.ndarray, suffix: str) -> tuple[bytes, bool]:
    """``(file bytes, readable)``: the patch in an odd size, channel count or bit depth.

    A readable one must be read as the pixels Pillow decodes from it (for 16-bit files: the high byte,
    which is ``value / 257`` exactly for the full-range values written here).
    """
    kind = draw(st.sampled_from(["size", "gray", "gray-alpha", "rgba", "16-bit", "12-bit", "palette"]))
    if kind == "size":
        height, width = draw(st.integers(1, 130)), draw(st.integers(1, 130))
        picture = np.resize(image, (height, width, 3))
        return encode(picture, suffix), (height, width) == (96, 96)  # 96x96: the patch itself, as encoded
    if kind in ("gray", "gray-alpha"):
        picture = Image.fromarray(image).convert("L" if kind == "gray" else "LA")
        buffer = io.BytesIO()
        picture.save(buffer, format="TIFF" if suffix == ".tif" else "PNG")
        return buffer.getvalue(), False
    if kind == "rgba":
        alpha = np.full((96, 96), 255, dtype=np.uint8)
        transparent = draw(st.integers(0, 3))
        alpha[:transparent, :transparent] = 0
        buffer = io.BytesIO()
        Image.fromarray(np.dstack([image, alpha]), "RGBA").save(buffer, format="TIFF" if suffix == ".tif" else "PNG")
        return buffer.getvalue(), transparent == 0
    if kind == "palette":
        buffer = io.BytesIO()
        Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="PNG")
        return buffer.getvalue(), True
    values = image.astype(np.uint16) * 257 if kind == "16-bit" else np.rint(image * (4095 / 255)).astype(np.uint16)
    if suffix == ".tif":
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, values, photometric="rgb")
        return buffer.getvalue(), kind == "16-bit"
    return _png16(values), kind == "16-bit"


class Broken(dict):
    """A broken input; its repr is short (Hypothesis prints it for a failing example)."""

    def __repr__(self) -> str:
        data = self.get("data")
        size = f", {len(data)} bytes" if isinstance(data, bytes) else ""
        where = self.get("suffix") or f"{self.get('target')} file, checksums {self.get('checksums')}"
        return f"Broken({self.get('how')}, {where}, patch {self.get('index')}{size})"


@st.composite
def broken_file(draw) -> dict:
    """A real patch, encoded, then broken one way. ``detectable``: the format can tell it is damaged."""
    index = draw(st.integers(0, len(PATCHES) - 1))
    suffix = draw(st.sampled_from([".png", ".jpg", ".tif"]))
    image = PATCHES[index]
    good = encode(image, suffix)
    how = draw(st.sampled_from(["truncate", "flip", "replace", "odd-shape", "prefix"]))
    readable = False
    if how == "truncate":
        data = good[: draw(st.integers(0, len(good) - 1))]
    elif how == "flip":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(good) - 1))
            data[position] ^= draw(st.integers(1, 255))
        data = bytes(data)
    elif how == "replace":
        data = draw(st.sampled_from([b"", b"<!DOCTYPE html><html><body>Sign in</body></html>", b"id,label\n", b"\x00" * 64]))
    elif how == "prefix":
        data = draw(st.binary(min_size=1, max_size=16)) + good
    else:
        data, readable = draw(odd_shape(image, suffix))
    # damage the format itself detects: a PNG (CRC + zlib), or any cut, swap or shape change
    detectable = how != "flip" or suffix == ".png"
    expected = np.array(Image.open(io.BytesIO(good)).convert("RGB"))  # what a success must have read
    if how == "odd-shape" and readable:  # its own pixels: palette colours, a lossy re-encoding, 16-bit / 257
        expected = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return Broken(index=index, suffix=suffix, data=data, how=how, readable=readable, detectable=detectable,
                  expected=expected)


def check_outcome(code: int, err: str, broken: dict, name: str, pixels_exact) -> str:
    """The properties shared by every layout; returns 'refused', 'read' or 'read-undetectable'."""
    if code == 2:
        assert name in err, err  # the one line names the broken file
        assert not broken["readable"], f"a readable {broken['how']} input was refused: {err}"
        return "refused"
    if broken["how"] in ("replace", "odd-shape") and not broken["readable"]:
        raise AssertionError(f"{broken['how']} input was read without a word: {broken}")
    if broken["detectable"] or broken["readable"]:
        assert pixels_exact(), f"{broken['how']} {broken['suffix']} read as other pixels, silently"
        return "read"
    return "read" if pixels_exact() else "read-undetectable"


# ----------------------------------------------------------------------------------------------
# Class folders and Kaggle: data info and predict on a dataset with one broken file.


def _read_back(root: Path) -> np.ndarray:
    """Every patch the readers give for ``root`` (all splits, in split order), for exact comparison."""
    from pcamlab.data import available_splits, load_split_arrays, open_split

    return np.concatenate([load_split_arrays(open_split(root, split))[0] for split in available_splits(root)])


@FUZZ
@given(broken=broken_file())
def test_fuzz_folders_reader(capsys, broken):
    TRIED["folders"] += 1
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        names = []
        for index, (image, label) in enumerate(zip(PATCHES, LABELS)):
            path = root / "train" / str(int(label)) / f"p{index}{broken['suffix']}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(broken["data"] if index == broken["index"] else encode(image, broken["suffix"]))
            names.append(path)
        code, stdout, err = run(capsys, "data", "info", root)
        outcome = check_outcome(code, err, broken, names[broken["index"]].name,
                                lambda: np.array_equal(_read_back(root)[broken["index"]], broken["expected"]))
        if code == 0:
            assert f"train  {len(PATCHES):>6}" in stdout, stdout  # nothing dropped silently
        TRIED[f"folders {outcome}"] += 1


@pytest.fixture(scope="module")
def predictor(model):
    from pcamlab.runtime import load_predictor

    return load_predictor(model)


@FUZZ
@given(broken=broken_file())
def test_fuzz_predict_image_files(capsys, model, predictor, broken):
    TRIED["predict"] += 1
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for index, image in enumerate(PATCHES[:3]):
            (inputs / f"good{index}{broken['suffix']}").write_bytes(encode(image, broken["suffix"]))
        bad = inputs / f"zz_broken{broken['suffix']}"
        bad.write_bytes(broken["data"])
        out = Path(folder) / "p.csv"
        code, stdout, err = run(capsys, "predict", model, inputs, "--out", out)
        if code == 2:
            assert not out.exists() and list(Path(folder).glob(".p.csv*")) == []  # nothing half-written
        rows = list(csv.DictReader(out.open())) if code == 0 else []
        expected = f"{predictor.predict_proba(broken['expected'][None])[0]:.6f}"  # same pixels, same number
        outcome = check_outcome(code, err, broken, bad.name, lambda: rows[-1]["probability"] == expected)
        if code == 0:
            assert len(rows) == 4 and rows[-1]["patch"].endswith(bad.name)  # one row per patch, none dropped
        TRIED[f"predict {outcome}"] += 1


@st.composite
def labels_csv(draw, ids: list[str], labels: list[int]) -> tuple[bytes, bool]:
    """``(train_labels.csv bytes, clean)``: a dialect people write, then maybe damaged."""
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    suffix = draw(st.sampled_from(["", ".tif"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    quote = draw(st.booleans())
    index_column = draw(st.booleans())
    label_first = draw(st.booleans())
    as_float = draw(st.booleans())
    bom = draw(st.booleans())

    def cell(text: str) -> str:
        return f'"{text}"' if quote else text

    header = ["label", "id"] if label_first else ["id", "label"]
    lines = [delimiter.join(([""] if index_column else []) + [cell(name) for name in header])]
    for number, (name, label) in enumerate(zip(ids, labels)):
        values = {"id": name + suffix, "label": f"{float(label)}" if as_float else str(label)}
        lines.append(delimiter.join(([str(number)] if index_column else []) + [cell(values[key]) for key in header]))
    text = ("\ufeff" if bom else "") + newline.join(lines) + newline
    data = text.encode("utf-8")
    damage = draw(st.sampled_from(["none", "none", "truncate", "insert", "drop-row", "duplicate-row"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "insert":
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.sampled_from([b",", b";", b"x", b"\n", b'"', b"2", b"\xe9"])) + data[position:]
    elif damage == "drop-row":
        rows = data.split(newline.encode())
        rows.pop(draw(st.integers(1, len(ids))))
        data = newline.encode().join(rows)
    elif damage == "duplicate-row":
        rows = data.split(newline.encode())
        rows.insert(len(rows) - 1, rows[draw(st.integers(1, len(ids)))])
        data = newline.encode().join(rows)
    return data, damage in ("none", "duplicate-row")


@FUZZ
@given(data=st.data())
def test_fuzz_kaggle_reader(capsys, data):
    """Kaggle layout: a broken .tif among real ones, or a labels CSV in any dialect, cut or damaged."""
    TRIED["kaggle"] += 1
    from fixtures_data import kaggle_id

    ids = [kaggle_id(image) for image in PATCHES]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "kaggle"
        (root / "train").mkdir(parents=True)
        broken = data.draw(broken_file()) if data.draw(st.integers(0, 2), label="break an image") == 0 else None
        for index, (name, image) in enumerate(zip(ids, PATCHES)):
            content = broken["data"] if broken and index == broken["index"] else encode(image, ".tif")
            (root / "train" / f"{name}.tif").write_bytes(content)
        text, clean = data.draw(labels_csv(ids, LABELS.tolist())) if broken is None else (None, True)
        if text is None:
            text = ("id,label\n" + "".join(f"{name},{label}\n" for name, label in zip(ids, LABELS))).encode()
        (root / "train_labels.csv").write_bytes(text)
        code, stdout, err = run(capsys, "data", "info", root, "--valid-fraction", "0.34")
        if broken is not None:
            outcome = "image " + check_outcome(code, err, broken, f"{ids[broken['index']]}.tif", lambda: True)
        elif code == 2:
            assert not clean, f"a clean CSV dialect was refused: {err} {text!r}"
            assert "train_labels.csv" in err or ".tif" in err, err
            outcome = "csv refused"
        else:
            counts = {}
            for line in stdout.splitlines():
                parts = line.split()
                if parts and parts[0] in ("train", "valid"):
                    counts[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
            assert sum(count[0] for count in counts.values()) == len(ids), stdout  # every image once
            assert sum(count[2] for count in counts.values()) == int(LABELS.sum()), stdout  # the labels as written
            outcome = "csv read" if clean else "csv read (damage left the rows intact)"
        TRIED[f"kaggle {outcome}"] += 1


# ----------------------------------------------------------------------------------------------
# The official HDF5 pair: broken bytes and odd datasets, through data info and predict.


@st.composite
def broken_h5(draw) -> dict:
    """The real patches in the official layout, then the _x or _y file broken (bytes or dataset)."""
    import h5py

    how = draw(st.sampled_from(["truncate", "flip", "x-shape", "x-dtype", "y-values", "y-count", "y-shape"]))
    images, labels = PATCHES.copy(), LABELS.astype(np.uint8).reshape(-1, 1, 1, 1)
    target = "y" if how.startswith("y") else "x"
    if how == "x-shape":
        shape = draw(st.sampled_from([(6, 96, 96), (6, 3, 96, 96), (6, 64, 64, 3), (6, 96, 96, 4), (0, 96, 96, 3)]))
        images = np.resize(images, shape)
    elif how == "x-dtype":
        images = images.astype(draw(st.sampled_from([np.uint16, np.float32, np.int64])))
    elif how == "y-values":
        labels = labels.copy()
        labels[draw(st.integers(0, 5))] = draw(st.sampled_from([2, 255, 7]))
    elif how == "y-count":
        labels = labels[: draw(st.integers(0, 5))]
    elif how == "y-shape":
        labels = np.resize(labels, (6, 2))
    # as the official release writes them (no checksums), or as pcamlab convert does (Fletcher-32 on every
    # chunk, checksummed 1.10-format metadata and chunk index)
    checksums = draw(st.booleans())
    files = {}
    for kind, values in (("x", images), ("y", labels)):
        buffer = io.BytesIO()
        with h5py.File(buffer, "w", libver="v110" if checksums else "earliest") as handle:
            chunks = (1, *values.shape[1:]) if kind == "x" and values.ndim > 1 and len(values) else None
            if checksums and chunks is None and len(values):
                chunks = values.shape
            handle.create_dataset(kind, data=values, chunks=chunks, compression="gzip" if kind == "x" and chunks else None,
                                  fletcher32=bool(checksums and chunks))
        files[kind] = buffer.getvalue()
    if how == "truncate":
        target = draw(st.sampled_from(["x", "y"]))
        files[target] = files[target][: draw(st.integers(0, len(files[target]) - 1))]
    elif how == "flip":
        target = draw(st.sampled_from(["x", "y"]))
        data = bytearray(files[target])
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        files[target] = bytes(data)
    return Broken(files=files, how=how, target=target, checksums=checksums)


@FUZZ
@given(broken=broken_h5())
def test_fuzz_h5_reader_and_predict(capsys, model, broken):
    TRIED["h5"] += 1
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "h5"
        root.mkdir()
        paths = {}
        for kind, data in broken["files"].items():
            paths[kind] = root / H5_NAME.format(split="valid", kind=kind)
            paths[kind].write_bytes(data)
        code, stdout, err = run(capsys, "data", "info", root)
        name = paths[broken["target"]].name
        if code == 2:
            assert name in err or (broken["how"] == "truncate" and "is missing" in err), err
            outcome = "refused"
        else:
            # shape, dtype and label changes are always refused; a cut file or a flipped byte under checksums
            # passes only when nothing changed; without checksums (the official files) a flip can pass unseen
            assert broken["how"] in ("truncate", "flip"), f"{broken['how']} was read without a word"
            exact = np.array_equal(_read_back(root), PATCHES)
            if broken["how"] == "truncate" or broken["checksums"]:
                assert exact, f"{broken!r} read as other pixels, silently"
            outcome = "read" if exact else "read-undetectable (no checksums)"
        out = Path(folder) / "p.csv"
        predicted, stdout, err = run(capsys, "predict", model, paths["x"], "--out", out)
        if predicted == 2:
            assert paths["x"].name in err and not out.exists(), err
        else:
            assert len(list(csv.DictReader(out.open()))) == len(PATCHES)
        TRIED[f"h5 {outcome}"] += 1


def test_fuzz_inputs_were_tried(capsys):
    """Runs last in this file: how many inputs each property saw (the count is the issue's note)."""
    with capsys.disabled():
        total = sum(TRIED[name] for name in ("folders", "predict", "kaggle", "h5"))
        print(f"\nfuzz: {total} generated inputs tried: " + ", ".join(f"{key} {value}" for key, value in sorted(TRIED.items())))
    if TRIED:  # skipped when a subset of tests is selected
        assert all(TRIED[name] >= 20 for name in ("folders", "predict", "kaggle", "h5") if name in TRIED)
