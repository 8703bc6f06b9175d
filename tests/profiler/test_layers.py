"""`python -m profiler layers`: real runtime blocks, TP-sharded on real groups, under concurrency."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner.model_presets import resolve_model
from planner.profile import Profile
from profiler.cli import main
from profiler.layers import block_kinds


def test_block_kinds_follow_the_layer_graph():
    assert block_kinds(resolve_model("tiny-llama")) == ["embedding", "attention", "mlp", "head"]
    assert block_kinds(resolve_model("tiny-moe")) == ["embedding", "attention", "mlp", "moe", "head"]


def test_layers_two_ranks_tp_and_sp(tmp_path):
    out = tmp_path / "layers.json"
    rc = main(["layers", "--model", "tiny-llama", "--tp", "1,2", "--micro-batch", "1,2", "--concurrency", "2",
               "--sequence-parallel", "--warmup", "1", "--repeats", "2", "--out", str(out)])
    assert rc == 0
    p = Profile.load(out)
    assert p.header.world_size == 2 and p.active_concurrency == 2
    shapes = {(r.block_kind, r.tp, r.sequence_parallel, r.micro_batch) for r in p.blocks}
    kinds = ("embedding", "attention", "mlp", "head")
    want = {(k, tp, sp, mb) for k in kinds for tp, sp in ((1, False), (2, False), (2, True)) for mb in (1, 2)}
    assert shapes == want
    for r in p.blocks:
        assert r.forward_s > 0 and r.backward_s > 0 and r.concurrency == 2 and r.model == "tiny-llama"
        assert (r.recompute_s is None) == (r.block_kind in ("embedding", "head"))
    fwd, bwd = p.block_time_s("attention", 2, 1, 32, True, model=resolve_model("tiny-llama"))
    assert fwd > 0 and bwd > 0
    assert p.block_time_s("attention", 4, 1, 32, False) is None
    assert p.device_rate("matmul_fp32") > 0 and p.device_rate("memory_bandwidth") > 0
    assert 0 < p.device_rate("optimizer_adamw_s_per_param") < 1e-3


def test_layers_rejects_indivisible_tp(tmp_path, capsys):
    rc = main(["layers", "--model", "tiny-llama", "--tp", "3", "--concurrency", "3", "--out", str(tmp_path / "x")])
    assert rc == 2 and "does not divide" in capsys.readouterr().err


def test_layers_needs_tp_to_divide_concurrency(tmp_path):
    with pytest.raises(SystemExit):
        main(["layers", "--model", "tiny-llama", "--tp", "x", "--out", str(tmp_path / "x")])
    rc = main(["layers", "--model", "tiny-llama", "--tp", "2", "--concurrency", "1", "--out", str(tmp_path / "x")])
    assert rc == 2


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "profiler", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "layers" in proc.stdout and "links" in proc.stdout
