"""Checkpoint faults on forked gloo ranks (fast): a rank killed while a checkpoint is being committed,
resume sees every sample exactly once, and a checkpoint cannot execute code when it is loaded.

Sample accounting: every rank records the global sample indices its loader reads. The committed
trajectory is what the last complete checkpoint saw plus what the resumed run read: it must be the
uninterrupted run's samples, each exactly once (a replayed uncommitted step is not a repeat).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planner.errors import PlannerError
from runtime import checkpoint
from runtime.local_launch import LaunchError, run_ranks
from tests.reliability.train_helpers import (GLOBAL_BATCH, STEPS, checkpoint_tensors, indices, train_recording,
                                            write_plan)


def test_kill_during_checkpoint_commit_then_resume(tmp_path, reference_run) -> None:
    plan_path, ref_dir, ref_logs = reference_run.plan_path, reference_run.checkpoints, reference_run.sample_logs
    run_dir, logs1, logs2 = tmp_path / "run", tmp_path / "logs1", tmp_path / "logs2"
    logs1.mkdir()
    logs2.mkdir()

    # Rank 1 dies after the data of the step-4 checkpoint is written, before it is committed.
    with pytest.raises(LaunchError, match="killed by signal 9"):
        run_ranks(train_recording, 2, str(plan_path), str(run_dir), str(logs1), STEPS, timeout_s=180,
                  env={"HYBRIDPLAN_FAULT": "kill:rank=1:step=4:point=checkpoint"})
    assert checkpoint.latest(run_dir).name == "step_00000002"
    assert not (run_dir / "step_00000004").exists(), "an uncommitted checkpoint must not look complete"
    run_ranks(train_recording, 2, str(plan_path), str(run_dir), str(logs2), STEPS, timeout_s=180)
    assert sorted(p.name for p in run_dir.iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]

    for rank in range(2):
        ref = indices(ref_logs, rank)
        first, resumed = indices(logs1, rank), indices(logs2, rank)
        per_step = GLOBAL_BATCH // 2
        committed = first[: 2 * per_step] + resumed  # the step-2 checkpoint holds the first two steps
        assert committed == ref, (rank, committed, ref)
        assert len(set(committed)) == len(committed) == STEPS * per_step
        assert resumed[0] == 2 * GLOBAL_BATCH + rank * per_step  # resumed exactly at the checkpointed position

    ref_t = checkpoint_tensors(checkpoint.latest(ref_dir), tmp_path)
    got_t = checkpoint_tensors(checkpoint.latest(run_dir), tmp_path)
    assert all(torch.equal(ref_t[k], got_t[k]) for k in ref_t)


# --- a checkpoint must not execute code when loaded ------------------------------------------------
# builtins.open(MARKER, 'w') as a protocol-0 pickle: creates a file if the loader unpickles freely.
def _trap(marker: Path) -> bytes:
    return b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."


def _engine_and_checkpoint(tmp_path: Path):
    from planner.plan import Plan
    from runtime.engine import Engine, RunOptions

    plan = write_plan(tmp_path / "plan1.json", dp=1)
    engine = Engine(Plan.load(tmp_path / "plan1.json"), RunOptions())
    engine.train_step()
    path = checkpoint.save(engine, tmp_path / "ckpt")
    assert plan.config.world_size == 1
    return engine, path


def test_booby_trapped_checkpoint_does_not_run_code(tmp_path) -> None:
    """DCP's .metadata is a pickle; the runtime used to load it with DCP's FileSystemReader (a plain pickle.load),
    so a crafted checkpoint ran code. Reported by this suite; the runtime now reads a JSON copy (runtime.dcp_safe)."""
    engine, path = _engine_and_checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    (path / ".metadata").write_bytes(_trap(marker))
    try:
        checkpoint.load(engine, path)
    except PlannerError:
        pass
    except BaseException:  # noqa: BLE001 - DCP's CheckpointException is a BaseException; a traceback fails too,
        assert not marker.exists(), "loading the checkpoint executed code from its .metadata"  # but first: code ran?
        raise
    assert not marker.exists(), "loading the checkpoint executed code from its .metadata"
