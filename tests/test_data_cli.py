"""`pcamlab data info|convert|download` through the real entry point."""

from __future__ import annotations

import json

from pcamlab.cli.main import main
from fixtures_data import tiny_splits, write_h5


def test_data_info_prints_table_and_writes_outputs(tmp_path, capsys):
    root = write_h5(tmp_path / "h5", tiny_splits(8, 4))
    out = tmp_path / "out"
    assert main(["data", "info", str(root), "--out", str(out), "--per-class", "2"]) == 0
    printed = capsys.readouterr().out
    assert "format h5" in printed and "train" in printed and "50.0%" in printed
    info = json.loads((out / "info.json").read_text())
    assert info["splits"]["train"]["class_counts"] == {"0": 4, "1": 4}
    assert info["splits"]["valid"]["count"] == 4
    assert (out / "contact_train.png").stat().st_size > 1000 and (out / "contact_valid.png").exists()


def test_data_info_bad_path_exits_2_with_one_line(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pcamlab: error: dataset root") and "missing" in error and "\n" not in error
    assert main(["data", "info", "sample", "--augment"]) == 2  # --augment needs --out
    assert "--out" in capsys.readouterr().err


def test_data_convert_and_existing_destination(tmp_path, capsys):
    root = write_h5(tmp_path / "h5", tiny_splits(8, 4))
    assert main(["data", "convert", str(root), str(tmp_path / "folders"), "--to", "folders"]) == 0
    assert "train 8, valid 4" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "folders" / "valid" / "1").iterdir()) == ["0000002.png", "0000003.png"]
    assert main(["data", "convert", str(root), str(tmp_path / "folders"), "--to", "kaggle"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_data_download_rejects_unknown_file_before_any_network(tmp_path, capsys):
    assert main(["data", "download", "pcam", str(tmp_path), "--files", "vaild_x"]) == 2
    assert "valid_x" in capsys.readouterr().err
