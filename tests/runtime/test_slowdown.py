"""`--slow-stage S:FACTOR` (runtime/slowdown.py): parsing, the hooks' sleeps, and the load-balancing loop it
exists to test: a slowed stage 0 measured by the runtime makes `planner rebalance` move layers off it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from planner.cli import main as planner_main
from planner.errors import EXIT_INVALID, ConfigError
from planner.model_presets import PRESETS
from runtime import slowdown
from runtime.cli import main as runtime_main
from runtime.model import build_full_model
from runtime.slowdown import SlowStage
from tests.planner.test_compare import make_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text,stage,factor", [("0:3", 0, 3.0), (" 1:2.5 ", 1, 2.5), ("7:1.01", 7, 1.01)])
def test_parse_accepts(text: str, stage: int, factor: float) -> None:
    assert SlowStage.parse(text) == SlowStage(stage, factor)


@pytest.mark.parametrize("text,why", [("x", "STAGE:FACTOR"), ("0", "STAGE:FACTOR"), ("a:3", "not an integer"),
                                      ("1.5:3", "not an integer"), ("-1:3", ">= 0"), ("0:abc", "not a number"),
                                      ("0:1", "> 1"), ("0:0.5", "> 1"), ("0:inf", "finite"), ("0:nan", "finite"),
                                      ("0:", "not a number")])
def test_parse_rejects_with_one_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="--slow-stage") as info:
        SlowStage.parse(text)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_constructor_validates_too() -> None:
    with pytest.raises(ConfigError, match="factor"):
        SlowStage(0, 1.0)
    with pytest.raises(ConfigError, match="stage"):
        SlowStage(-1, 2.0)


def test_stage_must_exist_in_the_plan() -> None:
    SlowStage(1, 2.0).check(2)
    with pytest.raises(ConfigError, match=r"^--slow-stage 3: plan has 2 pipeline stages \(0\.\.1\)$"):
        SlowStage(3, 2.0).check(2)
    with pytest.raises(ConfigError, match=r"plan has 1 pipeline stage \(0\.\.0\)"):
        SlowStage(1, 2.0).check(1)


def _fake_engine(pp: int, pp_rank: int, model) -> SimpleNamespace:
    return SimpleNamespace(plan=SimpleNamespace(config=SimpleNamespace(pp=pp)), topo=SimpleNamespace(pp_rank=pp_rank),
                           local_models=lambda: [model])


def test_blocks_of_the_slowed_stage_sleep_forward_and_twice_in_backward(monkeypatch) -> None:
    spec = PRESETS["tiny-llama"]
    model = build_full_model(spec, seed=0, dtype=torch.float32, device=torch.device("cpu"))
    slept: list[float] = []
    monkeypatch.setattr(slowdown.time, "sleep", slept.append)  # record, do not wait
    assert SlowStage(0, 3.0).install(_fake_engine(2, 1, model)) == []  # another stage: nothing hooked
    handles = SlowStage(1, 3.0).install(_fake_engine(2, 1, model))
    assert len(handles) == 2 * spec.num_layers
    ids = torch.randint(0, spec.vocab_size, (2, 16))
    out = model(ids)
    forward = list(slept)
    assert len(forward) == spec.num_layers and all(s >= 0 for s in forward)
    out.float().pow(2).mean().backward()
    backward = slept[len(forward):]
    # one sleep per block when its backward starts (last block first), twice its forward sleep
    assert backward == pytest.approx([2.0 * s for s in reversed(forward)])
    for h in handles:
        h.remove()
    slept.clear()
    model(ids)
    assert slept == []


def test_cli_bad_slow_stage_is_one_line_exit_2(tmp_path: Path) -> None:
    path = make_plan(pp=2, gb=4).save(tmp_path / "plan.json")
    proc = subprocess.run([sys.executable, "-m", "runtime", "train", "--plan", str(path), "--steps", "1",
                           "--slow-stage", "x"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INVALID
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--slow-stage" in proc.stderr and "STAGE:FACTOR" in proc.stderr


def test_cli_stage_beyond_the_plan_is_refused_before_ranks_start(tmp_path: Path, capsys) -> None:
    path = make_plan(pp=2, gb=4).save(tmp_path / "plan.json")
    assert runtime_main(["train", "--plan", str(path), "--steps", "1", "--slow-stage", "3:2"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err == "error: --slow-stage 3: plan has 2 pipeline stages (0..1)\n"


@pytest.mark.slow
def test_slowed_stage_is_rebalanced_off(tmp_path: Path, capsys) -> None:
    """Behaviour, not timing: stage 0 run 4x slower by the runtime measures slow, and the rebalance from that
    measured trace gives stage 0 fewer layers."""
    plan = make_plan(pp=2, gb=4)  # tiny-llama, 4 layers, 2 per stage, 4 micro-batches
    path = plan.save(tmp_path / "plan.json")
    trace, new = tmp_path / "trace.json", tmp_path / "new.json"
    assert runtime_main(["train", "--plan", str(path), "--steps", "3", "--slow-stage", "0:4", "--trace",
                         str(trace)]) == 0
    out = capsys.readouterr().out
    assert "pipeline stage 0 runs 4x slower" in out and "step 3 | loss" in out
    assert planner_main(["rebalance", "--plan", str(path), "--measured", str(trace), "--out", str(new), "--json",
                         "--time-limit", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    old_layers = plan.config.layers_per_chunk(plan.model)
    assert summary["stage_layers_before"] == list(old_layers)
    assert summary["rank_speeds"][0] > summary["rank_speeds"][1]
    assert summary["stage_layers_after"][0] < old_layers[0]
    assert json.loads(new.read_text())["config"]["stage_layers"][0] < old_layers[0]
