"""The same numbers on every machine: bf16 only where the hardware has it, and scoring in fp32 always.

Training may run under bf16 autocast (``train.precision``), but validation, evaluate, predict and the
thresholds chosen from them score in the contract's precision, fp32, so a checkpoint's numbers do not
depend on which CPU or GPU trained or scores it. Tests that compare trained numbers run under both
precisions (bf16 is emulated where the CPU lacks it; at tiny sizes that is cheap).
"""

from __future__ import annotations

import pytest
import torch

from pcamlab.runtime.device import cpu_has_native_bf16, resolve_precision


@pytest.mark.parametrize(
    "avx512_bf16, amx, onednn, expected",
    [
        (False, False, True, "fp32"),  # AVX-512 without BF16/AMX: oneDNN says yes, but it emulates bf16
        (False, False, False, "fp32"),  # AVX2
        (True, False, True, "bf16"),  # AVX-512-BF16 (Cooper Lake, Zen 4)
        (False, True, True, "bf16"),  # AMX (Sapphire Rapids)
    ],
)
def test_auto_precision_is_bf16_only_with_bf16_hardware(monkeypatch, avx512_bf16, amx, onednn, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert cpu_has_native_bf16() == (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: emulated is still allowed


def test_scoring_is_ieee_fp32_on_gpus_and_puts_the_flags_back():
    from pcamlab.runtime.device import scoring

    cuda = torch.device("cuda")  # only flags are set: no GPU needed
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions: TF32, a 10-bit mantissa
    try:
        with scoring(cuda, "fp32"):
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert torch.backends.cudnn.allow_tf32 is True
        with scoring(torch.device("cpu"), "bf16"):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert not torch.is_autocast_enabled("cpu")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
