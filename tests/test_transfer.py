"""Transfer learning: weights written here in torchvision, timm, pcamlab and Keras layouts (nothing is
downloaded) land in the right pcamlab tensors, shape mismatches are skipped with reasons, a Keras
port computes what Keras computes, and a frozen backbone keeps the loaded weights through training."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch
from fixtures_data import sample_patches, write_h5
from safetensors.torch import save_file

from pcamlab.config import load_config
from pcamlab.errors import CheckpointError, ConfigError
from pcamlab.models import build_model
from pcamlab.models.transfer import load_pretrained


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy shared cores make tiny tensors far slower on several threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str, seed: int, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **options)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# -- the inverse mappings (pcamlab names -> the other libraries' names), written independently ----------


def _to_torchvision_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.0\.", "conv1.", key)
        key = re.sub(r"^stem\.1\.", "bn1.", key)
        key = re.sub(r"^head\.", "fc.", key)
        key = re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
        key = key.replace(".shortcut.", ".downsample.")
        renamed[key] = value
    return renamed


def _to_torchvision_densenet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """densenet-small defaults: features = conv, pool, 4 layers, transition (4), 8 layers, transition, 8 layers, BN."""
    names = {"0": "features.conv0"}
    index = 2
    for block, count in enumerate((4, 8, 8), start=1):
        for layer in range(1, count + 1):
            prefix = f"features.denseblock{block}.denselayer{layer}"
            for inner, part in ((0, "norm1"), (2, "conv1"), (3, "norm2"), (5, "conv2")):
                names[f"{index}.layers.{inner}"] = f"{prefix}.{part}"
            index += 1
        if block < 3:
            names[str(index)] = f"features.transition{block}.norm"
            names[str(index + 2)] = f"features.transition{block}.conv"
            index += 4
    names[str(index)] = "features.norm5"
    renamed = {}
    for key, value in state.items():
        if key.startswith("head."):
            renamed["classifier." + key[5:]] = value
            continue
        module, leaf = key[len("features."):].rsplit(".", 1)
        renamed[f"{names[module]}.{leaf}"] = value
    return renamed


def _assert_loaded_equal(model, expected: dict[str, torch.Tensor], names: list[str]) -> None:
    state = model.state_dict()
    assert names, "nothing was loaded"
    for name in names:
        assert torch.equal(state[name], expected[name]), name


# -- torchvision / timm / pcamlab state dicts ---------------------------------------------------------


def test_torchvision_resnet18_fills_every_tensor_with_the_same_values(tmp_path):
    source = _state(_model("resnet18", 1, width=8))
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _to_torchvision_resnet(source).items()}}, path)
    model = _model("resnet18", 2, width=8)
    assert not torch.equal(model.state_dict()["stages.2.0.conv1.weight"], source["stages.2.0.conv1.weight"])

    report = load_pretrained(model, path)

    assert report["source_format"] == "torchvision"
    assert report["missing"] == [] and report["skipped"] == []
    assert len(report["loaded"]) == sum(1 for k in source if not k.endswith("num_batches_tracked"))
    _assert_loaded_equal(model, source, report["loaded"])
    assert "stages.1.0.shortcut.0.weight" in report["loaded"]  # downsample.0 -> shortcut.0


def test_imagenet_shaped_stem_and_fc_are_skipped_with_reasons(tmp_path):
    source = _to_torchvision_resnet(_state(_model("resnet18", 1, width=8)))
    source["conv1.weight"] = torch.randn(8, 3, 1, 1).expand(8, 3, 7, 7).contiguous()  # ImageNet's 7x7 stem shape
    source["fc.weight"], source["fc.bias"] = torch.randn(1000, 64), torch.randn(1000)  # 1000 classes
    path = tmp_path / "imagenet.pt"
    torch.save({"model": source}, path)
    model = _model("resnet18", 2, width=8)
    initial_head = model.head.weight.detach().clone()

    report = load_pretrained(model, path)

    skipped = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in report["skipped"]}
    assert "(8, 3, 7, 7) does not fit stem.0.weight (8, 3, 3, 3)" in skipped["conv1.weight"]
    assert "(1000, 64) does not fit head.weight (1, 64)" in skipped["fc.weight"]
    assert "follows conv1.weight" in skipped["bn1.running_mean"]  # statistics of a stem that is not loaded
    assert set(report["missing"]) == {"stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.1.running_mean",
                                      "stem.1.running_var", "head.weight", "head.bias"}
    assert torch.equal(model.head.weight, initial_head)  # the head is left to train
    reference = _model("resnet18", 1, width=8).state_dict()
    _assert_loaded_equal(model, reference, report["loaded"])

    relaxed = _model("resnet18", 2, width=8)
    report = load_pretrained(relaxed, path, strict_shapes=False)  # the 7x7 kernel is resized to 3x3
    assert report["adapted"] == ["stem.0.weight"] and "stem.1.running_var" in report["loaded"]
    # a flat 7x7 filter becomes a flat 3x3 filter with the same sum (the same response to a flat patch)
    assert torch.allclose(relaxed.stem[0].weight, source["conv1.weight"][:, :, :3, :3] * 49 / 9)


def test_timm_resnet_d_names_deep_stem_skipped_average_shortcut_loaded(tmp_path):
    source = _to_torchvision_resnet(_state(_model("resnet18", 1, width=8)))
    timm = {}
    for key, value in source.items():  # resnet-d shortcut: AvgPool2d (no tensors) > conv > bn
        key = re.sub(r"\.downsample\.(\d)\.", lambda m: f".downsample.{int(m.group(1)) + 1}.", key)
        if not key.startswith("conv1."):
            timm[key] = value
    for index, shape in ((0, (4, 3, 3, 3)), (3, (4, 4, 3, 3)), (6, (8, 4, 3, 3))):  # deep stem convs
        timm[f"conv1.{index}.weight"] = torch.randn(shape)
    path = tmp_path / "timm-resnet18d.safetensors"
    save_file({k: v.contiguous() for k, v in timm.items()}, str(path))
    model = _model("resnet18", 2, width=8)

    report = load_pretrained(model, path)

    assert report["source_format"] == "timm"
    skipped = "\n".join(report["skipped"])
    assert "conv1.0.weight: timm's deep stem" in skipped and "bn1.weight: follows conv1.6.weight" in skipped
    assert {"stages.1.0.shortcut.0.weight", "stages.1.0.shortcut.1.running_var"} <= set(report["loaded"])
    reference = _model("resnet18", 1, width=8).state_dict()
    _assert_loaded_equal(model, reference, report["loaded"])
    assert {name.split(".")[0] for name in report["missing"]} == {"stem"}

    plain = tmp_path / "timm-resnet18.safetensors"  # timm's plain resnet18 uses torchvision's names
    save_file({k: v.contiguous() for k, v in source.items()}, str(plain))
    report = load_pretrained(_model("resnet18", 2, width=8), plain, "timm")
    assert report["source_format"] == "timm" and report["missing"] == []


def test_torchvision_densenet_fills_densenet_small_block_by_block(tmp_path):
    source = _state(_model("densenet-small", 1))
    renamed = _to_torchvision_densenet(source)
    renamed["features.norm0.weight"] = torch.ones(24)  # torchvision has a BN after its stem conv
    features = source["head.weight"].shape[1]
    renamed["classifier.weight"], renamed["classifier.bias"] = torch.randn(1000, features), torch.randn(1000)
    path = tmp_path / "densenet.pth"
    torch.save(renamed, path)
    model = _model("densenet-small", 2)

    report = load_pretrained(model, path)

    assert report["source_format"] == "torchvision"
    assert report["missing"] == ["head.weight", "head.bias"]
    _assert_loaded_equal(model, source, report["loaded"])
    skipped = "\n".join(report["skipped"])
    assert "features.norm0.weight: pcamlab's densenet has no batch-norm" in skipped
    assert "classifier.weight: shape (1000," in skipped


def test_pcamlab_checkpoint_loads_by_name_and_a_misfit_fails_in_one_line(tmp_path):
    from pcamlab.runtime import InputContract, save_checkpoint

    source = _model("resnet18", 1, width=8)
    path = save_checkpoint(tmp_path / "best.safetensors", source, load_config(), InputContract(mean=[0.5] * 3, std=[0.2] * 3))
    model = _model("resnet18", 2, width=8)
    report = load_pretrained(model, path)
    assert report["source_format"] == "pcamlab" and report["missing"] == []
    _assert_loaded_equal(model, _state(source), report["loaded"])

    with pytest.raises(CheckpointError) as error:  # every tensor has the wrong width
        load_pretrained(_model("resnet18", 2, width=4), path)
    message = str(error.value)  # (only the 1-element head bias fits: a head alone is no transfer)
    assert "\n" not in message and "none of its backbone tensors fits ResNet" in message and "does not fit" in message


def test_errors_say_what_is_wrong_and_how_to_fix_it(tmp_path):
    model = _model("resnet18", 0, width=4)
    with pytest.raises(CheckpointError, match="does not exist; set model.pretrained"):
        load_pretrained(model, tmp_path / "nowhere.pth")
    garbage = tmp_path / "weights.bin"
    garbage.write_text("not weights at all\n")
    with pytest.raises(CheckpointError, match="is not a safetensors, torch or Keras HDF5 file"):
        load_pretrained(model, garbage)
    torch.save({"epoch": 3}, tmp_path / "no-tensors.pt")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_pretrained(model, tmp_path / "no-tensors.pt")
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "layer1.0.conv1.weight": torch.zeros(4, 4, 3, 3)},
               tmp_path / "ok.pt")
    with pytest.raises(ConfigError, match="did you mean 'timm'"):
        load_pretrained(model, tmp_path / "ok.pt", "tim")
    with pytest.raises(CheckpointError, match="not a Keras HDF5 file"):
        load_pretrained(model, tmp_path / "ok.pt", "keras")
    with pytest.raises(CheckpointError, match="read as torchvision ResNet names"):  # a ResNet file for a baseline
        load_pretrained(_model("baseline", 0), tmp_path / "ok.pt")


# -- Keras ---------------------------------------------------------------------------------------------


def _keras_baseline_weights(seed: int) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The course CNN's layers in Keras layout: Conv2D kernels (kh, kw, in, out), Dense kernels (in, out)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return [
        ("conv2d", [("kernel:0", normal(3, 3, 3, 32, scale=0.3)), ("bias:0", normal(32, scale=0.1))]),
        ("max_pooling2d", []),
        ("conv2d_1", [("kernel:0", normal(3, 3, 32, 64, scale=0.1)), ("bias:0", normal(64, scale=0.1))]),
        ("max_pooling2d_1", []),
        ("flatten", []),
        ("dense", [("kernel:0", normal(6 * 6 * 64, 64, scale=0.03)), ("bias:0", normal(64, scale=0.1))]),
        ("dense_1", [("kernel:0", normal(64, 1, scale=0.2)), ("bias:0", normal(1, scale=0.1))]),
    ]


def _write_keras2(path, layers) -> None:
    """``model.save_weights('x.h5')`` of Keras 2: ordered layer_names, each group with weight_names."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        file.attrs["backend"], file.attrs["keras_version"] = b"tensorflow", b"2.15.0"
        for name, weights in layers:
            group = file.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for w, _ in weights])
            for weight_name, array in weights:
                group.create_dataset(f"{name}/{weight_name}", data=array)


def _write_keras3(path, layers) -> None:
    """``model.save_weights('x.weights.h5')`` of Keras 3: layers/<name>/vars/<index>."""
    with h5py.File(path, "w") as file:
        for name, weights in layers:
            group = file.create_group(f"layers/{name}/vars")
            for index, (_, array) in enumerate(weights):
                group.create_dataset(str(index), data=array)


def _keras_reference_forward(images: np.ndarray, layers) -> np.ndarray:
    """What Keras computes, in numpy, channels-last: conv 'same' + relu, max-pool 4, ..., flatten, dense."""
    weights = {name: [array.astype(np.float64) for _, array in pairs] for name, pairs in layers}
    x = images.astype(np.float64)  # (B, 96, 96, 3)
    for conv in ("conv2d", "conv2d_1"):
        kernel, bias = weights[conv]
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        height, width = x.shape[1:3]
        x = sum(padded[:, dy:dy + height, dx:dx + width, :] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
        x = np.maximum(x + bias, 0.0)
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height // 4, 4, width // 4, 4, channels).max(axis=(2, 4))  # MaxPool2D(4)
    x = x.reshape(len(x), -1)  # Flatten in NHWC order: (B, 6*6*64)
    x = np.maximum(x @ weights["dense"][0] + weights["dense"][1], 0.0)
    logit = x @ weights["dense_1"][0] + weights["dense_1"][1]  # (B, 1)
    return 1.0 / (1.0 + np.exp(-logit[:, 0]))  # Dense(1, activation="sigmoid")


@pytest.mark.parametrize("writer", [_write_keras2, _write_keras3], ids=["keras2", "keras3"])
def test_keras_baseline_weights_compute_what_keras_computes(tmp_path, writer):
    layers = _keras_baseline_weights(seed=3)
    path = tmp_path / "baseline.weights.h5"
    writer(path, layers)
    model = _model("baseline", 0)

    report = load_pretrained(model, path)

    assert report["source_format"] == "keras" and report["missing"] == [] and report["skipped"] == []
    images = sample_patches(2)[0].astype(np.float32) / 255.0  # (2, 96, 96, 3)
    expected = _keras_reference_forward(images, layers)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))  # (2, 1)
    probability = torch.sigmoid(logits)[:, 0].double().numpy()
    assert np.abs(expected - 0.5).max() > 0.05  # the weights say something: not all at 0.5
    np.testing.assert_allclose(probability, expected, rtol=1e-4, atol=1e-5)


def test_keras_flatten_order_matters(tmp_path):
    """The same weights without the NHWC -> NCHW row reordering give another output: the test above can fail."""
    layers = _keras_baseline_weights(seed=3)
    path = tmp_path / "baseline.h5"
    _write_keras2(path, layers)
    model = _model("baseline", 0)
    load_pretrained(model, path)
    naive = _model("baseline", 0)
    load_pretrained(naive, path)
    with torch.no_grad():
        naive.classifier[1].weight.copy_(torch.from_numpy(layers[5][1][0][1].T.copy()))  # rows left in NHWC order
    images = torch.from_numpy(sample_patches(2)[0].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(images), naive.eval()(images), atol=1e-3)


# -- training from loaded weights ------------------------------------------------------------------------


def test_training_with_a_frozen_backbone_keeps_the_loaded_weights(tmp_path):
    """Only loaded tensors freeze; the skipped 7x7 stem (random) and its batch-norm train from epoch 1 (issue 9 2.4)."""
    import json

    from pcamlab.runtime import load_checkpoint
    from pcamlab.train.loop import train

    images, labels = sample_patches(8, split="train", seed=5)
    valid_images, valid_labels = sample_patches(4, split="valid", seed=6)
    data = write_h5(tmp_path / "h5", {"train": (images, labels), "valid": (valid_images, valid_labels)})
    source = _state(_model("resnet18", 1, width=8))
    imagenet = _to_torchvision_resnet(source)
    imagenet["conv1.weight"] = torch.randn(8, 3, 7, 7)  # ImageNet's 7x7 stem: skipped, the model's 3x3 stays random
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.randn(1000, 64), torch.randn(1000)
    weights = tmp_path / "imagenet.pth"
    torch.save(imagenet, weights)
    settings = [
        f"data.path={data}", "model.name=resnet18", "model.options={width: 8}", f"model.pretrained={weights}",
        "train.freeze_backbone_epochs=1", "train.backbone_lr_factor=0.1", "train.batch_size=8",
        "train.patience=0", "train.warmup_epochs=0", "train.learning_rate=0.01", "train.seed=7",
    ]
    lines: list[str] = []
    train(load_config(None, [*settings, "train.epochs=1"]), tmp_path / "frozen", progress=False, log=lines.append)

    assert any(line.startswith("model: 95 of 102 tensors loaded from") for line in lines), lines
    assert any(line.startswith("model: skipped conv1.weight: shape (8, 3, 7, 7) does not fit") for line in lines)
    assert any(line.startswith("model: skipped bn1.weight: follows conv1.weight") for line in lines)
    assert not any(line.startswith("warning:") for line in lines)  # 95 of 102 is most of the model
    trained = load_checkpoint(tmp_path / "frozen" / "last.safetensors").model.state_dict()
    stem = [name for name in source if name.startswith("stem.") and not name.endswith("num_batches_tracked")]
    backbone = [name for name in source if not name.startswith(("head.", "stem."))
                and not name.endswith("num_batches_tracked")]
    for name in backbone:  # weights and batch-norm statistics: the frozen, loaded backbone is untouched
        assert torch.equal(trained[name], source[name]), name
    torch.manual_seed(7)  # the loop seeds torch with train.seed before building the model
    initial = build_model("resnet18", width=8).state_dict()
    assert not torch.allclose(trained["head.weight"], initial["head.weight"])  # the head learned
    for name in stem:  # the random stem is not frozen with the loaded layers: it learned too
        assert not torch.equal(trained[name], initial[name]), name

    summary = json.loads((tmp_path / "frozen" / "summary.json").read_text())["pretrained"]
    assert summary["tensors"] == 102 and len(summary["loaded"]) == 95
    assert sorted(summary["left_at_initial_values"]) == sorted(stem + ["head.weight", "head.bias"])
    assert any(entry.startswith("conv1.weight: shape (8, 3, 7, 7)") for entry in summary["skipped"])
    assert any(entry.startswith("fc.weight: shape (1000, 64)") for entry in summary["skipped"])
    assert "stages.0.0.conv1.weight" in summary["frozen_and_slowed"]
    assert not any(name.startswith(("stem.", "head.")) for name in summary["frozen_and_slowed"])

    train(load_config(None, [*settings, "train.epochs=2", "train.max_steps_per_epoch=1"]), tmp_path / "thawed",
          progress=False)
    thawed = load_checkpoint(tmp_path / "thawed" / "last.safetensors").model.state_dict()
    changed = [name for name in backbone if not torch.equal(thawed[name], source[name])]
    assert "stages.3.1.conv2.weight" in changed  # epoch 2 trains the backbone (at 0.1 x the learning rate)


def _torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet18's state dict shapes, written out (BasicBlocks 2-2-2-2, 1000 classes)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def batch_norm(prefix: str, channels: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    batch_norm("bn1", 64)
    in_planes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (planes, in_planes, 3, 3)
            batch_norm(f"{prefix}.bn1", planes)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            batch_norm(f"{prefix}.bn2", planes)
            if block == 0 and stage > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (planes, in_planes, 1, 1)
                batch_norm(f"{prefix}.downsample.1", planes)
            in_planes = planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    return shapes


def test_shipped_transfer_config_takes_torchvision_resnet18_weights(tmp_path):
    from pathlib import Path

    config_path = Path(__file__).resolve().parents[1] / "configs" / "transfer-resnet18.yaml"
    generator = torch.Generator().manual_seed(0)
    imagenet = {
        name: torch.randn(shape, generator=generator) if shape else torch.tensor(100)
        for name, shape in _torchvision_resnet18_shapes().items()
    }
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet, weights)
    config = load_config(config_path, [f"model.pretrained={weights}"])
    assert config.train.freeze_backbone_epochs == 2 and config.train.backbone_lr_factor == 0.1
    model = build_model(config.model)

    report = load_pretrained(model, config.model.pretrained, config.model.pretrained_format)

    assert report["source_format"] == "torchvision"
    assert sorted(report["missing"]) == sorted(["stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.1.running_mean",
                                                "stem.1.running_var", "head.weight", "head.bias"])
    # 102 tensors (besides batch-norm counters) less the 7x7 stem conv, its batch-norm (4) and the fc (2)
    assert len(report["loaded"]) == 95 and report["adapted"] == []
    assert torch.equal(model.state_dict()["stages.3.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    loaded = model.state_dict()["stages.2.0.shortcut.1.running_var"]
    assert torch.equal(loaded, imagenet["layer3.0.downsample.1.running_var"])


def test_backbone_learning_rate_factor_slows_only_loaded_tensors(tmp_path):
    from pcamlab.train.model_setup import make_optimizer

    model = _model("resnet18", 1, width=8)
    imagenet = _to_torchvision_resnet(_state(_model("resnet18", 2, width=8)))
    imagenet["conv1.weight"] = torch.randn(8, 3, 7, 7)
    torch.save(imagenet, tmp_path / "imagenet.pth")
    report = load_pretrained(model, tmp_path / "imagenet.pth")
    config = load_config(None, ["train.learning_rate=0.01", "train.backbone_lr_factor=0.1"])
    optimizer = make_optimizer(model, config, report["loaded"])
    rate = {id(p): group["peak_lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert rate[id(names["stem.0.weight"])] == pytest.approx(0.01)  # random stem: full rate
    assert rate[id(names["stem.1.weight"])] == pytest.approx(0.01)
    assert rate[id(names["head.weight"])] == pytest.approx(0.01)
    assert rate[id(names["stages.0.0.conv1.weight"])] == pytest.approx(0.001)  # loaded: 0.1 x


def test_keras_course_baseline_into_simple_cnn_warns_that_most_stays_random(tmp_path):
    from pcamlab.train.model_setup import load_pretrained_weights

    path = tmp_path / "baseline.h5"
    _write_keras2(path, _keras_baseline_weights(seed=3))
    config = load_config(None, ["model.name=simple-cnn", f"model.pretrained={path}"])
    lines: list[str] = []
    facts, loaded = load_pretrained_weights(_model("simple-cnn", 0), config, lines.append)
    assert facts["tensors"] == 22 and len(loaded) == 2
    assert any(line.startswith("warning: only 2 of 22 tensors of simple-cnn were loaded") for line in lines), lines
    assert facts["warning"].startswith("only 2 of 22")
    assert len(facts["skipped"]) >= 4 and all(": " in entry for entry in facts["skipped"])


def test_freezing_without_pretrained_weights_is_refused(tmp_path):
    from pcamlab.train.model_setup import load_pretrained_weights

    config = load_config(None, ["train.freeze_backbone_epochs=2"])
    with pytest.raises(ConfigError, match="train.freeze_backbone_epochs=2 .* model.pretrained, which is not set"):
        load_pretrained_weights(_model("simple-cnn", 0), config, print)


def test_ported_keras_baseline_with_unit_input_scaling_matches_keras_in_every_runtime(tmp_path):
    """Issue 9 3.2: data.input_scaling=unit (x / 255, no mean/std) is stored in the contract and applied by
    every predictor and export, so a ported course baseline gives Keras' probabilities from uint8 patches."""
    from pcamlab.deploy.export import export_checkpoint
    from pcamlab.runtime import InputContract, load_predictor, save_checkpoint

    layers = _keras_baseline_weights(seed=3)
    _write_keras2(tmp_path / "baseline.h5", layers)
    model = _model("baseline", 0)
    load_pretrained(model, tmp_path / "baseline.h5")
    config = load_config(None, ["model.name=baseline", "data.input_scaling=unit"])
    images = sample_patches(4)[0]  # uint8 (4, 96, 96, 3)
    expected = _keras_reference_forward(images.astype(np.float32) / 255.0, layers)
    mean, std = (0.70, 0.54, 0.69), (0.17, 0.21, 0.16)  # training statistics a standardising contract would use

    unit = save_checkpoint(tmp_path / "port.safetensors", model.eval(), config,
                           InputContract(mean=mean, std=std, input_scaling="unit"))
    predictor = load_predictor(unit)
    assert predictor.contract.input_scaling == "unit"
    np.testing.assert_allclose(predictor.predict_proba(images), expected, rtol=1e-4, atol=1e-5)
    for format in ("onnx", "torchscript"):
        exported = export_checkpoint(unit, tmp_path / f"port.{'onnx' if format == 'onnx' else 'pt'}", format=format)
        runtime = load_predictor(exported["path"])
        assert runtime.contract.input_scaling == "unit"
        np.testing.assert_allclose(runtime.predict_proba(images), expected, rtol=1e-4, atol=1e-5)

    standardized = save_checkpoint(tmp_path / "standardized.safetensors", model, config,
                                   InputContract(mean=mean, std=std, input_scaling="standardize"))
    assert np.abs(load_predictor(standardized).predict_proba(images) - expected).max() > 1e-3  # the test can fail


# -- VGG16 and ResNet50 (issue 9 3.1): the course notes' transfer-learning backbones ---------------------


def _keras_name_resnet50(module: str) -> str:
    """pcamlab resnet50 module -> keras.applications.ResNet50 layer name (written independently of transfer.py)."""
    if module in ("stem.0", "stem.1"):
        return "conv1_conv" if module == "stem.0" else "conv1_bn"
    parts = module.split(".")  # stages.S.B.conv1 | stages.S.B.shortcut.0
    stage, block = int(parts[1]) + 2, int(parts[2]) + 1
    if parts[3] == "shortcut":
        return f"conv{stage}_block{block}_0_{'conv' if parts[4] == '0' else 'bn'}"
    return f"conv{stage}_block{block}_{parts[3][-1]}_{'conv' if parts[3].startswith('conv') else 'bn'}"


def test_torchvision_and_timm_resnet50_fill_every_tensor(tmp_path):
    source = _state(_model("resnet50", 1, width=4, stem_kernel=7, stem_stride=2, stem_pool=True))
    imagenet = _to_torchvision_resnet(source)
    assert "layer1.0.conv3.weight" in imagenet and "layer1.0.downsample.0.weight" in imagenet  # torchvision's names
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save(imagenet, tmp_path / "resnet50.pth")
    model = _model("resnet50", 2, width=4, stem_kernel=7, stem_stride=2, stem_pool=True)
    report = load_pretrained(model, tmp_path / "resnet50.pth")
    assert report["source_format"] == "torchvision" and report["missing"] == ["head.weight", "head.bias"]
    _assert_loaded_equal(model, source, report["loaded"])
    assert len(report["loaded"]) == len([k for k in source if not k.endswith("num_batches_tracked")]) - 2

    timm = {}  # resnet50d: deep stem, average-pool shortcut (downsample.0 is the pool: conv .1, bn .2)
    for key, value in imagenet.items():
        if key.startswith("conv1."):
            continue
        if ".downsample." in key:
            index = key.split(".downsample.")[1].split(".")[0]
            key = key.replace(f".downsample.{index}.", f".downsample.{int(index) + 1}.")
        timm[key] = value
    timm["conv1.0.weight"], timm["conv1.6.weight"] = torch.randn(4, 3, 3, 3), torch.randn(4, 4, 3, 3)
    torch.save(timm, tmp_path / "resnet50d.pth")
    report = load_pretrained(_model("resnet50", 2, width=4), tmp_path / "resnet50d.pth")
    assert report["source_format"] == "timm"
    assert "stages.0.0.shortcut.0.weight" in report["loaded"] and "stages.3.2.conv3.weight" in report["loaded"]
    assert any(entry.startswith("conv1.0.weight: timm's deep stem") for entry in report["skipped"])


def test_keras_resnet50_is_matched_by_name_and_its_conv_biases_fold_into_batch_norm(tmp_path):
    source_model = _model("resnet50", 1, width=4)
    source = _state(source_model)
    generator = np.random.default_rng(0)
    layers, order = {}, []
    for name, module in source_model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            bias = generator.normal(size=module.out_channels).astype(np.float32)
            kernel = source[f"{name}.weight"].permute(2, 3, 1, 0).numpy()  # (kh, kw, in, out)
            layers[_keras_name_resnet50(name)] = [("kernel:0", kernel), ("bias:0", bias)]
            order.append(_keras_name_resnet50(name))
        elif isinstance(module, torch.nn.BatchNorm2d):
            keras_name = _keras_name_resnet50(name)
            bias = layers[keras_name[:-2] + "conv"][1][1]
            layers[keras_name] = [("gamma:0", source[f"{name}.weight"].numpy()), ("beta:0", source[f"{name}.bias"].numpy()),
                                  ("moving_mean:0", source[f"{name}.running_mean"].numpy() + bias),  # Keras' mean sees the bias
                                  ("moving_variance:0", source[f"{name}.running_var"].numpy())]
            order.append(keras_name)
    layers["predictions"] = [("kernel:0", np.zeros((512, 1000), np.float32)), ("bias:0", np.zeros(1000, np.float32))]
    # Keras 2's file order puts each block's shortcut after its main path: matching by order would fail
    def keras2_rank(name: str) -> tuple:
        parts = name.replace("conv1_", "conv1_block0_9_").split("_")
        return (parts[0], int(parts[1][5:]), 9 if parts[2] == "0" else int(parts[2]), parts[3]) if len(parts) == 4 else ("z",)
    ordered = sorted(layers.items(), key=lambda item: keras2_rank(item[0]))
    assert [name for name, _ in ordered].index("conv2_block1_0_conv") > [name for name, _ in ordered].index("conv2_block1_3_conv")
    _write_keras2(tmp_path / "resnet50.h5", ordered)

    model = _model("resnet50", 2, width=4)
    report = load_pretrained(model, tmp_path / "resnet50.h5")
    assert report["source_format"] == "keras" and report["missing"] == ["head.weight", "head.bias"]
    state = model.state_dict()
    for name in report["loaded"]:
        torch.testing.assert_close(state[name], source[name], rtol=0, atol=1e-5, msg=name)
    assert any(entry.startswith("conv2_block1_1_conv/") and "bias:0: folded into the running mean" in entry
               for entry in report["skipped"])
    images = torch.from_numpy(sample_patches(2)[0].astype(np.float32) / 255).permute(0, 3, 1, 2)
    with torch.no_grad():
        model.head.load_state_dict(source_model.head.state_dict())
        torch.testing.assert_close(model.eval()(images), source_model.eval()(images), rtol=1e-4, atol=1e-5)


def test_torchvision_timm_and_keras_vgg16_fill_every_convolution(tmp_path):
    source_model = _model("vgg16", 1, width=4)
    source = _state(source_model)
    convs = [name for name, module in source_model.features.named_children() if isinstance(module, torch.nn.Conv2d)]
    assert convs == ["0", "2", "5", "7", "10", "12", "14", "17", "19", "21", "24", "26", "28"]  # torchvision's vgg16
    conv_keys = [f"features.{index}.{leaf}" for index in convs for leaf in ("weight", "bias")]

    torchvision = {key: source[key] for key in conv_keys}
    torchvision.update({"classifier.0.weight": torch.randn(4096, 25088 // 64), "classifier.6.weight": torch.randn(1000, 4096)})
    torch.save(torchvision, tmp_path / "vgg16.pth")
    model = _model("vgg16", 2, width=4)
    report = load_pretrained(model, tmp_path / "vgg16.pth")
    assert report["source_format"] == "torchvision" and sorted(report["loaded"]) == sorted(conv_keys)
    _assert_loaded_equal(model, source, report["loaded"])
    assert any(entry.startswith("classifier.0.weight: ImageNet's classifier") for entry in report["skipped"])

    timm = {key: source[key] for key in conv_keys}
    timm.update({"pre_logits.fc1.weight": torch.randn(32, 32, 7, 7), "head.fc.weight": torch.randn(1000, 32)})
    torch.save(timm, tmp_path / "vgg16-timm.pth")
    report = load_pretrained(_model("vgg16", 2, width=4), tmp_path / "vgg16-timm.pth")
    assert report["source_format"] == "timm" and sorted(report["loaded"]) == sorted(conv_keys)

    bn_model = _model("vgg16", 3, width=4, batch_norm=True)  # vgg16_bn file: features indices differ
    bn_source = _state(bn_model)
    bn_file = {k: v for k, v in bn_source.items() if k.startswith("features.")}
    bn_file["classifier.6.weight"] = torch.randn(1000, 4096)
    torch.save(bn_file, tmp_path / "vgg16_bn.pth")
    plain = _model("vgg16", 2, width=4)
    report = load_pretrained(plain, tmp_path / "vgg16_bn.pth")
    assert len(report["loaded"]) == 26  # 13 convolutions, matched by order; their batch-norms have no place
    assert any("set model.options.batch_norm=true" in entry for entry in report["skipped"])
    report = load_pretrained(_model("vgg16", 2, width=4, batch_norm=True), tmp_path / "vgg16_bn.pth")
    assert report["missing"] == [k for k in bn_source if k.startswith("head.")]

    keras = [(f"block{stage}_conv{number}", [("kernel:0", source[f"features.{index}.weight"].permute(2, 3, 1, 0).numpy()),
                                             ("bias:0", source[f"features.{index}.bias"].numpy())])
             for (stage, number), index in zip(
                 [(s, n) for s, count in enumerate((2, 2, 3, 3, 3), start=1) for n in range(1, count + 1)], convs)]
    keras += [("fc1", [("kernel:0", np.zeros((4608 // 16, 64), np.float32)), ("bias:0", np.zeros(64, np.float32))]),
              ("predictions", [("kernel:0", np.zeros((64, 1000), np.float32)), ("bias:0", np.zeros(1000, np.float32))])]
    _write_keras2(tmp_path / "vgg16.h5", keras)
    model = _model("vgg16", 2, width=4)
    report = load_pretrained(model, tmp_path / "vgg16.h5")
    assert report["source_format"] == "keras" and sorted(report["loaded"]) == sorted(conv_keys)
    _assert_loaded_equal(model, source, report["loaded"])
