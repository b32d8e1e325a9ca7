"""Every registered model: forward/backward at small size, layouts, precision, options, summaries."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from pcamlab.config import ModelConfig
from pcamlab.errors import ConfigError
from pcamlab.models import (
    build_model,
    count_flops,
    first_conv,
    list_models,
    model_description,
    model_options,
    model_summary,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run 10-25x faster on 1 thread than on 2 when the 2 shared cores are busy (OpenMP
    threads spin-wait for each other), so these tests use one and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Small settings for models whose defaults are too big for a 2-core test run. A model that is not
# listed here but has a ``width`` option is built with width 4; others with their defaults.
SMALL_OPTIONS: dict[str, dict] = {
    "baseline": {"filters": [4, 8], "dense_units": 8},
    "simple-cnn": {"width": 4},
    "densenet-small": {"growth_rate": 4, "initial_channels": 8},
    "p4m-densenet": {"growth_rate": 2, "initial_channels": 2},
}


def small_model(name: str) -> nn.Module:
    options = SMALL_OPTIONS.get(name)
    if options is None:
        options = {"width": 4} if "width" in model_options(name) else {}
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, options=options))


def images(batch: int = 2, size: int = 96) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=generator)


def test_the_presets_of_part_one_are_registered():
    assert {"baseline", "simple-cnn"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_gives_logits_and_a_gradient_for_every_parameter(name):
    model = small_model(name).train()
    logits = model(images())
    assert logits.shape == (2, 1)
    assert torch.isfinite(logits).all()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.0], [1.0]]))
    loss.backward()
    missing = [key for key, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing}"
    for key, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), f"{name}: non-finite gradient in {key}"
    assert any(parameter.grad.abs().sum() > 0 for parameter in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_channels_last_and_bf16_autocast_match_the_plain_forward(name):
    model = small_model(name).eval()
    batch = images()
    with torch.no_grad():
        reference = model(batch)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(batch.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(batch.contiguous(memory_format=torch.channels_last))
    assert channels_last.shape == (2, 1)
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    assert low_precision.shape == (2, 1)
    assert torch.isfinite(low_precision.float()).all()
    # bf16 has ~3 significant digits: close to fp32, but not bit-equal
    assert (low_precision.float() - reference).abs().max() < 0.1 * (reference.abs().max() + 1)


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_one_line_description_and_a_summary(name):
    assert model_description(name)
    summary = model_summary(small_model(name))
    assert summary["parameters"] > 0 and summary["flops"] > 0


def test_baseline_is_the_classic_course_cnn_exactly():
    model = build_model(ModelConfig(name="baseline"))
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    denses = [module for module in model.modules() if isinstance(module, nn.Linear)]
    pools = [module for module in model.modules() if isinstance(module, nn.MaxPool2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convolutions] == [
        (3, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert [pool.kernel_size for pool in pools] == [4, 4]
    assert [(d.in_features, d.out_features) for d in denses] == [(64 * 6 * 6, 64), (64, 1)]
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    # Keras' Glorot-uniform start: zero biases, weights within the Glorot limit
    assert all((c.bias == 0).all() for c in convolutions)
    limit = (6 / (3 * 9 + 32 * 9)) ** 0.5
    assert convolutions[0].weight.abs().max() <= limit


def test_summary_counts_parameters_and_two_flops_per_multiply_add():
    summary = model_summary("baseline")
    parameters = (3 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (2304 * 64 + 64) + (64 + 1)
    multiply_adds = 96 * 96 * 32 * 27 + 24 * 24 * 64 * 32 * 9 + 2304 * 64 + 64
    assert summary == {"parameters": parameters, "flops": 2 * multiply_adds}


def test_count_flops_handles_grouped_and_transposed_convolutions_and_input_size():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 out: 64 * 8 * 27 MACs
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 64 * 8 * 2 * 9
        nn.ConvTranspose2d(8, 4, 2, stride=2),  # every input value scatters 4 * 4: 64 * 8 * 16
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),  # 4
    )
    expected = 64 * 8 * 27 + 64 * 8 * 2 * 9 + 64 * 8 * 16 + 4
    assert count_flops(model, input_size=8) == 2 * expected
    assert model.training  # restored after counting


def test_simple_cnn_is_in_the_flops_budget_and_fully_convolutional():
    summary = model_summary("simple-cnn")
    assert 0.2e9 <= summary["flops"] <= 0.65e9
    model = small_model("simple-cnn").eval()
    for size in (32, 64, 128):
        assert model(images(1, size)).shape == (1, 1)


def test_simple_cnn_depth_and_width_options_change_the_network():
    def convolutions(**options):
        model = build_model(ModelConfig(name="simple-cnn", options=options))
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert convolutions(width=8, depth=1) == [8, 16, 32, 64]
    assert convolutions(width=8, depth=[1, 2, 1, 3]) == [8, 16, 16, 32, 64, 64, 64]


def test_first_conv_is_the_layer_that_reads_rgb():
    convolution = first_conv(build_model(ModelConfig(name="baseline")))
    assert convolution.weight.shape == (32, 3, 3, 3)
    with pytest.raises(ConfigError, match="no Conv2d reading 3 input channels"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(3, 1)))


def test_build_model_accepts_a_name_and_keyword_overrides():
    model = build_model("simple-cnn", width=4, dropout=0.0)
    assert first_conv(model).out_channels == 4


def test_unknown_option_names_the_field_lists_the_options_and_suggests():
    with pytest.raises(ConfigError) as error:
        build_model(ModelConfig(name="simple-cnn", options={"widht": 16}))
    message = str(error.value)
    assert message.startswith("model.options.widht is not an option of 'simple-cnn'; options are [")
    assert "'width'" in message and message.endswith("(did you mean 'width'?)")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # the type and the range in one message, and a value to use (the builder's default)
        ({"width": "16"}, "model.options.width must be an integer >= 1; got '16'; use e.g. 32"),
        ({"width": 16.5}, "model.options.width must be an integer >= 1; got 16.5; use e.g. 32"),
        ({"width": 0}, "model.options.width must be an integer >= 1; got 0; use e.g. 32"),
        ({"dropout": "high"}, "model.options.dropout must be a number in [0, 1); got 'high'; use e.g. 0.3"),
        ({"activation": "rellu"}, "model.options.activation must be one of ['relu', "),
        ({"activation": "rellu"}, "got 'rellu' (did you mean 'relu'?)"),
        ({"depth": True}, "model.options.depth must be an integer >= 1 or a list of 4 integers >= 1; got True"),
        ({"depth": [1, 2]}, "model.options.depth must be an integer >= 1 or a list of 4 integers >= 1; got [1, 2]"),
        ({"dropout": 1.5}, "model.options.dropout must be a number in [0, 1); got 1.5; use e.g. 0.3"),
        ({"dropout": 50}, "model.options.dropout must be a number in [0, 1); got 50 (a percentage? use 0.5)"),
        ({"init": "he"}, "model.options.init must be one of ['default', 'kaiming', 'xavier', 'orthogonal']; got 'he'"),
        ("wide", "model.options must be a mapping of options ['width', 'depth', "),
    ],
)
def test_wrong_option_types_and_values_are_one_line_config_errors(options, expected):
    with pytest.raises(ConfigError) as error:
        build_model(ModelConfig(name="simple-cnn", options=options))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_integer_is_accepted_where_a_number_is_expected():
    model = build_model(ModelConfig(name="simple-cnn", options={"width": 4, "dropout": 0}))
    assert model.dropout.p == 0.0


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"model.name must be one of .*got 'simple-cn' \(did you mean 'simple-cnn'\?\)"):
        build_model(ModelConfig(name="simple-cn"))


def test_baseline_options_are_checked():
    with pytest.raises(ConfigError, match="shrink a 96px patch to nothing"):
        build_model(ModelConfig(name="baseline", options={"filters": [8, 8, 8, 8], "pool_size": 4}))
    with pytest.raises(ConfigError, match=r"model.options.filters\[1\] must be an integer"):
        build_model(ModelConfig(name="baseline", options={"filters": [8, "x"]}))


def test_simple_cnn_learns_a_trivial_task():
    """A few AdamW steps separate bright from dark patches (a model that cannot learn fails this)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(16, 3, 16, 16, generator=generator) * 0.1
    labels = (torch.arange(16) % 2).float().unsqueeze(1)
    batch = batch + (labels * 2 - 1).view(16, 1, 1, 1)  # class 1 bright, class 0 dark
    torch.manual_seed(0)
    model = build_model("simple-cnn", width=4, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        logits = model(batch)  # training mode: batch statistics, as the optimiser sees them
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.3 * losses[0]
    assert ((logits > 0).float() == labels).all()


# ---- the presets of part 2 ----------------------------------------------------------------------


def test_every_preset_is_registered():
    assert set(list_models()) >= {
        "baseline", "simple-cnn", "spec", "fcn", "vgg-small", "resnet18", "resnet34", "densenet-small",
        "p4m-densenet",
    }


def test_fcn_has_no_dense_layer_and_a_logit_map():
    model = small_model("fcn").eval()
    assert not any(isinstance(module, nn.Linear) for module in model.modules())
    batch = images(2, 64)
    assert model.logit_map(batch).shape == (2, 1, 8, 8)
    torch.testing.assert_close(model(batch), model.logit_map(batch).mean(dim=(2, 3)))


@pytest.mark.parametrize(("name", "blocks"), [("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3])])
def test_resnets_have_basic_blocks_a_3x3_stem_and_a_width_knob(name, blocks):
    from pcamlab.models.resnet import BasicBlock

    model = build_model(name, width=4)
    assert [len(stage) for stage in model.stages] == blocks
    assert all(isinstance(block, BasicBlock) for stage in model.stages for block in stage)
    assert first_conv(model).kernel_size == (3, 3) and first_conv(model).stride == (1, 1)
    assert not any(isinstance(module, nn.MaxPool2d) for module in model.stem)
    assert any(isinstance(module, nn.MaxPool2d) for module in build_model(name, width=4, stem_pool=True).stem)
    assert model.head.in_features == 32


def test_resnet18_at_standard_width_has_the_known_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters: minus the 7x7 stem (9,408) plus a 3x3 one
    # (1,728), minus the 1000-way fc (513,000) plus a 1-way one (513)
    assert model_summary(build_model("resnet18"))["parameters"] == 11_689_512 - 9_408 + 1_728 - 513_000 + 513


def test_densenet_concatenates_growth_rate_channels_per_layer():
    model = build_model("densenet-small", growth_rate=4, block_layers=[2, 3], initial_channels=8, compression=0.5)
    # block 1: 8 + 2*4 = 16 -> transition keeps 8; block 2: 8 + 3*4 = 20
    assert model.head.in_features == 20


# ---- p4m-densenet: the group, the layers, equivariance ----------------------------------------------

from pcamlab.models.p4m_densenet import (
    GROUP_ORDER,
    INVERSE,
    MULTIPLY,
    GroupBatchNorm,
    GroupConv,
    LiftingConv,
    transform_features,
    transform_images,
)


def test_p4m_multiplication_table_is_the_composition_of_transforms():
    probe = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(0))
    transformed = [transform_images(probe, element) for element in range(GROUP_ORDER)]
    assert all(not torch.equal(transformed[a], transformed[b]) for a in range(8) for b in range(a))
    for a in range(GROUP_ORDER):
        assert MULTIPLY[a][INVERSE[a]] == 0 and MULTIPLY[INVERSE[a]][a] == 0
        for b in range(GROUP_ORDER):
            torch.testing.assert_close(transform_images(transform_images(probe, b), a),
                                       transformed[MULTIPLY[a][b]], rtol=0, atol=0)
    assert sorted(INVERSE) == list(range(8))
    assert MULTIPLY[1][4] != MULTIPLY[4][1]  # p4m is not commutative


def _randomise_batch_norm(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def test_p4m_densenet_logit_is_invariant_to_all_8_rotations_and_flips():
    torch.manual_seed(0)
    model = build_model("p4m-densenet", growth_rate=2, initial_channels=3, block_layers=[2, 2, 2]).eval()
    _randomise_batch_norm(model)
    batch = images(2, 32)  # any side divisible by 8 (3 halvings) keeps the symmetry exact; 96 works too
    with torch.no_grad():
        reference = model(batch)
        assert (reference[0] - reference[1]).abs() > 1e-4  # not a constant function
        for element in range(GROUP_ORDER):
            torch.testing.assert_close(model(transform_images(batch, element)), reference, rtol=0, atol=1e-4)
            features = model.equivariant_features(batch)
            torch.testing.assert_close(model.equivariant_features(transform_images(batch, element)),
                                       transform_features(features, element), rtol=0, atol=1e-4)


def test_p4m_layers_transform_their_feature_maps_as_the_group_says():
    torch.manual_seed(0)
    lift = LiftingConv(3, 2, 3)
    group_conv = GroupConv(2, 3, 3)
    norm = GroupBatchNorm(2).eval()
    _randomise_batch_norm(norm)
    batch = images(1, 16)
    with torch.no_grad():
        lifted = lift(batch)  # (1, 16, 16, 16)
        assert lifted.shape == (1, 2 * 8, 16, 16)
        convolved = group_conv(lifted)
        for element in range(1, GROUP_ORDER):
            moved = transform_images(batch, element)
            torch.testing.assert_close(lift(moved), transform_features(lifted, element), rtol=0, atol=1e-5)
            transformed = transform_features(lifted, element)
            torch.testing.assert_close(group_conv(transformed), transform_features(convolved, element),
                                       rtol=0, atol=1e-5)
            torch.testing.assert_close(norm(transformed), transform_features(norm(lifted), element),
                                       rtol=0, atol=1e-5)
            # the orientation axis must be permuted: moving the maps alone is not enough
            assert not torch.allclose(lift(moved), transform_images(lifted, element), atol=1e-3)


def test_group_batch_norm_shares_statistics_over_the_orientations():
    norm = GroupBatchNorm(2).train()
    features = torch.randn(4, 16, 5, 5) + torch.arange(16.0).view(1, 16, 1, 1)
    output = norm(features)
    assert norm.running_mean.shape == (2,)
    grouped = output.reshape(4, 2, 8, 5, 5)
    torch.testing.assert_close(grouped.mean(dim=(0, 2, 3, 4)), torch.zeros(2), rtol=0, atol=1e-5)
    assert grouped[:, 0, 0].mean() < grouped[:, 0, 7].mean()  # per-orientation means are not removed


def test_p4m_flops_count_the_group_convolutions():
    model = build_model("p4m-densenet", growth_rate=1, initial_channels=1, block_layers=[1])
    lifting = 96 * 96 * 8 * 3 * 9  # 1 channel x 8 orientations, 3x3 over RGB
    dense_layer = 48 * 48 * 8 * (1 * 8 * 9)  # after max-pool: 1 new p4m channel from 1 p4m channel
    assert model_summary(model)["flops"] == 2 * (lifting + dense_layer + 2)  # + Linear(2, 1)


# ---- pcamlab models -------------------------------------------------------------------------------


def test_models_command_prints_one_row_per_preset(capsys):
    from pcamlab.cli.main import main

    assert main(["models", "baseline", "simple-cnn", "--options"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "parameters", "MFLOPs", "description"]
    baseline_row = next(line for line in lines if line.startswith("baseline "))
    assert "166,977" in baseline_row and "37.5" in baseline_row and "Classic course CNN" in baseline_row
    # each option with its default, what it allows and what it means (was "width: 32" alone)
    width = next(line.split(None, 3) for line in lines if line.strip().startswith("width "))
    assert width[:3] == ["width", "32", "an"] and width[3].startswith("integer >= 1") and "channels of the first stage" in width[3]
    assert any(line.split()[:3] == ["filters", "[32,", "64]"] and "a list of 1 or more integers >= 1" in line for line in lines)


def test_models_command_lists_the_spec_layer_types_and_their_keys(capsys):
    from pcamlab.cli.main import main
    from pcamlab.models.spec import LAYER_TYPES

    assert main(["models", "spec", "--options"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index("spec layer types (model.options.layers: a list of these):") + 1:]
    assert [line.strip().split(":")[0] for line in listed if line.startswith("  ") and not line.startswith("    ")] == LAYER_TYPES
    assert any(line.split()[:3] == ["filters", "required", "an"] for line in listed)
    assert any(line.split()[:2] == ["padding", "same"] and "one of ['same', 'valid'] or an integer >= 0" in line for line in listed)


def test_models_command_rejects_an_unknown_name_in_one_line(capsys):
    from pcamlab.cli.main import main

    assert main(["models", "resnet19"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("(did you mean 'resnet18'?)") and "\n" not in error


def test_model_summary_by_name_matches_the_built_model():
    built = build_model("densenet-small")
    assert model_summary("densenet-small") == model_summary(built)
    assert count_flops(built, 64) < count_flops(built, 96)


def test_strided_pointwise_conv_matches_nn_conv2d_and_loads_its_weights():
    from pcamlab.models.layers import SubsampledPointwiseConv2d, conv2d

    reference = nn.Conv2d(6, 12, 1, stride=2, bias=True)
    ours = conv2d(6, 12, 1, stride=2, bias=True)
    assert isinstance(ours, SubsampledPointwiseConv2d)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 15, 15)  # odd size: both give 8x8
    torch.testing.assert_close(ours(x), reference(x))
    assert type(conv2d(6, 12, 1, stride=2, padding=1)) is nn.Conv2d  # padded: left to torch


def test_narrow_resnet_trains_in_channels_last():
    # torch 2.13 on CPU crashed or hung in the backward pass of a strided 1x1 conv with < 8 input
    # channels in channels_last (resnet shortcuts at width < 8); a subprocess so a regression cannot hang the suite
    code = (
        "import torch\nfrom pcamlab.models import build_model\n"
        "for width in (5, 6):\n"
        "    model = build_model('resnet18', width=width).to(memory_format=torch.channels_last)\n"
        "    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)\n"
        "    model(x).sum().backward()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
