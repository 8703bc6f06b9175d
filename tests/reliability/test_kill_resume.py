"""Kill one rank with SIGKILL mid-training under `torchrun --max-restarts`; the job restarts from the last
complete checkpoint and ends with parameters bit-identical to an uninterrupted run of the same steps.

Deterministic CPU run: tiny-gpt, 2 gloo processes (dp 2), fp32, AdamW, 6 steps, a checkpoint every 2.
The fault (runtime.faults, HYBRIDPLAN_FAULT) kills rank 1 before step index 3 of the first attempt, so
the last complete checkpoint is step 2 and steps 3..6 are re-run by the second attempt. The reference
(conftest.reference_run) runs the same `train()` on forked ranks (runtime.local_launch), without the fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from runtime import checkpoint
from tests.reliability.train_helpers import EVERY, GLOBAL_BATCH, STEPS, checkpoint_tensors

ROOT = Path(__file__).resolve().parents[2]
KILL_BEFORE_STEP = 3


def torchrun_train(plan_path: Path, ckpt_dir: Path, metrics: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
           "-m", "runtime", "train", "--plan", str(plan_path), "--steps", str(STEPS), "--checkpoint-dir",
           str(ckpt_dir), "--checkpoint-every", str(EVERY), "--resume", "auto", "--metrics", str(metrics)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_sigkill_one_rank_restart_resumes_bit_identical(tmp_path, reference_run) -> None:
    plan_path, ref_dir, run_dir = reference_run.plan_path, reference_run.checkpoints, tmp_path / "faulty"

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HYBRIDPLAN_FAULT": f"kill:rank=1:step={KILL_BEFORE_STEP}", "HYBRIDPLAN_COLLECTIVE_TIMEOUT_S": "60"}
    done = torchrun_train(plan_path, run_dir, tmp_path / "metrics.json", env)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    assert f"fault injection: kill on rank 1 at step {KILL_BEFORE_STEP}" in logs, logs[-4000:]
    assert "resumed from" in logs and "step_00000002" in logs, logs[-4000:]

    # Checkpoints: steps 2, 4, 6, all complete, nothing partial left; data position = steps x global batch.
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["step_00000002", "step_00000004", "step_00000006"], names
    for name in names:
        meta = checkpoint.read_meta(run_dir / name)
        assert meta["data"]["position"] == meta["step"] * GLOBAL_BATCH, meta["data"]
    # The resumed attempt ran exactly steps 3..6 (its metrics), none skipped, none repeated.
    steps = [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())["steps"]]
    assert steps == list(range(KILL_BEFORE_STEP, STEPS + 1)), steps

    ref = checkpoint_tensors(checkpoint.latest(ref_dir), tmp_path)
    got = checkpoint_tensors(checkpoint.latest(run_dir), tmp_path)
    assert set(ref) == set(got) and len(ref) > 4
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"not bit-identical after resume: {differ[:5]}"
    # The comparison has teeth: training moved the parameters between checkpoints.
    earlier = checkpoint_tensors(ref_dir / "step_00000004", tmp_path)
    assert any(not torch.equal(earlier[k], ref[k]) for k in ref if k.startswith("model") or "weight" in k)
