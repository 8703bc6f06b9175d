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
