"""`estimate` on random models, clusters and configurations: never a traceback, numbers that add up, and
a configuration that does not fit says by how many bytes per rank (exit 3)."""

from __future__ import annotations

import json
import math

from hypothesis import assume, given
from hypothesis import strategies as st

from planner.cost import CostModel
from tests.reliability import fuzzlib
from tests.reliability.cli_harness import run_in_process
from tests.reliability.fuzzlib import feed, fuzz_settings
from tests.reliability.strategies import clusters, configs_for, models

TARGETS = {"estimate": 250}


def check_estimate(cm: CostModel, config, est) -> None:
    assert math.isfinite(est.step_time_s) and est.step_time_s > 0
    assert 0 <= est.mfu <= 1.0 + 1e-9 and math.isfinite(est.tflops_per_gpu)
    assert len(est.memory_by_stage) == config.pp
    for s in est.memory_by_stage:
        for v in (s.weights_bytes, s.gradients_bytes, s.optimizer_bytes, s.activations_bytes, s.other_bytes):
            assert math.isfinite(v) and v >= 0
    assert est.peak_memory_bytes == max(s.total_bytes for s in est.memory_by_stage)
    assert est.capacity_bytes == cm.capacity_bytes < cm.cluster.device.memory_bytes
    assert est.fits == (est.peak_memory_bytes <= est.capacity_bytes)
    assert est.excess_bytes == max(0.0, est.peak_memory_bytes - est.capacity_bytes)
    mem = cm.memory(config)  # the cheap half the search prunes with must agree
    assert math.isclose(mem.peak_memory_bytes, est.peak_memory_bytes, rel_tol=1e-9)


@fuzz_settings(max_examples=TARGETS["estimate"])
@given(st.data())
def test_estimate_random_configurations(data) -> None:
    model = data.draw(models())
    cluster = data.draw(clusters())
    config = data.draw(configs_for(model, cluster.world_size))
    assume(config is not None)

    def estimate():
        cm = CostModel(model, cluster)
        return cm, cm.estimate(config)

    out = feed("estimate", estimate, input_repr=(model, cluster.name, cluster.world_size, config))
    if out.accepted:
        check_estimate(*out.value[:1], config, out.value[1])


def test_estimate_count() -> None:
    assert fuzzlib.total("estimate") >= TARGETS["estimate"] * 0.8, dict(fuzzlib.COUNTS["estimate"])


def test_does_not_fit_reports_bytes_per_rank_exit_3() -> None:
    argv = ["estimate", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "8",
            "--tp", "8", "--json"]
    run = run_in_process(argv)
    assert run.code == 3, (run.code, run.stderr)
    d = json.loads(run.stdout)
    excess = d["peak_memory_bytes"] - d["capacity_bytes"]
    assert excess > 0 and d["fits"] is False and math.isclose(d["excess_bytes"], excess)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: does not fit"), run.stderr
    assert f"by {excess:.0f} bytes per rank" in lines[0], (lines[0], excess)
    # The human-readable form says it too, and the memory it would need per stage is still printed.
    run = run_in_process(argv[:-1])
    assert run.code == 3 and "DOES NOT FIT" in run.stdout and "per rank" in run.stdout
