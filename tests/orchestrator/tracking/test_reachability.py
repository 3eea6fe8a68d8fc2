"""Fail-fast checks (orchestrator.tracking.reachability) against a real store and a port nothing listens on."""

from __future__ import annotations

import re

import pytest

from orchestrator.tracking import Tracker, TrackingUnavailable


def test_check_reachable_fails_fast_naming_the_uri(store, unreachable, tmp_path):
    Tracker.check_reachable(store["uri"])
    with pytest.raises(TrackingUnavailable, match=re.escape(unreachable)):
        Tracker.check_reachable(unreachable, timeout_s=2)
    (tmp_path / "a_file").write_text("")
    bad_sqlite = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    with pytest.raises(TrackingUnavailable, match=re.escape(bad_sqlite)):
        Tracker.check_reachable(bad_sqlite)
    file_store = f"file://{tmp_path / 'mlruns'}"
    with pytest.raises(TrackingUnavailable, match=re.escape(file_store)):
        Tracker.check_reachable(file_store)
