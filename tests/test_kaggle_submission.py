"""``pcamlab predict MODEL test/ --format kaggle``: a Kaggle submission from a Kaggle-layout folder.

The folder is the competition's layout (``train/<id>.tif``, ``train_labels.csv``, ``test/<id>.tif``)
written from real sample patches; ids are the SHA-1 of the pixels, as long as Kaggle's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import kaggle_id, write_kaggle
from fixtures_serve import serve_patches, write_serve_checkpoint
from pcamlab.cli.main import main
from pcamlab.deploy import predict_kaggle
from pcamlab.errors import DataError, RunError
from pcamlab.runtime import load_predictor


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return serve_patches(6)[0]


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory, patches) -> Path:
    return write_serve_checkpoint(tmp_path_factory.mktemp("kaggle-model") / "best.safetensors", patches)


@pytest.fixture(scope="module")
def competition(tmp_path_factory, patches) -> Path:
    images, labels = serve_patches(4)
    return write_kaggle(tmp_path_factory.mktemp("kaggle") / "histopathologic-cancer-detection", images, labels,
                        test_images=patches)


@pytest.fixture(scope="module")
def expected(checkpoint_path, patches) -> dict[str, float]:
    probabilities = load_predictor(checkpoint_path).predict_proba(patches)
    return {kaggle_id(image): float(p) for image, p in zip(patches, probabilities)}


def write_template(path: Path, ids: list[str]) -> Path:
    path.write_text("id,label\n" + "".join(f"{identifier},0\n" for identifier in ids))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_cli_writes_id_label_in_template_order(tmp_path, checkpoint_path, competition, expected, capsys):
    order = sorted(expected, reverse=True)  # not the file order: the template decides
    template = write_template(tmp_path / "sample_submission.csv", order)
    out = tmp_path / "submission.csv"
    assert main(["predict", str(checkpoint_path), str(competition / "test"), "--format", "kaggle",
                 "--out", str(out), "--template", str(template)]) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label"] and [row["id"] for row in rows] == order
    for row in rows:
        assert float(row["label"]) == pytest.approx(expected[row["id"]], abs=1e-6)  # label = probability
    assert "6 test patches, rows in the order of" in capsys.readouterr().out


def test_without_template_rows_follow_the_file_names(tmp_path, checkpoint_path, competition, expected):
    result = predict_kaggle(checkpoint_path, [competition / "test"], tmp_path / "submission.csv")
    assert [row["id"] for row in read_rows(result.out)] == sorted(expected)


def test_ids_that_do_not_match_the_template_are_refused_before_predicting(tmp_path, checkpoint_path, competition,
                                                                        expected, capsys):
    ids = sorted(expected)
    out = tmp_path / "submission.csv"
    missing = write_template(tmp_path / "missing.csv", ids + ["f" * 40])
    assert main(["predict", str(checkpoint_path), str(competition / "test"), "--format", "kaggle",
                 "--out", str(out), "--template", str(missing)]) == 2
    error = capsys.readouterr().err
    assert "1 template ids have no .tif file" in error and "f" * 40 in error and error.count("\n") == 1
    extra = write_template(tmp_path / "extra.csv", ids[:-1])
    with pytest.raises(DataError, match="1 files are not in the template"):
        predict_kaggle(checkpoint_path, [competition / "test"], out, template=extra)
    assert not out.exists()  # nothing half-written


def test_wrong_inputs_and_options_fail_with_one_line(tmp_path, checkpoint_path, competition, patches, capsys):
    out = tmp_path / "submission.csv"
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes((competition / "test" / f"{kaggle_id(patches[0])}.tif").read_bytes())
    with pytest.raises(DataError, match="is not a .tif file"):
        predict_kaggle(checkpoint_path, [tmp_path / "pngs"], out)
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("name,label\nabc,0\n")
    with pytest.raises(DataError, match="the header must name the columns 'id'"):
        predict_kaggle(checkpoint_path, [competition / "test"], out, template=no_id)
    out.write_text("id,label\n")
    with pytest.raises(RunError, match="already exists"):
        predict_kaggle(checkpoint_path, [competition / "test"], out)
    assert main(["predict", str(checkpoint_path), str(competition / "test"), "--template", "x.csv"]) == 2
    assert "add --format kaggle" in capsys.readouterr().err


def test_template_with_bom_and_crlf_is_read_and_an_empty_one_says_so(tmp_path):
    from pcamlab.deploy.kaggle import read_template

    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfId,Label\r\nabc,0\r\ndef,0\r\n")
    assert read_template(excel) == ["abc", "def"]
    for content in (b"", b"\xef\xbb\xbf", b"\r\n"):
        empty = tmp_path / "empty.csv"
        empty.write_bytes(content)
        with pytest.raises(DataError, match="is empty") as error:
            read_template(empty)
        assert "None" not in str(error.value)
