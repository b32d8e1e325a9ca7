"""The YAML ``spec`` model: every layer type, the appended logit, the one-line errors, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pcamlab.config import ModelConfig, load_config
from pcamlab.errors import ConfigError
from pcamlab.models import build_model, model_summary
from pcamlab.models.spec import SumPool2d

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted((REPO / "configs" / "models").glob("*.yaml"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run 10-25x faster on 1 thread than on 2 when the 2 shared cores are busy (OpenMP
    threads spin-wait for each other), so these tests use one and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(layers, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="spec", options={"layers": layers, **options}))


def test_baseline_spec_yaml_is_the_baseline_preset():
    config = load_config(REPO / "configs" / "models" / "baseline-spec.yaml")
    from_yaml = build_model(config.model)
    preset = build_model(ModelConfig(name="baseline"))
    assert model_summary(from_yaml) == model_summary(preset)
    # same layers in the same order: with the preset's weights it computes the same function
    preset_parameters = [parameter for parameter in preset.parameters()]
    yaml_parameters = [parameter for parameter in from_yaml.parameters()]
    assert [p.shape for p in preset_parameters] == [p.shape for p in yaml_parameters]
    with torch.no_grad():
        for source, target in zip(preset_parameters, yaml_parameters):
            target.copy_(source)
        batch = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(from_yaml(batch), preset(batch))


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[path.name for path in MODEL_CONFIGS])
def test_every_shipped_model_config_loads_and_builds(path):
    config = load_config(path)
    summary = model_summary(build_model(config.model))  # builds and runs one 96x96 patch
    assert summary["parameters"] > 0 and summary["flops"] > 0


def test_the_shipped_configs_cover_every_preset():
    names = {load_config(path).model.name for path in MODEL_CONFIGS}
    from pcamlab.models import list_models

    assert names == set(list_models())


def test_every_layer_type_builds_and_trains():
    model = spec([
        {"conv": {"filters": 4, "kernel": 3, "padding": "same", "activation": "relu", "batch_norm": True}},
        {"pool": {"type": "max", "size": 2, "stride": 2}},
        {"conv": {"filters": 4, "kernel": 3, "dilation": 2, "padding": "same", "activation": "leaky_relu"}},
        {"pool": {"type": "sum", "size": 2}},
        {"conv": {"filters": 8, "kernel": 3, "stride": 2, "padding": "valid", "activation": "elu"}},
        {"conv_transpose": {"filters": 4, "kernel": 2, "stride": 2, "activation": "gelu", "batch_norm": True}},
        {"spatial_dropout": 0.1},
        {"batch_norm": {}},
        {"activation": "prelu"},
        {"pool": {"type": "average", "size": 2}},
        "flatten",
        {"dense": {"units": 8, "activation": "tanh"}},
        {"dropout": 0.3},
        {"batch_norm": {"momentum": 0.2}},
        {"dense": {"units": 4, "activation": "sigmoid"}},
    ], init="orthogonal")
    logits = model(torch.randn(2, 3, 96, 96))
    assert logits.shape == (2, 1)
    logits.sum().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 1  # logit appended
    assert isinstance(model[-2], nn.Sigmoid)
    assert any(isinstance(module, nn.BatchNorm1d) for module in model)
    assert any(isinstance(module, nn.Dropout2d) for module in model)


def test_logit_is_appended_only_when_missing():
    ends_in_logit = spec([{"global_pool": "average"}, {"dense": {"units": 1}}])
    assert [type(module) for module in ends_in_logit] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    pooled = spec([{"conv": {"filters": 5}}, {"global_pool": "max"}])
    assert [type(module) for module in pooled][-3:] == [nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear]
    assert pooled[-1].in_features == 5


def test_sum_pool_is_average_pool_times_window_area():
    features = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(SumPool2d(3)(features), nn.functional.avg_pool2d(features, 3) * 9)
    torch.testing.assert_close(SumPool2d(2)(features)[0, 0, 0, 0], features[0, 0, :2, :2].sum())


def test_global_pool_spec_accepts_other_sizes_and_flatten_counts_the_map():
    model = spec([{"conv": {"filters": 4, "stride": 2}}, {"global_pool": "average"}]).eval()
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 1)
    flattened = spec([{"conv": {"filters": 4, "padding": "valid"}}, "flatten"], input_size=32)
    assert flattened[-1].in_features == 4 * 30 * 30


def test_conv_padding_stride_and_dilation_give_the_expected_size():
    model = spec([
        {"conv": {"filters": 2, "kernel": 5, "stride": 2, "padding": "valid"}},  # (96-5)//2+1 = 46
        {"conv": {"filters": 2, "kernel": 3, "dilation": 3, "padding": 1}},  # 46+2-6 = 42
        "flatten",
    ])
    assert model[-1].in_features == 2 * 42 * 42


def test_xavier_init_zeroes_biases_and_batch_norm_drops_the_conv_bias():
    model = spec([{"conv": {"filters": 4, "batch_norm": True}}, {"conv": {"filters": 4}},
                  {"global_pool": "average"}], init="xavier")
    first, second = [module for module in model if isinstance(module, nn.Conv2d)]
    assert first.bias is None
    assert (second.bias == 0).all()


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([{"conv": {"filters": 8}}, {"pool": {"type": "mean"}}],
         "model.options.layers[1].pool.type must be one of ['max', 'average', 'sum']; got 'mean'"),
        ([{"convolution": {"filters": 8}}],
         "model.options.layers[0] has unknown layer type 'convolution'; types are ["),
        ([{"conv": {"filter": 8}}],
         "model.options.layers[0].conv.filter is not a key of conv; keys are ["),
        ([{"conv": {"kernel": 3}}], "model.options.layers[0].conv.filters is required"),
        ([{"conv": {"filters": 8, "activation": "rellu"}}],
         "model.options.layers[0].conv.activation must be one of ["),
        ([{"conv": {"filters": 0}}], "model.options.layers[0].conv.filters must be an integer >= 1; got 0"),
        ([{"conv": {"filters": 8, "padding": "full"}}], "model.options.layers[0].conv.padding must be one of"),
        ([{"conv": {"filters": 8, "batch_norm": "yes"}}], "model.options.layers[0].conv.batch_norm must be true or false"),
        ([{"pool": {"size": 4}}] * 4, "model.options.layers[3].pool: the feature map shrinks from 1x1 to nothing"),
        ([{"conv": {"filters": 8, "kernel": 99, "padding": "valid"}}], "layers[0].conv: the feature map shrinks"),
        ([{"dense": {"units": 8}}], "model.options.layers[0].dense: dense needs flat features"),
        (["flatten", {"conv": {"filters": 8}}], "model.options.layers[1].conv: conv needs a (C, H, W) feature map"),
        ([{"dropout": 1.5}], "model.options.layers[0].dropout must be a number in [0, 1); got 1.5"),
        ([{"global_pool": "mean"}], "model.options.layers[0].global_pool must be one of ['average', 'max']"),
        ([{"activation": "relu6"}], "model.options.layers[0].activation must be one of"),
        (["flaten"], "(did you mean 'flatten'?)"),
        ([{"conv": {"filters": 8}, "pool": {}}], "model.options.layers[0] must be a mapping with exactly one layer type"),
        ([{"global_pool": "average"}, {"dense": {"units": 1, "activation": "sigmoid"}}],
         "the final 1-unit dense must have no activation"),
        ([{"conv": {"filters": 8}}], "must end in flat features"),
        ([], "model.options.layers is empty"),
    ],
)
def test_spec_mistakes_are_one_line_errors_naming_the_layer(layers, expected):
    with pytest.raises(ConfigError) as error:
        spec(layers)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_spec_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"got 'maxx' \(did you mean 'max'\?\)"):
        spec([{"pool": {"type": "maxx"}}])
    with pytest.raises(ConfigError, match=r"\(did you mean 'conv'\?\)"):
        spec([{"cnv": {"filters": 8}}])
    with pytest.raises(ConfigError, match=r"model.options.layers must be a list"):
        build_model(ModelConfig(name="spec", options={"layers": {"conv": {}}}))
