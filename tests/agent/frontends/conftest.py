"""Fixtures shared by the front-end tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def tmpdir_(tmp_path, monkeypatch) -> Path:
    """Temporary workspaces made here, where the test can look for them."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d
