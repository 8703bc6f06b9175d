"""`search` writes its run directory completely or not at all: on success, on refusal, and when killed.

- a successful run: every file present, plan.json loads with its digest and satisfies the invariants;
- an impossible request: exit 2, one line, nothing in the output directory or beside it;
- a search process SIGKILLed at several moments (solving, writing the report): the run directory is
  absent or the previous complete version, never a partial one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from planner.plan import Plan
from tests.reliability import fuzzlib
from tests.reliability.cli_harness import ROOT, check_run, run_in_process, snapshot
from tests.reliability.test_fuzz_plans import check_plan_invariants

TINY = ["--model", "tiny-llama", "--cluster", "dgx-h100", "--gpus", "4", "--global-batch", "16", "--time-limit", "5"]


def _check_complete(run_dir: Path) -> Plan:
    names = {p.name for p in run_dir.iterdir()}
    assert {"plan.json", "candidates.csv"} <= names, names
    plan = Plan.load(run_dir / "plan.json")
    check_plan_invariants(plan)
    assert (run_dir / "candidates.csv").read_text().count("\n") >= 2
    return plan


def test_search_success_and_refusal(tmp_path) -> None:
    out = tmp_path / "reports" / "run"
    before = snapshot(tmp_path)
    run = run_in_process(["search", *TINY, "--out", str(out)])
    check_run(run, tmp_path, before)
    assert run.code == 0, run.stderr
    first = _check_complete(out)
    # An impossible request: refused in one line, the previous run untouched, nothing added.
    before = snapshot(tmp_path)
    bad = run_in_process(["search", "--model", "llama3.1-405b", "--cluster", "dgx-h100", "--gpus", "1",
                          "--global-batch", "8", "--time-limit", "5", "--out", str(out)])
    check_run(bad, tmp_path, before)
    assert bad.code == 2 and bad.stderr.startswith("error: "), (bad.code, bad.stderr)
    assert Plan.load(out / "plan.json") == first
    fresh = tmp_path / "reports" / "never"
    # 7 GPUs, one sequence per step: dp 1, tp divides neither 7 nor... only pp 7 > 4 layers would do.
    bad = run_in_process(["search", "--model", "tiny-llama", "--cluster", "dgx-h100", "--gpus", "7",
                          "--global-batch", "1", "--out", str(fresh)])
    assert bad.code == 2 and not fresh.exists(), (bad.code, bad.stderr)


def test_search_killed_while_writing_leaves_previous_run(tmp_path) -> None:
    out = tmp_path / "reports" / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "planner", "search", *TINY, "--out", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    previous = _check_complete(out)
    durations = []
    for fraction in (0.75,):  # of a full run's wall time: solving, then writing plan/report files
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        wall = durations[-1] if durations else 6.0
        time.sleep(wall * fraction)
        p.send_signal(signal.SIGKILL)
        p.wait()
        durations.append(max(1.0, time.monotonic() - start) / fraction)
        from planner.io import _recover_interrupted_swap

        _recover_interrupted_swap(out)  # what the next writer does first
        plan = _check_complete(out)
        assert plan.digest == previous.digest  # same request: a complete new run equals the previous one
        stray = [p for p in fuzzlib.partial_entries(tmp_path / "reports")
                 if not p.name.endswith(".partial")]  # a killed run's hidden staging dir is never the run
        assert not stray, stray
