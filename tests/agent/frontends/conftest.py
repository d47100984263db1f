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


@pytest.fixture
def term(tmp_path):
    """Terminal chats in a pty (test_repl.Term), stopped after the test: `term(script, *flags)`."""
    pytest.importorskip("pexpect")
    from test_repl import Term

    terms = []

    def start(script, *flags):
        terms.append(Term(tmp_path, script, *flags))
        return terms[-1]

    yield start
    for t in terms:
        if t.child.isalive():
            t.child.terminate(force=True)
