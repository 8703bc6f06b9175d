"""Reliability suite: print the fuzz counts at the end of the session (and write them for bench/)."""

from __future__ import annotations

import os

from tests.reliability import fuzzlib


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not fuzzlib.COUNTS:
        return
    terminalreporter.section("reliability fuzz: generated inputs per category")
    for line in fuzzlib.format_stats():
        terminalreporter.write_line(line)
    path = os.environ.get(fuzzlib.STATS_ENV)
    if path:
        fuzzlib.write_stats(path)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted 2-rank training run (forked gloo ranks), shared by the kill/resume tests."""
    from runtime.local_launch import run_ranks
    from tests.reliability.train_helpers import STEPS, Reference, train_recording, write_plan

    d = tmp_path_factory.mktemp("reference")
    ref = Reference(d / "plan.json", d / "checkpoints", d / "samples")
    write_plan(ref.plan_path)
    ref.sample_logs.mkdir()
    run_ranks(train_recording, 2, str(ref.plan_path), str(ref.checkpoints), str(ref.sample_logs), STEPS,
              timeout_s=180)
    return ref
