"""The config loads with the documented precedence and rejects bad input with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcamlab.config import RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from pcamlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# run configs; configs/models/*.yaml are loaded (and built) by tests/test_model_spec.py
SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "src/pcamlab/configs").glob("*.yaml"))


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  learning_rate: 0.01\nmodel:\n  name: baseline\n")
    config = load_config(path, ["train.epochs=3", "augment.hue=0.05"])
    assert config.train.epochs == 3  # override beats file
    assert config.train.learning_rate == 0.01  # file beats default
    assert config.train.batch_size == RunConfig().train.batch_size  # default kept
    assert config.augment.hue == 0.05
    assert config.model.name == "baseline"


def test_round_trip_through_dict():
    config = load_config(None, ["model.options={width: 16}", "train.optimizer=sgd"])
    assert config_from_dict(config_to_dict(config)) == config
    assert config.model.options == {"width": 16}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key 'train.epoch'.*did you mean 'epochs'"),
        ("trian.epochs=3", "unknown config key 'trian'.*did you mean 'train'"),
        ("train.epochs=many", "train.epochs must be an integer; got 'many'"),
        ("train.optimizer=adamm", r"train.optimizer must be one of \[.*\]; got 'adamm' \(did you mean 'adam'"),
        ("augment.dihedral=maybe", "augment.dihedral must be true or false"),
        ("train.learning_rate=[1]", "train.learning_rate must be a number"),
        ("epochs=3", "must name a section and a field"),
        ("train.epochs", "must look like section.field=value"),
        ("model.options=3", "model.options must be a mapping"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(scalar)


def test_overrides_do_not_mutate_input():
    values = {"train": {"epochs": 2}}
    result = apply_overrides(values, ["train.epochs=5"])
    assert values == {"train": {"epochs": 2}} and result["train"]["epochs"] == 5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.model.name  # and the model it names builds
    from pcamlab.models import build_model

    build_model(config.model)


def test_a_second_config_merges_into_the_first_field_by_field():
    """Issue 9 2.5: baseline.yaml + a model file keeps the baseline's optimiser, batch and augmentation."""
    from pcamlab.cli.main import build_parser

    first, second = REPO / "configs/baseline.yaml", REPO / "configs/models/simple-cnn.yaml"
    args = build_parser().parse_args(["train", "--config", str(first), "--config", str(second), "--out", "x"])
    config = load_config(args.config, ["train.epochs=2"])
    baseline, model_file = load_config(first), load_config(second)
    assert config.model == model_file.model  # the later file's model, with its own options
    assert (config.train.optimizer, config.train.learning_rate, config.train.batch_size) == ("adam", 0.001, 32)
    assert config.augment == baseline.augment and config.augment.dihedral is False
    assert config.train.epochs == 2  # --set still wins over both files
    assert config.config_files == [str(first), str(second)]  # the resolved config says what was merged


def test_merge_keeps_options_of_the_same_model_and_drops_another_models(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  name: fcn\n  options: {width: 16, dropout: 0.2}\n")
    (tmp_path / "b.yaml").write_text("model:\n  options: {width: 8}\n")
    (tmp_path / "c.yaml").write_text("model:\n  name: baseline\n")
    same = load_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert same.model.name == "fcn" and same.model.options == {"width": 8, "dropout": 0.2}
    other = load_config([tmp_path / "a.yaml", tmp_path / "c.yaml"])
    assert other.model.name == "baseline" and other.model.options == {}


def test_a_set_model_name_drops_the_files_options_like_a_later_file(tmp_path):
    """Tester 1 item 11: --config spec-example.yaml --set model.name=fcn failed on the spec's options
    ("model.options.layers is not an option of 'fcn'"): a later model.name drops the earlier model's options,
    from --set as from a later --config; options given by --set (before or after the name) are kept."""
    spec = REPO / "configs/models/spec-example.yaml"
    config = load_config(spec, ["model.name=fcn"])
    assert config.model.name == "fcn" and config.model.options == {}
    config = load_config(spec, ["model.options.width=8", ("model.name", "fcn")])
    assert config.model.name == "fcn" and config.model.options == {"width": 8}
    (tmp_path / "a.yaml").write_text("model:\n  name: fcn\n  options: {width: 16}\n")
    same = load_config(tmp_path / "a.yaml", ["model.name=fcn"])  # the same model keeps its options
    assert same.model.options == {"width": 16}
    back = load_config(tmp_path / "a.yaml", ["model.name=baseline", "model.name=fcn"])  # the last name counts
    assert back.model.options == {"width": 16}


def test_saved_config_keeps_its_file_list(tmp_path):
    import yaml

    config = load_config([REPO / "configs/baseline.yaml", REPO / "configs/models/fcn.yaml"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(saved) == config
    assert load_config(None).config_files == []


def test_resume_refuses_a_config_it_would_ignore(tmp_path, capsys):
    from pcamlab.cli.main import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train:\n  epochs: 2\n")
    code = main(["train", "--out", str(tmp_path / "run"), "--resume", "--config", str(REPO / "configs/baseline.yaml")])
    assert code == 2 and "drop --config" in capsys.readouterr().err


def test_input_scaling_choices_are_the_contracts():
    from pcamlab.config import CHOICES
    from pcamlab.runtime.contract import INPUT_SCALINGS

    assert CHOICES["data.input_scaling"] == INPUT_SCALINGS
    assert load_config(None, ["data.input_scaling=unit"]).data.input_scaling == "unit"
    with pytest.raises(ConfigError, match="data.input_scaling must be one of.*did you mean 'unit'"):
        load_config(None, ["data.input_scaling=units"])


def test_registry_choices_are_checked_at_load_from_python_too():
    """A fresh interpreter that imports nothing but pcamlab refuses a misspelled format or stain normaliser."""
    import subprocess
    import sys

    script = ("import pcamlab\nfor item in ['data.format=h55', 'data.stain_normalization=macenco', 'model.pretrained_format=kears']:\n"
              "    try:\n        pcamlab.load_config(None, [item])\n        print('loaded', item)\n"
              "    except pcamlab.ConfigError as error:\n        print(error)\n")
    src = Path(__file__).resolve().parents[1] / "src"
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert lines == [
        "data.format must be one of ['auto', 'h5', 'kaggle', 'folders']; got 'h55' (did you mean 'h5'?)",
        "data.stain_normalization must be one of ['none', 'macenko', 'reinhard']; got 'macenco' (did you mean 'macenko'?)",
        "model.pretrained_format must be one of ['auto', 'pcamlab', 'torchvision', 'timm', 'keras']; got 'kears' "
        "(did you mean 'keras'?)",
    ]


def test_choice_lists_are_their_registries():
    from pcamlab.config import CHOICES, DECLARED_CHOICES
    from pcamlab.data import NORMALIZERS
    from pcamlab.data.readers import READERS
    from pcamlab.models.transfer import FORMATS
    from pcamlab.runtime.contract import INPUT_SCALINGS

    assert set(DECLARED_CHOICES["data.format"]()) == {"auto", *READERS.names()}
    assert tuple(DECLARED_CHOICES["data.stain_normalization"]()) == ("none", *NORMALIZERS.names())
    assert FORMATS is CHOICES["model.pretrained_format"] and INPUT_SCALINGS is CHOICES["data.input_scaling"]
    assert not set(CHOICES) & set(DECLARED_CHOICES)  # each field's list has one home
