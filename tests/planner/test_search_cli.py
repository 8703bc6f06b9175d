"""`python -m planner search` end to end: files, JSON, launch lines, impossible requests, CPU plans."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from planner.cli import main
from planner.plan import Plan
from planner.search.outputs import CSV_COLUMNS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["search", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_summary_and_files(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "--model", "gpt-1.7b", "--cluster", "dgx-a100-80gb", "--gpus", "16",
                         "--global-batch", "64", "--out", str(out_dir), "--json", "--fix", "pp=2")
    assert code == 0, err
    d = json.loads(out)
    for k in ("step_time_s", "tflops_per_gpu", "mfu", "peak_memory_bytes"):
        assert isinstance(d[k], float) and d[k] > 0
    deg = d["degrees"]
    for k in ("dp", "tp", "pp", "ep", "micro_batch", "schedule", "zero", "recompute", "stage_layers", "grad_sync",
              "compression"):
        assert k in deg
    assert deg["pp"] == 2 and deg["dp"] * deg["tp"] * deg["pp"] == 16 and sum(deg["stage_layers"]) == 24
    assert d["peak_memory_bytes"] <= d["capacity_bytes"]

    plan = Plan.load(out_dir / "plan.json")  # digest and stage table checked on load
    assert plan.config.name == d["name"] and plan.predicted["step_time_s"] == pytest.approx(d["step_time_s"])
    assert plan.provenance["search"]["evaluated"] > 0
    assert plan.provenance["command"].startswith("python -m planner search --model gpt-1.7b --cluster dgx-a100-80gb "
                                                 "--gpus 16 --global-batch 64 --seq 2048 --fix pp=2")
    assert [s.pp_rank for s in plan.stages] == [plan.config.chunk_to_pp_rank(c, 2, plan.config.schedule)
                                                for c in range(plan.config.num_chunks)]

    csv = pd.read_csv(out_dir / "candidates.csv")
    assert list(csv.columns) == list(CSV_COLUMNS)
    assert csv.iloc[0]["rank"] == 1 and csv.iloc[0]["name"] == d["name"] and csv.iloc[0]["status"] == "ok"
    assert set(csv["status"]) <= {"ok", "infeasible", "pruned"}
    assert (csv.loc[csv.status != "ok", "reason"].str.len() > 0).all(), "every rejected row says why"
    assert csv["count"].sum() >= plan.provenance["search"]["enumerated"]

    torchrun = (out_dir / "launch_torchrun.sh").read_text()
    assert "torchrun --nnodes 2 --nproc-per-node 8" in torchrun and "-m runtime train --plan plan.json" in torchrun
    assert "--rdzv-endpoint" in torchrun
    sbatch = (out_dir / "launch.sbatch").read_text()
    assert "#SBATCH --nodes=2" in sbatch and "#SBATCH --gpus-per-node=8" in sbatch and "srun torchrun" in sbatch
    assert not list(tmp_path.glob(".*")), "no staging leftovers"


def test_table_output(tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "8", "--seq", "4096",
                         "--global-batch", "32", "--out", str(tmp_path / "t"), "--top", "3", "--tokens", "1e9",
                         "--fix", "tp=1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "plan", "step"]
    assert lines[1].split()[0] == "1" and lines[1].split()[1].startswith("tp1_pp")
    assert any(l.startswith("chosen: tp1_") for l in lines)
    assert any("memory per pipeline rank" in l for l in lines) and any("training 1e+09 tokens" in l for l in lines)
    assert any(l.startswith("searched ") for l in lines)
    files = lines[lines.index("files:") + 1:]
    assert {Path(f.strip()).name for f in files} >= {"plan.json", "candidates.csv", "launch_torchrun.sh",
                                                     "launch.sbatch"}


@pytest.mark.parametrize("argv,needle", [
    (["--model", "llama3.1-405b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "64"], "does not fit"),
    (["--model", "llama3.1-8b", "--cluster", "cpu", "--gpus", "37", "--global-batch", "64"], "world size 37"),
    (["--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "37", "--fix", "pp=1"],
     "global batch 37"),
    (["--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "8", "--fix", "tp=3"], "no tp x pp x dp"),
    (["--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "8", "--fix", "bogus=1"], "unknown dimension"),
])
def test_impossible_requests_exit_2_and_leave_nothing(tmp_path: Path, capsys, argv, needle) -> None:
    out_dir = tmp_path / "reports" / "x"
    code, out, err = run(capsys, *argv, "--out", str(out_dir))
    assert code == 2
    assert needle in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out_dir.exists()
    parent = out_dir.parent
    assert not parent.exists() or not any(parent.iterdir()), "nothing partial left behind"


def test_failed_run_keeps_an_earlier_run(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "keep"
    out_dir.mkdir()
    (out_dir / "plan.json").write_text("earlier")
    code, _, _ = run(capsys, "--model", "llama3.1-405b", "--cluster", "dgx-h100", "--gpus", "8", "--out", str(out_dir))
    assert code == 2 and (out_dir / "plan.json").read_text() == "earlier"


@pytest.mark.parametrize("argv,degrees", [
    (["--model", "tiny-llama", "--gpus", "8", "--fix", "dp=2", "--fix", "tp=2", "--fix", "pp=2"],
     {"dp": 2, "tp": 2, "pp": 2, "ep": 1}),
    (["--model", "tiny-moe", "--gpus", "4", "--fix", "dp=2", "--fix", "pp=2", "--fix", "ep=2"],
     {"dp": 2, "tp": 1, "pp": 2, "ep": 2}),
])
def test_cpu_plans_are_runnable_shapes(tmp_path: Path, capsys, argv, degrees) -> None:
    out_dir = tmp_path / "cpu"
    code, out, err = run(capsys, *argv, "--cluster", "cpu", "--out", str(out_dir))
    assert code == 0, err
    plan = Plan.load(out_dir / "plan.json")
    c = plan.config
    assert {"dp": c.dp, "tp": c.tp, "pp": c.pp, "ep": c.ep} == degrees
    assert plan.cluster.backend == "gloo" and c.schedule in ("gpipe", "1f1b")
    assert c.global_batch_size % (c.dp * c.micro_batch_size) == 0 and c.num_micro_batches >= c.pp
    if plan.model.is_moe:
        assert c.zero_stage == 0 and len(plan.expert_placement) == 2
    assert "torchrun --nnodes 1 --nproc-per-node" in (out_dir / "launch_torchrun.sh").read_text()
    assert "--cpus-per-task" in (out_dir / "launch.sbatch").read_text()


def test_default_request_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    """No arguments: the documented built-in default (Llama 3.1 70B, 64 H100, batch 512 x 8192) into reports/."""
    monkeypatch.chdir(tmp_path)
    code = main([])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = Plan.load(tmp_path / "reports" / "llama3.1-70b-dgx-h100-64" / "plan.json")
    assert plan.model.name == "llama3.1-70b" and plan.config.world_size == 64
    assert plan.config.global_batch_size == 512 and plan.config.seq_len == 8192
    assert "chosen: " + plan.config.name in out
