"""reuse_freed_memory: glibc keeps freed blocks, so a training step's big tensors stop costing page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pcamlab.runtime.memory import DISABLE_VARIABLE

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
    reason="the malloc settings exist only with glibc on Linux",
)

_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from pcamlab.runtime.memory import reuse_freed_memory
    applied = reuse_freed_memory() if sys.argv[1] == "on" else False
    for _ in range(2):  # warm up: the heap grows once
        block = np.ones(64 << 20, dtype=np.uint8); del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # a training step: allocate 64 MiB, write it, free it
        block = np.ones(64 << 20, dtype=np.uint8); del block
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _faults("on")
    _, returned = _faults("off")
    assert applied
    # 10 x 64 MiB handed back and faulted in again: at least one fault per page (2 MiB when numpy asks
    # for huge pages, 4 KiB otherwise)
    assert returned >= 10 * 32
    assert kept < returned / 20


@glibc
def test_the_environment_variable_leaves_malloc_alone():
    applied, faults = _faults("on", **{DISABLE_VARIABLE: "1"})
    assert not applied and faults >= 10 * 32


@pytest.mark.parametrize("value, applied", [("0", True), ("false", True), ("off", True), ("1", False), ("yes", False)])
def test_the_variable_reads_common_spellings(value, applied):
    code = "from pcamlab.runtime.memory import reuse_freed_memory; print(reuse_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, DISABLE_VARIABLE: value})
    expected = applied and sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    assert done.stdout.strip() == str(expected)


def test_an_unknown_value_is_a_one_line_error_before_training(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pcamlab", "train", "--data", "sample", "--set", "train.epochs=1",
         "--set", "train.max_steps_per_epoch=1", "--set", "model.options.width=4", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, DISABLE_VARIABLE: "maybe"}, timeout=300,
    )
    assert done.returncode == 2
    assert f"{DISABLE_VARIABLE}='maybe' is not understood" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
