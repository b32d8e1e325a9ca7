"""Shared test fixtures, and the rule for tests that need a service the machine may lack.

``shared_data`` points at the real PCam patches in ``../shared/data`` (next to the repository).

:func:`require_service` is how a test says it cannot run without a service (a browser, a database
server, the real data, a Slurm cluster): on a developer's machine the test skips with the reason; under
``CI=true``, where CI provides each service in :data:`CI_SERVICES` (``.ci/run`` installs or starts
them), the same call fails the test, so a service that stopped starting is a red build, not a quiet skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PCAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
# Services CI provides (.ci/run): a missing one fails the build there. slurm: .ci/slurm.sh, once written.
CI_SERVICES = frozenset({"chromium", "postgresql", "shared-data", "slurm"})


def in_ci() -> bool:
    """True under ``CI=true`` (GitHub Actions, GitLab and most CI systems set it; .ci/run does)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test because service ``name`` cannot be used here; under CI=true, fail it instead.

    Args:
        name: one of :data:`CI_SERVICES` (another name always skips: CI does not promise it).
        reason: what is missing and how to get it, shown in the skip or failure line.
    """
    if in_ci() and name in CI_SERVICES:
        pytest.fail(f"CI provides {name}, but here it cannot be used: {reason}", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    """The headless-capable Chromium on PATH (Debian: chromium; Ubuntu/others: chromium-browser, google-chrome)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pcam-jpg").is_dir():
        require_service("shared-data", f"real PCam data not found at {SHARED_DATA} (set PCAMLAB_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny-tensor tests run faster and steadier on one thread, above all on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
