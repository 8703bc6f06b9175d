"""`python -m planner validate`: bars of issue #2 met, last line format, failure exit code."""

from __future__ import annotations

import json
import re

import pytest

from planner.cli import main
from planner.commands import validate as validate_cmd
from planner.cost.calibration import candidates, load_memory_rows, load_runs
from planner.errors import EXIT_CHECK_FAILED

LAST = re.compile(r"^time: mean abs error (\d+\.\d+)%, max (\d+\.\d+)% over (\d+) runs; "
                  r"memory: mean abs error (\d+\.\d+)% over (\d+) values$")


@pytest.fixture(scope="module")
def validate_json(tmp_path_factory):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["validate", "--json"])
    text = buf.getvalue()
    body, last = text.rsplit("\n", 2)[0], text.strip().splitlines()[-1]
    return rc, json.loads(body), last


def test_shipped_data_has_every_row():
    runs = load_runs()
    assert len(runs) == 29
    assert sum(r.group == "KOR22-T5" for r in runs) == 8
    assert len(load_memory_rows()) == 8


def test_bars_are_met_and_the_last_line_is_exact(validate_json):
    rc, data, last = validate_json
    assert rc == 0, data["failures"]
    m = LAST.match(last)
    assert m, last
    t_mean, t_max, n, mem_mean, mvals = float(m[1]), float(m[2]), int(m[3]), float(m[4]), int(m[5])
    assert n == 29 and mvals == 16
    assert t_mean <= 5.0 and t_max <= 10.0 and mem_mean <= 5.0
    assert data["korthikanti8"]["mean_abs_pct"] <= 3.65 and data["korthikanti8"]["max_abs_pct"] <= 8.87
    assert all(r["fits"] for r in data["runs"])


def test_unstated_knobs_are_enumerated_and_marked():
    row = next(r for r in load_runs() if r.id == "MCORE-H100-WS-05")
    assert set(row.unstated) >= {"micro-batch", "chunks", "recompute", "sp"}
    cfgs = list(candidates(row))
    assert len({c.micro_batch_size for c in cfgs}) > 1 and len({c.recompute for c in cfgs}) == 3
    stated = next(r for r in load_runs() if r.id == "KOR22-T5-175B")
    assert stated.unstated == () and len(list(candidates(stated))) == 1


def test_flop_conventions_convert_to_step_time():
    row = next(r for r in load_runs() if r.id == "MLM-README-GPT3-1024")
    assert row.to_time_s(row.published) == pytest.approx(32.0, rel=0.01)  # README: "around 32 seconds"
    kor = next(r for r in load_runs() if r.id == "KOR22-T5-175B")
    assert kor.to_time_s(13.75) == 13.75


def test_a_missed_bar_exits_4(monkeypatch, capsys):
    monkeypatch.setattr(validate_cmd, "MEMORY_MEAN_MAX_PCT", 0.0)
    monkeypatch.setattr(validate_cmd, "load_runs", lambda: load_runs()[20:22])
    assert main(["validate"]) == EXIT_CHECK_FAILED
    cap = capsys.readouterr()
    assert "check failed: memory" in cap.err
    assert LAST.match(cap.out.strip().splitlines()[-1])
