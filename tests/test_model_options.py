"""Model options are declared once (type, range or choices, rules) and checked by one validator."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from torch import nn

from pcamlab.config import ModelConfig
from pcamlab.config_ranges import Range, check_number
from pcamlab.errors import ConfigError
from pcamlab.models import MODELS, build_model, declared_options, list_models, model_option_table, model_options
from pcamlab.models.options import (
    ACTIVATION,
    POSITIVE,
    REQUIRED,
    Option,
    Options,
    check_value,
    describe,
    signature_options,
)
from pcamlab.models.spec import LAYERS

MODELS_DIR = Path(__file__).resolve().parents[1] / "src" / "pcamlab" / "models"


def message(config: ModelConfig) -> str:
    with pytest.raises(ConfigError) as error:
        build_model(config)
    text = str(error.value)
    assert "\n" not in text
    return text


# ---- every model declares every option ------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_option_declares_what_it_allows_and_its_default_passes(name):
    rows = {row["name"]: row for row in model_option_table(name)}
    assert list(rows) == list(model_options(name))
    for key, row in rows.items():
        # a number says its range, a string its choices: nothing is left to a check inside the builder
        assert row["allowed"] not in ("an integer", "a number", "a string", "any value"), (name, key, row["allowed"])
        assert row["description"], f"{name}.{key} has no line in the builder's Args"
    table = signature_options(name, MODELS.get(name), {key: Option() for key in rows})  # types from the signature
    assert set(table.options) == set(rows)


@pytest.mark.parametrize("name", list_models())
def test_the_defaults_pass_the_declarations(name):
    table = declared_options(name)
    for key, option in table.options.items():
        default = list(option.default) if isinstance(option.default, tuple) else option.default
        assert check_value(f"model.options.{key}", default, option) == default
    assert table.check("model.options", {}) == table.defaults()  # every rule holds at the defaults


def test_a_builder_option_without_a_declaration_is_a_programming_error():
    def build_tiny(width: int = 8, depth: int = 2) -> nn.Module:
        """A tiny model."""

    with pytest.raises(ValueError, match=r"undeclared \['depth'\]"):
        signature_options("an option of 'tiny'", build_tiny, {"width": POSITIVE})
    with pytest.raises(ValueError, match=r"not a parameter \['height'\]"):
        signature_options("an option of 'tiny'", build_tiny, {"width": POSITIVE, "depth": POSITIVE, "height": POSITIVE})

    def build_no_default(width: int) -> nn.Module:
        """No default."""

    with pytest.raises(ValueError, match=r"no default \['width'\]"):
        signature_options("an option of 'tiny'", build_no_default, {"width": POSITIVE})


def test_no_model_file_raises_config_errors_of_its_own_outside_the_declared_checks():
    # Only the validator (options.py), spec's walk over the layer sequence (what depends on the layers
    # before: one `fail`), first_conv (a model without an RGB convolution), and the two checks of what options
    # can build at all (check_model_memory: weights that fit in memory; count_flops: a patch size the model
    # takes) raise ConfigError in models/.
    allowed = {("options.py", None), ("spec.py", "fail"), ("factory.py", "first_conv"),
               ("factory.py", "check_model_memory"), ("factory.py", "count_flops")}
    found = set()
    for path in MODELS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.Module)):
                continue
            for node in ast.iter_child_nodes(function) if isinstance(function, ast.Module) else ast.walk(function):
                if isinstance(node, ast.Raise) and "ConfigError" in ast.dump(node):
                    where = None if path.name == "options.py" else getattr(function, "name", None)
                    found.add((path.name, where))
    assert found <= allowed, found - allowed
    assert ("options.py", None) in found


# ---- the one message shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("resnet18", {"stem_stride": 3}, "model.options.stem_stride must be one of [1, 2]; got 3"),
        ("resnet50", {"stem_kernel": 5}, "model.options.stem_kernel must be one of [3, 7]; got 5"),
        ("resnet18", {"stem_pool": "yes"}, "model.options.stem_pool must be true or false; got 'yes'"),
        ("p4m-densenet", {"group_pool": "avg"}, "model.options.group_pool must be one of ['max', 'mean']; got 'avg'"),
        ("densenet-small", {"compression": 0}, "model.options.compression must be a number in (0, 1] (the fraction of "
                                               "channels a transition keeps); got 0; use e.g. 0.5"),
        ("densenet-small", {"block_layers": []}, "model.options.block_layers must be a list of 1 or more integers >= 1; got []"),
        ("densenet-small", {"block_layers": [4, 0]}, "model.options.block_layers[1] must be an integer >= 1; got 0"),
        ("vgg16", {"dense_units": -1}, "model.options.dense_units must be an integer >= 0 (0 = no hidden layer); got -1"),
        ("vgg-small", {"stages": 7}, "model.options.stages: 7 max-pools shrink a 96px patch to nothing; use fewer stages"),
        ("baseline", {"filters": [8, 8, 8, 8]}, "model.options: 4 pools of 4 shrink a 96px patch to nothing"),
        ("fcn", {"depht": 2}, "model.options.depht is not an option of 'fcn'; options are ['width', 'stages', 'depth', "),
        ("fcn", {"depht": 2}, "(did you mean 'depth'?)"),
    ],
)
def test_declared_ranges_choices_and_rules_give_one_line_messages(name, options, expected):
    assert expected in message(ModelConfig(name=name, options=options))


def test_rules_see_the_defaults_of_the_options_not_given():
    # stages 7 fails at the default input_size 96; with input_size 256 the same stages fit (256 / 2**7 = 2)
    assert "shrink a 96px patch" in message(ModelConfig(name="vgg-small", options={"stages": 7}))
    assert "shrink a 32px patch" in message(ModelConfig(name="baseline", options={"input_size": 32, "filters": [2, 2, 2]}))


def test_the_builder_receives_the_checked_values():
    model = build_model(ModelConfig(name="baseline", options={"filters": (4, 8), "dense_units": 4, "dropout": 0}))
    assert [layer.out_channels for layer in model.features if isinstance(layer, nn.Conv2d)] == [4, 8]
    assert model.classifier[3].p == 0.0 and isinstance(model.classifier[3].p, float)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([{"conv": {"filters": 8, "kernel": 4, "stride": 2}}, {"global_pool": "average"}],
         "model.options.layers[0].conv.padding: 'same' with stride 2 needs an odd kernel span; got kernel 4"),
        ([{"conv_transpose": {"filters": 8, "output_padding": 2}}, {"global_pool": "average"}],
         "model.options.layers[0].conv_transpose.output_padding must be smaller than stride 2; got 2"),
        (["conv"], "model.options.layers[0].conv.filters is required; e.g. filters: 32"),
        (["dropout"], "model.options.layers[0]: the layer 'dropout' needs a value, a number in [0, 1); write {dropout: VALUE}"),
        ([{"batch_norm": {"eps": 0}}], "model.options.layers[0].batch_norm.eps must be a number > 0; got 0; use e.g. 1e-05"),
        ([{"pool": {"stride": 0}}], "model.options.layers[0].pool.stride must be an integer >= 1 (null: the pool's size); got 0"),
        ([{"conv": {"filters": 8, "padding": "sme"}}],
         "model.options.layers[0].conv.padding must be one of ['same', 'valid'] or an integer >= 0; got 'sme' "
         "(did you mean 'same'?)"),
        ([{"conv": {"filters": 8, "kernal": 3}}], "layers[0].conv.kernal is not a key of conv; keys are ["),
        ([{"conv": 8}], "model.options.layers[0].conv must be a mapping of keys ['filters', 'kernel', "),
    ],
)
def test_spec_layer_keys_are_declared_like_model_options(layers, expected):
    assert expected in message(ModelConfig(name="spec", options={"layers": layers}))


def test_spec_bare_words_take_their_defaults():
    model = build_model(ModelConfig(name="spec", options={"layers": [{"conv": {"filters": 4}}, "batch_norm",
                                                                     {"global_pool": "max"}]}))
    norm = next(layer for layer in model if isinstance(layer, nn.BatchNorm2d))
    assert norm.eps == 1e-5 and norm.momentum == 0.1
    assert isinstance(LAYERS["batch_norm"], Options) and LAYERS["flatten"] is None


def test_pretrained_format_is_checked_by_the_same_validator(tmp_path):
    from pcamlab.models.transfer import load_pretrained

    with pytest.raises(ConfigError, match=r"model.pretrained_format must be one of \['auto', .*got 'tvision'"):
        load_pretrained(build_model("simple-cnn", width=2), tmp_path / "w.safetensors", format="tvision")


# ---- the validator and the words it uses ---------------------------------------------------------


def test_describe_and_check_value_agree_on_unions_lists_and_choices():
    depth = Option(int | list[int], Range(1), length=(4, 4))
    assert describe(depth) == "an integer >= 1 or a list of 4 integers >= 1"
    assert check_value("d", 2, depth) == 2 and check_value("d", (1, 1, 2, 2), depth) == [1, 1, 2, 2]
    padding = Option(str | int, Range(0), choices=("same", "valid"))
    assert check_value("p", "valid", padding) == "valid" and check_value("p", 3, padding) == 3
    for wrong in ("full", -1, True, 1.5, None):
        with pytest.raises(ConfigError, match=r"^p must be one of \['same', 'valid'\] or an integer >= 0; got "):
            check_value("p", wrong, padding)
    nullable = Option(str | None, choices=(None, "relu"))
    assert check_value("a", None, nullable) is None and describe(nullable) == "one of ['relu']"
    assert describe(ACTIVATION.with_signature(str, "relu")).startswith("one of ['relu', 'leaky_relu'")
    assert describe(Option(list, length=(1, None))) == "a list of 1 or more items"
    assert describe(Option(bool)) == "true or false"


def test_a_required_option_must_be_given():
    table = Options("a key of tiny", "keys", {"size": Option(int, Range(1, example="8"))})
    assert table.defaults() == {"size": REQUIRED}
    with pytest.raises(ConfigError, match=r"^x.size is required; e.g. size: 8$"):
        table.check("x", {})
    assert table.check("x", {"size": 3}) == {"size": 3}


def test_check_number_refuses_bools_nan_and_floats_for_integers_in_one_shape():
    allowed = Range(0, 1, high_open=True, example="0.5")
    assert check_number("p", 0, allowed) == 0.0 and isinstance(check_number("p", 0, allowed), float)
    for wrong in (True, math.nan, "0.5", 1.0, None):
        with pytest.raises(ConfigError, match=r"^p must be a number in \[0, 1\); got "):
            check_number("p", wrong, allowed)
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1; got 2.0$"):
        check_number("n", 2.0, Range(1), integer=True)
    with pytest.raises(ConfigError, match=r"got 20 \(a percentage\? use 0.2\)$"):
        check_number("p", 20, allowed)


# -- tester 1 item 3: every command that builds a model from user options says in one line what cannot be built --


@pytest.mark.parametrize("name, options", [("vgg-small", {"width": 100000}), ("fcn", {"stages": 40})])
def test_a_model_too_large_for_memory_is_refused_before_any_weight_is_allocated(name, options):
    from pcamlab.models import check_model_memory

    with pytest.raises(ConfigError, match=rf"model.name '{name}' .* choose smaller options"):
        check_model_memory(ModelConfig(name=name, options=options))
    with pytest.raises(ConfigError, match="choose smaller options"):  # every command builds through build_model
        build_model(ModelConfig(name=name, options=options))
    with pytest.raises(ConfigError, match=r"training it needs at least .* \(16 bytes each\), more than the 0.0 GB"):
        check_model_memory(ModelConfig(name="simple-cnn"), memory_bytes=1000)
    assert check_model_memory(ModelConfig(name="simple-cnn", options={"width": 4})) > 0


def test_a_model_the_patches_are_too_small_for_is_one_line(tmp_path, capsys):
    from fixtures_data import write_tiny_h5

    from pcamlab.cli.main import main
    from pcamlab.models import model_summary

    with pytest.raises(ConfigError, match=r"model.name 'fcn' cannot take 96x96 patches \(.*Output size is too small"):
        model_summary(ModelConfig(name="fcn", options={"stages": 8}))
    data = write_tiny_h5(tmp_path / "h5")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--no-progress", "--set", "model.name=fcn",
                 "--set", "model.options.stages=8", "--set", "train.epochs=1", "--set", "train.batch_size=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot take 96x96 patches" in err and not out.exists()  # no half run


@pytest.mark.parametrize("size", ["0", "-5", "x"])
def test_models_refuses_a_patch_side_below_one_in_one_line(size, capsys):
    from pcamlab.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["models", f"--input-size={size}"])
    assert exit_.value.code == 2 and "an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("size", [8, 100000])
def test_models_shows_undefined_flops_for_models_that_cannot_take_the_size(size, capsys):
    from pcamlab.cli.main import main

    assert main(["models", f"--input-size={size}"]) == 0
    out = capsys.readouterr().out
    assert f"cannot take {size}x{size} patches" in out and "baseline" in out.split("cannot take")[-2].splitlines()[-1]
