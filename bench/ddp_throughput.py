"""Throughput of the runtime's DP-only plan vs plain torch DDP, same model, same processes, one run.

Both sides train the same keyed-initialised model on the same samples in the same forked gloo
processes: the runtime (``runtime.engine.Engine`` on a dp-only plan: DDP with the plan's bucket size,
global-norm clipping, loss averaged for logging) and a plain loop (``DistributedDataParallel`` with
torch defaults, ``clip_grad_norm_``, AdamW). Rounds alternate the two (runtime, plain, runtime, ...)
so load drift on a shared machine hits both; each round times ``--steps`` steps after warm-up.
Printed: per-round tokens/s and ratio, the median of the per-round ratios (the headline: each ratio
compares two adjacent windows, so slow drift of a shared machine's load cancels; bar >= 0.95) and,
for reference, the ratio of the two medians.

    python bench/ddp_throughput.py [--model tiny-llama] [--dp 2] [--rounds 7] [--steps 5] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from planner.cluster_spec import resolve_cluster  # noqa: E402
from planner.model_presets import resolve_model  # noqa: E402
from planner.parallel_config import ParallelConfig  # noqa: E402
from planner.plan import Plan  # noqa: E402
from runtime.data import BatchLoader, make_source  # noqa: E402
from runtime.engine import Engine, RunOptions  # noqa: E402
from runtime.local_launch import run_ranks  # noqa: E402
from runtime.model import build_full_model  # noqa: E402

BAR = 0.95


def _worker(plan: Plan, rounds: int, steps: int, warmup: int) -> dict:
    import torch.distributed as dist

    cfg, spec = plan.config, plan.model
    options = RunOptions(record_timeline=False)
    engine = Engine(plan, options)
    model = DDP(build_full_model(spec, seed=options.seed), bucket_cap_mb=cfg.bucket_size_bytes / 2**20)
    opt = torch.optim.AdamW(model.parameters(), lr=options.optim.lr, betas=options.optim.betas,
                            weight_decay=options.optim.weight_decay)
    loader = BatchLoader(make_source("synthetic", spec.vocab_size, cfg.seq_len), cfg.global_batch_size, cfg.dp,
                         dist.get_rank())

    def plain_step() -> None:
        x, y = loader.next_batch()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), options.optim.max_grad_norm)
        opt.step()

    def timed(fn) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        dist.barrier()
        return cfg.tokens_per_step * steps / (time.perf_counter() - t0)

    for _ in range(warmup):
        engine.train_step()
        plain_step()
    runtime_tps, plain_tps = [], []
    for r in range(rounds):
        first, second = (engine.train_step, plain_step) if r % 2 == 0 else (plain_step, engine.train_step)
        a, b = timed(first), timed(second)
        rt, pl = (a, b) if r % 2 == 0 else (b, a)
        runtime_tps.append(rt)
        plain_tps.append(pl)
    return {"runtime": runtime_tps, "plain": plain_tps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--dp", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is below {BAR}")
    args = p.parse_args(argv)
    spec = resolve_model(args.model)
    cfg = ParallelConfig(dp=args.dp, tp=1, pp=1, micro_batch_size=args.global_batch // args.dp,
                         global_batch_size=args.global_batch, seq_len=args.seq)
    plan = Plan.build(spec, resolve_cluster("cpu", gpus=args.dp), cfg)
    res = run_ranks(_worker, args.dp, plan, args.rounds, args.steps, args.warmup, timeout_s=1800).values[0]
    print(f"plan {cfg.name} ({spec.name}, seq {args.seq}, global batch {args.global_batch}), {args.rounds} rounds x "
          f"{args.steps} steps, tokens/s per round:")
    print(f"{'round':>5} {'runtime':>12} {'plain DDP':>12} {'ratio':>7}")
    for i, (a, b) in enumerate(zip(res["runtime"], res["plain"]), 1):
        print(f"{i:>5} {a:>12,.0f} {b:>12,.0f} {a / b:>7.3f}")
    rt, pl = statistics.median(res["runtime"]), statistics.median(res["plain"])
    ratio = rt / pl
    pair = statistics.median(a / b for a, b in zip(res["runtime"], res["plain"]))
    print(f"median tokens/s: runtime {rt:,.0f}, plain DDP {pl:,.0f} (ratio of medians {ratio:.3f})")
    print(f"throughput ratio runtime / plain DDP (median of {args.rounds} per-round ratios): {pair:.3f}; bar >= {BAR}")
    return 1 if args.check and pair < BAR else 0


if __name__ == "__main__":
    sys.exit(main())
