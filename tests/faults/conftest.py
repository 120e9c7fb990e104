"""Fixtures of the fault-injection suite: one pristine workspace per session, a fresh copy per test."""

from __future__ import annotations

import pytest

from tests.faults.workspace import Workspace, build_workspace


@pytest.fixture(scope="session")
def _pristine(tmp_path_factory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("faults") / "ws")


@pytest.fixture
def ws(_pristine, tmp_path) -> Workspace:
    return _pristine.copy(tmp_path / "ws")
