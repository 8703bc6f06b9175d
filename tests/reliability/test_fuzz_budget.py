"""The fuzz bar of issue #9: at least 10,000 generated inputs per run of this suite.

Each fuzz file asserts that it fed at least its own TARGETS (test_*_count); this checks that the targets
add up to the bar, so the suite cannot quietly shrink below it.
"""

from __future__ import annotations

from tests.reliability import (test_estimate_memory, test_fuzz_cli, test_fuzz_files, test_fuzz_checkpoints, test_fuzz_plans,
                               test_fuzz_profile, test_fuzz_runtime_cli, test_fuzz_specs, test_fuzz_traces,
                               test_plan_invariants)

BAR = 10_000


def test_targets_add_up_to_the_bar() -> None:
    targets = {}
    for mod in (test_fuzz_checkpoints, test_fuzz_specs, test_fuzz_plans, test_fuzz_profile, test_fuzz_files, test_fuzz_cli, test_fuzz_traces,
                test_fuzz_runtime_cli, test_estimate_memory, test_plan_invariants):
        targets.update(mod.TARGETS)
    assert sum(targets.values()) >= BAR, targets
