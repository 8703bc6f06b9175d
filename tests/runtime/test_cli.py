"""`python -m runtime train|verify`: exit codes, the verify bar, trace and metrics files, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner import trace_schema
from planner.errors import EXIT_CHECK_FAILED, EXIT_INVALID
from runtime.cli import main
from tests.runtime.helpers import make_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_verify_passes_on_eight_process_dp2_tp2_pp2_tiny_llama(tmp_path: Path, capsys) -> None:
    plan = make_plan("tiny-llama", dp=2, tp=2, pp=2, micro_batch_size=1, global_batch_size=8, seq_len=32)
    path = plan.save(tmp_path / "plan.json")
    assert main(["verify", "--plan", str(path), "--steps", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    print(last)
    assert last.startswith("PASS: max |loss diff| = ") and "max |param diff| = " in last and "after step 3" in last
    loss_diff = float(last.split("max |loss diff| = ")[1].split()[0])
    param_diff = float(last.split("max |param diff| = ")[1].split()[0])
    assert loss_diff < 1e-9 and param_diff < 1e-9  # float64 default: reordered sums only


@pytest.mark.slow
def test_verify_past_tolerance_exits_4(tmp_path: Path, capsys) -> None:
    path = make_plan("tiny-llama", tp=2).save(tmp_path / "plan.json")
    # TP sums in another order: differences ~1e-16, far above an impossible 1e-300 tolerance
    rc = main(["verify", "--plan", str(path), "--steps", "1", "--param-tol", "1e-300"])
    captured = capsys.readouterr()
    assert rc == EXIT_CHECK_FAILED
    assert captured.out.strip().splitlines()[-1].startswith("FAIL: max |loss diff|")
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: verify failed")


def test_bad_plan_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--plan", str(tmp_path / "nope.json"), "--steps", "1"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("error: plan file not found") and err.count("\n") == 1
    bad = tmp_path / "plan.json"
    data = make_plan("tiny-llama", dp=2).to_dict()
    data["config"]["micro_batch_size"] = 1  # hand-edited, still consistent: the digest no longer matches
    bad.write_text(json.dumps(data))
    assert main(["train", "--plan", str(bad), "--steps", "1"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "inputs_digest does not match" in err and err.count("\n") == 1


@pytest.mark.slow
def test_train_writes_trace_metrics_checkpoints_and_resumes(tmp_path: Path, capsys) -> None:
    plan = make_plan("tiny-gpt", tp=2, pp=2, micro_batch_size=1, global_batch_size=4)
    path = plan.save(tmp_path / "plan.json")
    ck, trace, metrics = tmp_path / "ck", tmp_path / "trace.json", tmp_path / "metrics.json"
    args = ["train", "--plan", str(path), "--checkpoint-dir", str(ck), "--checkpoint-every", "2",
            "--trace", str(trace), "--metrics", str(metrics), "--lr", "1e-2"]
    assert main([*args, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "step 2 | loss" in out and "tok/s" in out and "chunk1.B=" in out
    events = trace_schema.events(trace_schema.load(trace))
    m = plan.config.num_micro_batches
    for rank in range(4):
        chunk = plan.stages[rank // 2].chunk  # pp rank = rank // tp
        for kind in ("F", "B"):
            mbs = {e.microbatch for e in events if e.rank == rank and e.kind == kind and e.chunk == chunk}
            assert mbs == set(range(m)), (rank, kind, mbs)
    steps = json.loads(metrics.read_text())["steps"]
    assert [s["step"] for s in steps] == [1, 2] and all(s["tokens_per_s"] > 0 for s in steps)
    assert (ck / "step_00000002").is_dir()
    assert main([*args, "--steps", "3", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 3 | loss" in out and "step 1 |" not in out


@pytest.mark.slow
def test_torchrun_smoke(tmp_path: Path) -> None:
    """One real torchrun launch (the GPU path uses the same entry point with NCCL)."""
    path = make_plan("tiny-llama", dp=2).save(tmp_path / "plan.json")
    metrics = tmp_path / "metrics.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "runtime",
         "train", "--plan", str(path), "--steps", "2", "--metrics", str(metrics)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads(metrics.read_text())["steps"]
    assert [s["step"] for s in steps] == [1, 2]
