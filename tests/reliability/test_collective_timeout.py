"""A hung collective is detected by a timeout and reported with the rank and the operation, not a silent hang.

Two gloo ranks (forked by runtime.local_launch); rank 1 stops responding before a collective that rank 0
enters. Three ways of noticing, each must name rank 1 and the operation in one line.
"""

from __future__ import annotations

import time

import pytest
import torch  # noqa: F401  (imported in the parent: forked ranks then start in ~0.1 s, not ~5 s)

from runtime import faults
from runtime.local_launch import LaunchError, run_ranks

HANG_S = 3.5
"""How long rank 1 'hangs' (longer than every timeout below, so rank 0 notices it first)."""


def _worker(pg_timeout_s: float, watch_timeout_s: float, abort: bool) -> str:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=faults.process_group_timeout(pg_timeout_s))
    wd = faults.CollectiveWatchdog.for_default_group(watch_timeout_s, grace_s=0.5, abort=abort)
    with wd.op("warm-up barrier"):
        dist.barrier()
    if dist.get_rank() == 1:
        time.sleep(HANG_S)  # stops responding: never enters the all_reduce
        return "hung"
    try:
        with wd.op("step 3 grad all_reduce"):
            dist.all_reduce(torch.ones(8))
    except faults.CollectiveTimeoutError as exc:
        return str(exc)
    return "completed"


def test_gloo_timeout_names_rank_and_operation() -> None:
    values = run_ranks(_worker, 2, 1.0, 60.0, False, init_process_group=False, timeout_s=60).values
    msg = values[0]
    assert values[1] == "hung"
    assert "\n" not in msg
    assert msg.startswith("collective timeout: rank 0 waited"), msg
    assert "'step 3 grad all_reduce'" in msg and "never entered by rank 1" in msg, msg
    assert "last: #1 'warm-up barrier' (completed)" in msg, msg
    assert faults.CollectiveTimeoutError.exit_code == faults.EXIT_COLLECTIVE_TIMEOUT


def test_watchdog_thread_ends_a_hang_without_backend_timeout() -> None:
    """The backend would wait 60 s; the watchdog ends rank 0 after ~1.5 s with one line and exit code 5."""
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_ranks(_worker, 2, 60.0, 1.0, True, init_process_group=False, timeout_s=60)
    assert time.monotonic() - start < 30
    log0 = err.value.logs[0]
    lines = [l for l in log0.splitlines() if l.startswith("error: collective timeout")]
    assert len(lines) == 1, log0
    assert "rank 0 waited" in lines[0] and "'step 3 grad all_reduce'" in lines[0]
    assert "never entered by rank 1" in lines[0]
    assert f"exit {faults.EXIT_COLLECTIVE_TIMEOUT}" in str(err.value)
    assert "Traceback" not in log0


def _barrier_worker() -> list[int]:
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=faults.process_group_timeout(30))
    if dist.get_rank() == 1:
        time.sleep(2.5)
        return []
    return faults.find_unresponsive_ranks(1.0)


def test_monitored_barrier_lists_unresponsive_ranks() -> None:
    values = run_ranks(_barrier_worker, 2, init_process_group=False, timeout_s=60).values
    assert values[0] == [1]


def test_fault_spec_parsing() -> None:
    env = {"HYBRIDPLAN_FAULT": "kill:rank=1:step=3"}
    inj = faults.FaultInjector.from_env(1, env)
    assert inj.armed("step", 3, env) and not inj.armed("step", 2, env) and not inj.armed("checkpoint", 3, env)
    assert not inj.armed("step", 3, {**env, "TORCHELASTIC_RESTART_COUNT": "1"})  # the restarted job runs through
    assert not faults.FaultInjector.from_env(0, env).armed("step", 3, env)
    assert not faults.FaultInjector.from_env(0, {}).armed("step", 0, {})
    for bad in ("explode:step=1", "kill:rank=1", "kill:step=x", "kill:step=1:when=2", "hang:step=1:point=io"):
        with pytest.raises(faults.SpecError):
            faults.FaultInjector.from_env(0, {"HYBRIDPLAN_FAULT": bad})


def test_timeout_from_env(monkeypatch) -> None:
    monkeypatch.setenv(faults.TIMEOUT_ENV, "12.5")
    assert faults.timeout_s_from_env() == 12.5
    for bad in ("-3", "0", "soon", "inf"):
        monkeypatch.setenv(faults.TIMEOUT_ENV, bad)
        with pytest.raises(faults.SpecError, match=faults.TIMEOUT_ENV):
            faults.timeout_s_from_env()


def _train_worker(plan_path: str) -> int:
    from planner.plan import Plan
    from runtime.engine import RunOptions
    from runtime.train import TrainConfig, train

    train(Plan.load(plan_path), RunOptions(), TrainConfig(steps=6))
    return 0


def test_runtime_names_a_rank_that_hangs_mid_training(tmp_path) -> None:
    """Through the real training loop: rank 1 stops responding before step 3; rank 0 is ended by the
    watchdog with one line naming rank 1 and the step, and exit code 5, instead of waiting for ever."""
    from tests.reliability.train_helpers import write_plan

    write_plan(tmp_path / "plan.json")
    env = {"HYBRIDPLAN_FAULT": "hang:rank=1:step=2", faults.TIMEOUT_ENV: "1.5"}
    with pytest.raises(LaunchError) as err:
        run_ranks(_train_worker, 2, str(tmp_path / "plan.json"), env=env, timeout_s=120)
    log0 = err.value.logs[0]
    lines = [l for l in log0.splitlines() if "collective timeout" in l]
    assert len(lines) == 1, log0[-3000:]
    assert lines[0].startswith("error: collective timeout: rank 0 waited") and "'step 3'" in lines[0], lines[0]
    assert "never entered by rank 1 (last: #2 'step 2' (completed))" in lines[0], lines[0]
    assert f"rank 0 of 2 failed (exit {faults.EXIT_COLLECTIVE_TIMEOUT})" in str(err.value).splitlines()[0]
    assert "fault injection: hang on rank 1 at step 2" in err.value.logs[1]
