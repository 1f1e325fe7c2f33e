"""Fixtures of the study tests: one tiny demo dataset per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation.data.demo import build_demo_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 px demo data: 8 photos, 8 style images, 8 reference images, 4 held-out photos."""
    root = tmp_path_factory.mktemp("data")
    build_demo_dataset(root, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
    return root
