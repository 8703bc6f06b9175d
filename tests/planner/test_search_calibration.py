"""The search space contains what experts ran: on the cheap calibration rows, the searched plan is predicted at
least as fast as the published configuration under the same inputs, and that configuration is a row of
candidates.csv. (Every row: bench/search_speed.py.)"""

from __future__ import annotations

import csv
import io

import pytest

from planner.cluster_spec import resolve_cluster
from planner.cost.calibration import cost_model_for, load_runs, predict
from planner.search.outputs import candidates_csv
from planner.search.solver import SearchOptions, search
from planner.search.space import SearchSpace

CHEAP_ROWS = ("KOR22-T5-22B", "MLM21-T1-01", "MLM21-T1-02")
"""The rows whose full search takes a few seconds here (8 to 64 GPUs)."""


@pytest.mark.parametrize("row_id", CHEAP_ROWS)
def test_search_beats_or_matches_the_published_configuration(row_id: str) -> None:
    row = next(r for r in load_runs() if r.id == row_id)
    published = predict(row)
    result = search(SearchSpace(row.model, resolve_cluster(row.cluster, gpus=row.num_gpus), row.global_batch),
                    cost_model_for(row), SearchOptions(time_limit_s=600))
    assert not result.stats.timed_out
    assert result.best.estimate.step_time_s <= published.estimate.step_time_s * (1 + 1e-9)
    text = candidates_csv(result, float(result.best.estimate.capacity_bytes), row.model)
    names = {r["name"] for r in csv.DictReader(io.StringIO(text))}
    assert published.estimate.config.name in names
