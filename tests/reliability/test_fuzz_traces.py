"""Fuzz measured traces, the input of `compare` and `rebalance`: a trace that does not match its plan,
or breaks the shared schema, is refused in one line; an accepted one yields finite, non-negative times."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from planner.commands.compare import comparison
from planner.measured import stage_times
from planner.plan import Plan
from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import feed, fuzz_settings
from tests.reliability.strategies import combine, mutations

TARGETS = {"trace": 450}
# Formerly a bug in planner/trace_schema.py (math.isfinite(10**400) raised OverflowError); fixed, and
# test_trace_huge_timestamp in test_input_regressions.py keeps it fixed.
KNOWN: tuple[str, ...] = ()


def read_trace(plan: Plan, predicted: dict, doc) -> list:
    stages = stage_times(doc, plan.config.degrees, "measured.json")
    result = comparison(plan, predicted, doc, "measured.json")
    for s in stages:
        for v in (s.step_s, s.compute_s, s.comm_s, s.bubble_s, s.optimizer_s, *s.chunk_compute_s.values()):
            assert math.isfinite(v) and v >= 0, s
    assert len(result["stages"]) == plan.config.pp
    return stages


@fuzz_settings(max_examples=135)
@given(st.data())
def test_fuzz_measured_traces(data) -> None:
    plan_doc, trace = data.draw(st.sampled_from(bases.trace_cases()))
    plan = Plan.from_dict(plan_doc)
    paths = fuzzlib.all_paths(trace)
    hot = [p for p in paths if p[0] == "traceEvents" and len(p) >= 3] or paths
    muts = data.draw(mutations(trace, paths=hot if data.draw(st.integers(0, 4)) else paths, max_size=4))
    for m in muts:
        feed("trace", read_trace, plan, trace, m.apply(trace), input_repr=m, known_bug_in=KNOWN)
    feed("trace", read_trace, plan, trace, combine(trace, muts), input_repr=muts, known_bug_in=KNOWN)


def test_trace_count() -> None:
    assert fuzzlib.total("trace") >= TARGETS["trace"], dict(fuzzlib.COUNTS["trace"])
