"""Shared test fixtures.

``shared_data`` points at the real PCam patches in ``../shared/data`` (next to the repository) and
skips the test with a clear reason where that folder is absent, e.g. on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PCAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pcam-jpg").is_dir():
        pytest.skip(f"real PCam data not found at {SHARED_DATA} (set PCAMLAB_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny-tensor tests run faster and steadier on one thread, above all on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
