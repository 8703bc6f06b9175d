"""Shared test configuration: paths to the shared data and a temporary reports directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HF_CONFIGS = SHARED / "data" / "hf-configs"


@pytest.fixture
def hf_configs_dir() -> Path:
    if not HF_CONFIGS.is_dir():  # CI lays ../shared beside the clone; a user's clone may not have it
        pytest.fail(f"shared data not found at {HF_CONFIGS}")
    return HF_CONFIGS
