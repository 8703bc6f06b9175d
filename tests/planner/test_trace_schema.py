"""Trace schema: a built trace validates and round-trips; each broken field is named in one line."""

from __future__ import annotations

import copy
import json

import pytest

from planner import trace_schema as ts
from planner.errors import SpecError


def _trace() -> dict:
    b = ts.TraceBuilder("measured", plan="tp1_pp2_dp1_mbs1")
    b.add(0, "compute", "F0", 0.0, 10.0, chunk=0, microbatch=0, kind="F")
    b.add(0, "compute", "F1", 10.0, 10.0, chunk=0, microbatch=1, kind="F")
    b.add(1, "compute", "F0", 12.0, 8.0, chunk=1, microbatch=0, kind="F")
    b.add(1, "compute", "B0", 20.0, 16.0, chunk=1, microbatch=0, kind="B")
    b.add(0, "pp", "send F0", 10.0, 2.0, chunk=0, microbatch=0, kind="F", bytes=4096)
    b.add(0, "dp", "grad all-reduce", 40.0, 5.0, kind="S")
    return b.to_dict()


def test_built_trace_validates_and_round_trips(tmp_path) -> None:
    data = _trace()
    evs = ts.events(data)
    assert len(evs) == 6
    assert {e.track for e in evs} == {"compute", "pp", "dp"}
    send = next(e for e in evs if e.track == "pp")
    assert send.extra == {"bytes": 4096} and send.rank == 0
    path = ts.save(tmp_path / "trace.json", data)
    assert ts.load(path) == json.loads(json.dumps(data))
    # metadata names every track of every rank, pid = rank, tid = track index
    names = {(m["pid"], m["tid"], m["args"]["name"]) for m in data["traceEvents"] if m["name"] == "thread_name"}
    assert (1, ts.TRACKS.index("pp"), "pp") in names


def _x_events(data: dict) -> list[dict]:
    return [e for e in data["traceEvents"] if e["ph"] == "X"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: _x_events(d)[0].pop("dur"), "missing required field 'dur'"),
    (lambda d: _x_events(d)[0].update(ts=-1.0), "ts_us must be a finite non-negative"),
    (lambda d: _x_events(d)[0].update(ts="0"), "ts_us must be a finite non-negative"),
    (lambda d: _x_events(d)[0].update(tid=9), "tid must be a track index"),
    (lambda d: _x_events(d)[0].update(ph="B"), "only complete events"),
    (lambda d: _x_events(d)[0]["args"].update(kind="Q"), "kind must be one of"),
    (lambda d: _x_events(d)[0]["args"].pop("microbatch"), "args is missing 'microbatch'"),
    (lambda d: _x_events(d)[0]["args"].update(microbatch=None), "needs args.chunk and args.microbatch"),
    (lambda d: _x_events(d)[1].update(ts=5.0), "overlaps"),
    (lambda d: d["otherData"].update(version=99), "version 99 is not supported"),
    (lambda d: d.pop("otherData"), "otherData.schema"),
])
def test_validator_names_the_problem(mutate, message) -> None:
    data = copy.deepcopy(_trace())
    mutate(data)
    with pytest.raises(SpecError, match=message) as info:
        ts.validate(data)
    assert "\n" not in str(info.value)


def test_builder_rejects_bad_events() -> None:
    b = ts.TraceBuilder("predicted")
    with pytest.raises(SpecError, match="track must be one of"):
        b.add(0, "gpu", "x", 0, 1, kind="F", chunk=0, microbatch=0)
    with pytest.raises(SpecError, match="source must be one of"):
        ts.TraceBuilder("guessed")


def test_slices_on_different_tracks_may_overlap() -> None:
    b = ts.TraceBuilder("predicted")
    b.add(0, "compute", "B0", 0, 10, chunk=0, microbatch=0, kind="B")
    b.add(0, "dp", "bucket 0", 5, 10, kind="S")  # overlapped gradient reduction: a different track
    ts.validate(b.to_dict())
