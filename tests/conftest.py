"""Shared test fixtures.

Reference fixtures live in ``../shared`` beside the checkout (development and CI only; a user's clone
does not have them). Tests that need them skip with a clear reason when they are absent. Override the
location with ``DR2STUDIO_SHARED``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DR2STUDIO_SHARED", REPO.parent / "shared"))

# One intra-op thread: tiny test models gain nothing from more, and Ray workers share the cores.
torch.set_num_threads(int(os.environ.get("DR2STUDIO_TEST_THREADS", "1")))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (it ships only with the development checkout's ../shared)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def tiny_ref_dir() -> Path:
    """The random-weight checkpoint in the released layout (``../shared/reference/dr2-tiny``)."""
    return _need(SHARED / "reference" / "dr2-tiny")


@pytest.fixture(scope="session")
def tiny_reference(tiny_ref_dir: Path) -> dict:
    return torch.load(tiny_ref_dir / "reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def g2p_ref_dir() -> Path:
    return _need(SHARED / "reference" / "g2p")
