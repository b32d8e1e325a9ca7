"""Evaluation protocols: folds (stratified, grouped by slide), fold/concat readers, k-fold CV, final fit, CLI."""

from __future__ import annotations

import csv
import json
import pickle
import statistics

import numpy as np
import pytest
import yaml
from fixtures_data import sample_patches, write_h5

from pcamlab.cli.main import main
from pcamlab.config import load_config
from pcamlab.data import load_split_arrays, open_split
from pcamlab.errors import ConfigError, DataError, RunError
from pcamlab.train.protocols import (
    ConcatReader,
    SubsetReader,
    choice_from_run,
    read_slide_ids,
    run_final,
    run_kfold,
    slide_groups,
    stratified_folds,
)

TINY = [
    "model.name=baseline",
    "model.options={filters: [8, 16], dense_units: 16}",
    "train.batch_size=8",
    "train.epochs=1",
    "train.threads=1",
]
META_HEADER = ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]


def _write_meta(path, slides, labels):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(META_HEADER)
        for index, (slide, label) in enumerate(zip(slides, labels)):
            writer.writerow([index, 96 * index, 0, bool(label), bool(label), slide])
    return path


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    """train 24 (12 per class, 6 slides of 4 mixed patches, meta CSV beside), valid 8, test 8."""
    train = sample_patches(24, "train", seed=1)
    root = write_h5(tmp_path_factory.mktemp("h5"), {
        "train": train, "valid": sample_patches(8, "valid", seed=2), "test": sample_patches(8, "valid", seed=3),
    })
    slides = [f"camelyon16_slide_{index % 6:03d}" for index in range(24)]  # labels are 12 zeros then 12 ones
    _write_meta(root / "camelyonpatch_level_2_split_train_meta.csv", slides, train[1])
    return root


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _config(root, *extra):
    return load_config(None, [f"data.path={root}", *TINY, *extra])


# -- folds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_cover_everything_and_are_stratified(k, seed):
    labels = np.r_[np.zeros(63, dtype=int), np.ones(41, dtype=int)]
    labels = np.random.default_rng(99).permutation(labels)
    folds = stratified_folds(labels, k, seed)
    assert len(folds) == k
    valid_parts = [valid for _, valid in folds]
    assert sorted(np.concatenate(valid_parts).tolist()) == list(range(len(labels)))  # cover, no repeats
    for train, valid in folds:
        assert not set(train.tolist()) & set(valid.tolist())
        assert len(train) + len(valid) == len(labels)
        for value in (0, 1):  # each class split evenly: within one patch of its share
            assert abs(np.sum(labels[valid] == value) - np.sum(labels == value) / k) < 1
    sizes = [len(valid) for valid in valid_parts]
    assert max(sizes) - min(sizes) <= 1
    again = stratified_folds(labels, k, seed)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = stratified_folds(labels, k, seed + 1)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_grouped_folds_never_split_a_slide():
    generator = np.random.default_rng(3)
    sizes = generator.integers(3, 30, size=25)
    groups = np.repeat([f"slide_{index}" for index in range(25)], sizes)
    tumour_rate = generator.uniform(0, 1, size=25)  # slides differ in how much tumour they hold
    labels = (generator.uniform(size=len(groups)) < np.repeat(tumour_rate, sizes)).astype(int)
    for seed in (0, 1):
        folds = stratified_folds(labels, 4, seed, groups=groups)
        assert sorted(np.concatenate([valid for _, valid in folds]).tolist()) == list(range(len(labels)))
        for train, valid in folds:
            assert not set(groups[train]) & set(groups[valid])
            assert 0 < np.mean(labels[valid]) < 1  # both classes present in every held-out fold
    assert not all(
        np.array_equal(a[1], b[1]) for a, b in zip(stratified_folds(labels, 4, 0, groups), stratified_folds(labels, 4, 1, groups))
    )


def test_fold_errors_say_what_to_change():
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        stratified_folds(labels, 1, 0)
    with pytest.raises(ConfigError, match="more than the 3 patches of class 0.*folds <= 3"):
        stratified_folds(labels, 4, 0)
    with pytest.raises(ConfigError, match="more than the 2 slides"):
        stratified_folds(labels, 3, 0, groups=["a", "a", "a", "b", "b", "b"])
    with pytest.raises(DataError, match="groups has 2 entries but there are 6 labels"):
        stratified_folds(labels, 2, 0, groups=["a", "b"])
    with pytest.raises(DataError, match="unlabeled"):
        stratified_folds(np.full(6, -1), 2, 0)


# -- slide ids ---------------------------------------------------------------------------------------


def test_slide_ids_from_the_meta_csv_beside_h5_files(tiny_h5, tmp_path):
    reader = open_split(tiny_h5, "train")
    slides, source = slide_groups(reader)  # auto: the CSV beside the h5 files
    assert source.endswith("camelyonpatch_level_2_split_train_meta.csv")
    assert slides.tolist() == [f"camelyon16_slide_{index % 6:03d}" for index in range(24)]
    assert slide_groups(reader, "none") == (None, "none")
    assert slide_groups(open_split(tiny_h5, "valid")) == (None, "none")  # no valid meta CSV
    short = _write_meta(tmp_path / "short.csv", ["s1"] * 5, [0] * 5)
    with pytest.raises(DataError, match="has 5 rows but the split has 24 patches"):
        slide_groups(reader, short)
    (tmp_path / "nowsi.csv").write_text("id,slide\n0,a\n")
    with pytest.raises(DataError, match="nowsi.csv' line 1 is .*the header must name the columns 'wsi'"):
        read_slide_ids(tmp_path / "nowsi.csv")
    (tmp_path / "blank.csv").write_text(",wsi\n0,a\n1,\n")
    with pytest.raises(DataError, match="line 3 has wsi ''; every patch needs its slide id"):
        read_slide_ids(tmp_path / "blank.csv")


# -- readers -----------------------------------------------------------------------------------------


def test_subset_and_concat_readers_follow_the_reader_contract(tiny_h5):
    train, valid = open_split(tiny_h5, "train"), open_split(tiny_h5, "valid")
    subset = SubsetReader(train, [5, 0, 17], description="fold 1/2 valid")
    assert len(subset) == 3 and subset.split == "train[fold 1/2 valid]"
    assert subset.root == train.root and subset.format == "h5"
    assert subset.labels.tolist() == [train.labels[5], train.labels[0], train.labels[17]]
    image, label = subset[2]
    assert np.array_equal(image, train[17][0]) and label == train.labels[17]
    assert subset.name(0) == train.name(5)
    with pytest.raises(IndexError):
        subset[3]
    with pytest.raises(DataError, match="index 24 is outside split 'train' of 24 patches"):
        SubsetReader(train, [0, 24])
    assert subset.validate()["count"] == 3

    both = ConcatReader([train, valid])
    assert len(both) == 32 and both.split == "train+valid" and both.format == "h5"
    assert np.array_equal(both.labels, np.r_[train.labels, valid.labels])
    assert np.array_equal(both[24][0], valid[0][0]) and both.name(24) == valid.name(0)
    assert np.array_equal(both[23][0], train[23][0]) and np.array_equal(both[-1][0], valid[7][0])
    images, labels, skipped = load_split_arrays(both)
    assert images.shape == (32, 96, 96, 3) and skipped == 0 and np.array_equal(labels, both.labels)

    restored = pickle.loads(pickle.dumps(ConcatReader([subset, valid])))  # h5 handles are open by now
    assert np.array_equal(restored[1][0], train[0][0]) and np.array_equal(restored[3][0], valid[0][0])


# -- k-fold cross-validation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_run(tiny_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    result = run_kfold(_config(tiny_h5), out, folds=2, progress=False)
    return out, result


def test_evaluating_a_fold_checkpoint_says_which_split_and_that_it_is_not_the_fold(cv_run, tiny_h5, tmp_path, capsys):
    out, _ = cv_run
    fold = out / "repeat-1" / "fold-2"
    assert main(["evaluate", str(fold / "best.safetensors"), "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert f"split 'valid' of {tiny_h5}" in printed
    assert "not the held-out part of repeat-1/fold-2" in printed and str(fold / "history.csv") in printed
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (metrics["split"], metrics["data"], metrics["fold"]) == ("valid", str(tiny_h5), "repeat-1/fold-2")


def test_kfold_writes_fold_runs_and_a_summary_of_them(cv_run, tiny_h5):
    out, result = cv_run
    for fold in (1, 2):
        run = out / "repeat-1" / f"fold-{fold}"
        for name in ("config.yaml", "history.csv", "best.safetensors", "last.safetensors", "summary.json"):
            assert (run / name).is_file(), f"{run}/{name}"
    rows = _rows(out / "cv_results.csv")
    assert [(row["repeat"], row["fold"]) for row in rows] == [("1", "1"), ("1", "2")]
    assert sum(int(row["valid_patches"]) for row in rows) == 24
    summary = json.loads((out / "cv_summary.json").read_text())
    for metric in ("val_auc", "val_loss", "val_accuracy"):
        values = [float(row[metric]) for row in rows]
        assert summary["metrics"][metric]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["metrics"][metric]["sd"] == pytest.approx(statistics.stdev(values))
    for row in rows:  # each row is that fold's own run
        fold_summary = json.loads((out / row["run"] / "summary.json").read_text())
        assert float(row["val_auc"]) == fold_summary["best"]["val_auc"]
        assert fold_summary["data"]["valid_patches"] == int(row["valid_patches"])
    assert summary["best_epoch_median"] == 1 and summary["epochs_for_final"] == 1
    assert result["metrics"] == summary["metrics"]

    # grouped by the meta CSV beside the h5 files: no slide in two folds
    assert summary["groups"].endswith("_train_meta.csv")
    plan = _rows(out / "folds.csv")
    fold_of_slide: dict[str, set] = {}
    for row in plan:
        fold_of_slide.setdefault(row["slide"], set()).add(row["repeat_1_fold"])
    assert len(fold_of_slide) == 6 and all(len(folds) == 1 for folds in fold_of_slide.values())

    with pytest.raises(RunError, match="already holds a run"):
        run_kfold(_config(tiny_h5), out, folds=2, progress=False)


def test_iterated_kfold_resumes_only_what_is_missing(tiny_h5, tmp_path):
    out = tmp_path / "cv"
    config = _config(tiny_h5)
    first = run_kfold(config, out, folds=2, repeats=2, groups="none", progress=False)
    assert [(row["repeat"], row["fold"]) for row in first["folds"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    plan = _rows(out / "folds.csv")
    assert [row["repeat_1_fold"] for row in plan] != [row["repeat_2_fold"] for row in plan]  # redrawn per repeat
    kept = (out / "repeat-1" / "fold-1" / "best.safetensors").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "repeat-2" / "fold-2")
    (out / "cv_summary.json").unlink()
    again = run_kfold(config, out, folds=2, repeats=2, groups="none", resume=True, progress=False)
    assert (out / "repeat-1" / "fold-1" / "best.safetensors").stat().st_mtime_ns == kept
    assert (out / "repeat-2" / "fold-2" / "summary.json").is_file()
    assert [row["valid_patches"] for row in again["folds"]] == [row["valid_patches"] for row in first["folds"]]
    with pytest.raises(RunError, match="already finished"):  # a finished cross-validation is never resumed
        run_kfold(config, out, folds=2, repeats=2, groups="none", resume=True, progress=False)
    (out / "cv_summary.json").unlink()  # as if interrupted again: a resume must keep the folder's plan
    with pytest.raises(RunError, match="fold plan of 2 folds x 2 repeats for 24 patches"):
        run_kfold(config, out, folds=2, repeats=3, groups="none", resume=True, progress=False)


def test_kfold_passes_on_step_to_every_fold_of_every_repeat_and_a_stop_there_ends_it_between_steps(tiny_h5, tmp_path):
    """Every fold's training calls on_step (tune's safe point): a fold it stops ends mid-epoch, the next goes on."""
    from pcamlab import stopping

    calls: list[float] = []

    def stop_after_one_step(model, epochs: float) -> bool:
        calls.append(epochs)
        return True  # 12 train patches, batch 4: 3 steps an epoch, stopped after the first

    config = _config(tiny_h5, "train.epochs=3", "train.batch_size=4")
    result = run_kfold(config, tmp_path / "cv", folds=2, repeats=2, groups="none", progress=False,
                       on_step=stop_after_one_step)
    assert calls == [1 / 3] * 4  # one step in each of the 2 x 2 folds
    for row in result["folds"]:
        summary = json.loads((tmp_path / "cv" / row["run"] / "summary.json").read_text())
        assert summary["stopped_by"] == "caller" and summary["epochs_run"] == 1

    def stop_requested(model, epochs: float) -> bool:  # what tune's on_step does after SIGINT/SIGTERM
        stopping.request()
        stopping.check()
        return False

    try:
        with pytest.raises(stopping.Stopped):
            run_kfold(config, tmp_path / "stopped", folds=2, groups="none", progress=False, on_step=stop_requested)
    finally:
        stopping.clear()
    first = tmp_path / "stopped" / "repeat-1" / "fold-1"
    assert first.is_dir() and not (first / "summary.json").exists()  # stopped inside its first epoch
    assert not (tmp_path / "stopped" / "repeat-1" / "fold-2").exists()


# -- final fit -------------------------------------------------------------------------------------------


def test_final_fit_trains_on_train_plus_valid_and_scores_the_test_split(cv_run, tiny_h5, tmp_path):
    cv_out, _ = cv_run
    out = tmp_path / "final"
    result = run_final(_config(tiny_h5, "train.epochs=9"), out, epochs_from=cv_out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train_patches"] == 24 + 8 and summary["data"]["valid_patches"] == 0
    assert result["train_patches"] == {"train": 24, "valid": 8, "total": 32}
    assert result["epochs"] == 1 and summary["epochs_run"] == 1  # from the CV, not train.epochs=9
    metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["checkpoint"].endswith("last.safetensors")
    assert result["test"]["roc_auc"] == metrics["roc_auc"]
    assert json.loads((out / "final.json").read_text())["epochs_source"].endswith("cv_summary.json")


def test_final_fit_takes_epochs_and_threshold_from_a_holdout_run_and_says_when_there_is_no_test(tmp_path):
    from pcamlab.runtime import load_checkpoint

    root = write_h5(tmp_path / "h5", {"train": sample_patches(16, "train", seed=4), "valid": sample_patches(8, "valid", seed=5)})
    previous = tmp_path / "holdout"
    previous.mkdir()
    (previous / "summary.json").write_text(json.dumps({"finished": True, "best_epoch": 2, "threshold": 0.3,
                                                       "threshold_method": "youden"}))
    assert choice_from_run(previous)["epochs"] == 2
    lines: list[str] = []
    result = run_final(_config(root, "evaluate.threshold_method=youden"), tmp_path / "final", epochs_from=previous,
                       progress=False, log=lines.append)
    assert len(_rows(tmp_path / "final" / "history.csv")) == 2
    # that run left no trace of how it was trained, so its 0.3 is not carried over: a model trained like
    # the final one chose the threshold (see test_run_lifecycle for both cases)
    contract = load_checkpoint(tmp_path / "final" / "last.safetensors").contract
    assert "threshold-fit" in contract.threshold_source and result["threshold"] == contract.threshold
    assert "no 'test' split" in result["test"]["skipped"] and any("nothing to evaluate" in line for line in lines)
    assert not (tmp_path / "final" / "eval-test").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither summary.json nor cv_summary.json"):
        choice_from_run(tmp_path / "empty")
    (previous / "summary.json").write_text(json.dumps({"best_epoch": 0}))
    with pytest.raises(ConfigError, match="no best epoch >= 1"):
        choice_from_run(previous)


def test_final_fit_passes_on_step_to_the_final_model_and_its_threshold_fit(tmp_path):
    root = write_h5(tmp_path / "h5", {"train": sample_patches(16, "train", seed=4), "valid": sample_patches(8, "valid", seed=5)})
    calls: list[float] = []

    def stop_after_one_step(model, epochs: float) -> bool:
        calls.append(epochs)
        return True

    run_final(_config(root, "evaluate.threshold_method=youden"), tmp_path / "final", epochs=3, progress=False,
              on_step=stop_after_one_step)
    assert calls == [1 / 3, 0.5]  # the final fit (24 patches: 3 steps an epoch), then threshold-fit/ (16: 2 steps)
    for run in (tmp_path / "final", tmp_path / "final" / "threshold-fit"):
        assert json.loads((run / "summary.json").read_text())["stopped_by"] == "caller"


def test_final_fit_from_a_budget_recipe_replays_the_chosen_epochs_without_the_budget(tmp_path):
    root = write_h5(tmp_path / "h5", {"train": sample_patches(16, "train", seed=4), "valid": sample_patches(8, "valid", seed=5)})
    previous = tmp_path / "holdout"
    previous.mkdir()
    (previous / "summary.json").write_text(json.dumps({"finished": True, "best_epoch": 2, "threshold": 0.5}))
    lines: list[str] = []
    config = _config(root, "train.epochs=100", "train.time_budget_minutes=15", "train.schedule_over=budget")
    run_final(config, tmp_path / "final", epochs_from=previous, progress=False, log=lines.append)
    assert len(_rows(tmp_path / "final" / "history.csv")) == 2
    saved = yaml.safe_load((tmp_path / "final" / "config.yaml").read_text())["train"]
    assert saved["schedule_over"] == "epochs" and saved["time_budget_minutes"] == 0
    assert any("schedule over the 2 chosen epochs" in line for line in lines)


# -- command line ----------------------------------------------------------------------------------------


def test_cli_kfold_prints_the_fold_table_and_mean_sd(tiny_h5, tmp_path, capsys):
    out = tmp_path / "cv"
    arguments = ["train", "--data", str(tiny_h5), "--out", str(out), "--no-progress", "--protocol", "kfold",
                 "--folds", "2", "--groups", "none"]
    for item in TINY:
        arguments += ["--set", item]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["groups"] == "none" and summary["folds"] == 2
    assert f"val_auc: {summary['metrics']['val_auc']['mean']:.4f} +- {summary['metrics']['val_auc']['sd']:.4f}" in printed
    table = [line.split() for line in printed.splitlines() if line.split()[:2] in (["1", "1"], ["1", "2"])]
    assert len(table) == 2 and sum(int(row[3]) for row in table) == 24  # the valid column
    assert "median best epoch: 1" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--folds", "3"], "--folds applies to cross-validation only; add --protocol kfold"),
        (["--epochs-from", "runs/x"], "--epochs-from applies to the final fit only; add --final"),
        (["--protocol", "kfold", "--folds", "1"], "folds must be an integer >= 2"),
    ],
)
def test_cli_protocol_usage_errors_are_one_line_with_exit_2(extra, message, tmp_path, capsys):
    assert main(["train", "--data", "sample", "--out", str(tmp_path / "r"), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "r").exists()
