"""Dynamic expert balancing end to end on gloo processes: a skewed router overloads one EP rank; the
counts go to the planner, which writes a new placement; the experts move (in memory, and through a
DCP checkpoint reloaded under the new placement); the busiest rank's load falls and training goes on
exactly as if nothing had moved (same losses and parameters as the single-process reference), also
inside the runtime's Engine (DDP + 1F1B pipeline + EP).

Tolerance 1e-10: float64 and Adam; moving experts reorders no arithmetic inside an expert, only
which process does it (observed differences ~1e-17).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from planner.cluster_spec import resolve_cluster
from planner.expert_placement import ExpertLoad
from planner.parallel_config import ParallelConfig
from planner.plan import Plan, default_expert_placement
from planner.rank_order import Degrees, coords_of
from runtime.expert_balance import max_over_mean, measured_rank_loads, moe_modules, rebalance_experts
from runtime.local_launch import launch
from runtime.moe import expert_parameters, reduce_expert_grads
from tests.runtime.test_moe_ep import SPEC, TOKENS_B, MoEStack, global_batch, loss_of, make_groups

TOL = 1e-10
SKEWED = SPEC.replace(router_bias=True)  # the correction bias is how we skew the router


def _skew(moe_layers, bias: list[float]) -> None:
    with torch.no_grad():
        for m in moe_layers:
            m.router.score_bias.copy_(torch.tensor(bias))


def _train_step(model, opt, x, grp, dp: int) -> float:
    opt.zero_grad()
    loss = loss_of(model(x))
    loss.backward()
    reduce_expert_grads(model, grp["edp"])
    experts = {id(p) for p in expert_parameters(model)}
    for p in model.parameters():  # the runtime's DP wrapper, for dense parameters
        if id(p) not in experts and p.grad is not None:
            dist.all_reduce(p.grad, group=grp["dp"])
            p.grad /= dp
    opt.step()
    return float(loss)


def _ref_step(ref, opt, step: int, dp: int) -> list[float]:
    opt.zero_grad()
    x_all, losses = global_batch(dp, step, SKEWED), []
    for d in range(dp):
        loss = loss_of(ref(x_all[d * TOKENS_B:(d + 1) * TOKENS_B]))
        (loss / dp).backward()
        losses.append(float(loss))
    opt.step()
    return losses


def _balance_worker(bias: list[float], slots: int, steps: int, ckpt_dir: str) -> dict:
    world = dist.get_world_size()
    deg = Degrees(tp=1, dp=world, pp=1, ep=world)
    grp = make_groups(deg)
    me = coords_of(deg, dist.get_rank())["dp"]
    old = default_expert_placement(SKEWED, deg.ep)
    model = MoEStack(grp["ep"], old, spec=SKEWED).double()
    ref = MoEStack(spec=SKEWED).double()
    for m in ref.moe:
        m.aux_loss_backward_scale = 1.0 / world
    _skew(model.moe, bias)
    _skew(ref.moe, bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    loss_diff = 0.0

    def run(m, o, first: int, last: int, compare: bool = True) -> None:
        nonlocal loss_diff
        for step in range(first, last):
            x = global_batch(world, step, SKEWED)[me * TOKENS_B:(me + 1) * TOKENS_B]
            got = _train_step(m, o, x, grp, world)
            if compare:
                want = _ref_step(ref, ref_opt, step, world)[me]
                loss_diff = max(loss_diff, abs(got - want))

    run(model, opt, 0, steps)
    before = max_over_mean(measured_rank_loads(model))
    config = ParallelConfig(dp=world, tp=1, pp=1, ep=world, micro_batch_size=TOKENS_B,
                            global_batch_size=world * TOKENS_B, seq_len=SKEWED.seq_len)
    plan = Plan.build(SKEWED, resolve_cluster("cpu", gpus=world), config)
    # checkpoint boundary: a DCP checkpoint of the old placement (path 1 below reloads it) ...
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt_dir)
    # ... and the whole rebalancing loop: counts -> planner -> new plan.json -> experts moved in memory
    new_plan = rebalance_experts(model, opt, plan, steps, ckpt_dir, slots_per_rank=slots)
    new = [list(p) for p in new_plan.expert_placement]
    # path 1: a model built for the new placement, resumed from the checkpoint
    reloaded = MoEStack(grp["ep"], new, spec=SKEWED).double()
    reloaded_opt = torch.optim.Adam(reloaded.parameters(), lr=1e-2)
    msd2, osd2 = get_state_dict(reloaded, reloaded_opt)
    dcp.load({"model": msd2, "optim": osd2}, checkpoint_id=ckpt_dir)
    set_state_dict(reloaded, reloaded_opt, model_state_dict=msd2, optim_state_dict=osd2)
    run(model, opt, steps, 2 * steps)
    after = max_over_mean(measured_rank_loads(model))
    run(reloaded, reloaded_opt, steps, 2 * steps, compare=False)
    ref_params = dict(ref.named_parameters())
    params_diff = max(float((p - ref_params[n]).abs().max()) for n, p in model.named_parameters())
    dcp_diff = max(float((p - ref_params[n]).abs().max()) for n, p in reloaded.named_parameters())
    return {"before": before, "after": after, "old": old, "new": new, "loss_diff": loss_diff,
            "params_diff": params_diff, "dcp_params_diff": dcp_diff, "status": new_plan.provenance["expert_rebalance"]["solver_status"],
            "local": [int(e) for e in model.moe[0].local_experts]}


def _check(got: list[dict], label: str, margin: float) -> dict:
    r = got[0]
    worst = {k: max(g[k] for g in got) for k in ("loss_diff", "params_diff", "dcp_params_diff")}
    print(f"{label}: placement {r['old']} -> {r['new']} ({r['status']}); measured max/mean rank load "
          f"{r['before']:.3f} -> {r['after']:.3f}; max abs diff vs single process "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    assert r["after"] <= r["before"] - margin, (r["before"], r["after"])
    assert all(v < TOL for v in worst.values()), worst
    assert [g["local"] for g in got] == r["new"]
    return r


def _written_plan(ckpt_dir) -> list[list[int]]:
    """Rank 0 wrote the rebalanced plan and the counts it came from beside the checkpoint."""
    assert ExpertLoad.load(ckpt_dir / "expert_load.json").steps == 2
    return [list(p) for p in Plan.load(ckpt_dir / "plan.json").expert_placement]


def test_skewed_router_rebalanced_by_moving_experts(tmp_path) -> None:
    # experts 0 and 1 favoured: both on EP rank 0 under the contiguous placement
    got = launch(_balance_worker, 2, [0.2, 0.2, 0.0, 0.0], 2, 2, str(tmp_path / "ckpt2"), timeout_s=90)
    r = _check(got, "ep2", margin=0.3)
    assert _written_plan(tmp_path / "ckpt2") == r["new"]
    assert sorted(map(sorted, r["new"])) != [[0, 1], [2, 3]]


def test_hot_expert_replicated_when_memory_allows(tmp_path) -> None:
    # expert 0 chosen by nearly every token: more load than any rank's fair share, so it is copied
    got = launch(_balance_worker, 4, [1.0, 0.0, 0.0, 0.0], 2, 2, str(tmp_path / "ckpt4"), timeout_s=120)
    r = _check(got, "ep4", margin=0.5)
    assert _written_plan(tmp_path / "ckpt4") == r["new"]
    assert sum(0 in p for p in r["new"]) >= 2


def _engine_worker(plan_dict: dict) -> dict:
    """The runtime's Engine (DDP over dp, 1F1B over pp, EP inside each stage): the same 4 steps with and
    without an in-memory expert move after step 2; the losses must not notice."""
    import torch.nn as nn

    from runtime.engine import Engine, RunOptions

    plan = Plan.from_dict(plan_dict)
    out = {}
    for move in (False, True):
        engine = Engine(plan, RunOptions(dtype="fp64"))
        models = nn.ModuleList(engine.local_models())
        _skew(moe_modules(models), [0.2, 0.2, 0.0, 0.0])
        losses = [engine.train_step().loss for _ in range(2)]
        before = max_over_mean(measured_rank_loads(models))
        new = rebalance_experts(models, engine.optimizer, plan, 2, slots_per_rank=2) if move else plan
        losses += [engine.train_step().loss for _ in range(2)]
        out[str(move)] = {"losses": losses, "before": before, "after": max_over_mean(measured_rank_loads(models)),
                          "placement": [list(p) for p in new.expert_placement]}
    return out


def test_rebalance_inside_the_runtime_engine() -> None:
    config = ParallelConfig(dp=2, tp=1, pp=2, ep=2, micro_batch_size=1, global_batch_size=4, seq_len=SKEWED.seq_len)
    plan = Plan.build(SKEWED, resolve_cluster("cpu", gpus=4), config)
    got = launch(_engine_worker, 4, plan.to_dict(), timeout_s=200)[0]
    stay, moved = got["False"], got["True"]
    diff = max(abs(a - b) for a, b in zip(stay["losses"], moved["losses"]))
    print(f"engine dp2 pp2 ep2: placement {stay['placement']} -> {moved['placement']}; max/mean rank load "
          f"{moved['before']:.3f} -> {moved['after']:.3f}; max abs loss diff vs not moving {diff:.1e}")
    assert moved["placement"] != stay["placement"]
    assert moved["after"] <= moved["before"] - 0.3
    assert diff < TOL
