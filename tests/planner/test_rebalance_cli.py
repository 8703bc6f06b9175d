"""`planner rebalance`: a slow pipeline stage in a measured trace moves layers off it in a valid new plan."""

from __future__ import annotations

import json

from planner.cli import main
from planner.plan import Plan
from planner.trace_schema import save
from tests.planner.test_compare import gpipe_trace, make_plan


def test_slow_first_stage_gives_it_fewer_layers(tmp_path, capsys):
    plan = make_plan(pp=2, gb=4)
    plan.save(tmp_path / "plan.json")
    # stage 0 measures 3x slower per micro-batch than stage 1 (same predicted work: 2 layers each)
    save(tmp_path / "trace.json", gpipe_trace([0.03, 0.01], [0.06, 0.02], m=4, steps=3))
    rc = main(["rebalance", "--plan", str(tmp_path / "plan.json"), "--measured", str(tmp_path / "trace.json"),
               "--out", str(tmp_path / "new.json"), "--json", "--time-limit", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage_layers_before"] == [2, 2]
    assert summary["stage_layers_after"] == [1, 3]
    assert summary["rank_speeds"][0] > 2 * summary["rank_speeds"][1]
    assert summary["objective_after_s"] < summary["objective_before_s"]
    new = Plan.load(tmp_path / "new.json")
    assert new.config.stage_layers == (1, 3) and new.provenance["rebalance"]["from_plan"] == plan.config.name
    assert new.config.replace(stage_layers=()) == plan.config  # nothing else changed


def test_rebalance_refuses_single_stage(tmp_path, capsys):
    make_plan(pp=1, dp=2).save(tmp_path / "plan.json")
    save(tmp_path / "trace.json", gpipe_trace([0.01], [0.02], m=2, steps=1))
    rc = main(["rebalance", "--plan", str(tmp_path / "plan.json"), "--measured", str(tmp_path / "trace.json"),
               "--out", str(tmp_path / "new.json")])
    assert rc == 2 and "pp > 1" in capsys.readouterr().err
