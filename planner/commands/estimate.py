"""`python -m planner estimate`: price one fully specified configuration.

Prints the step time, throughput, the time breakdown and the memory per pipeline stage; ``--json`` prints
one JSON object instead (Estimate.to_dict() plus the inputs). A configuration that does not fit still
prints everything, says by how many bytes per rank it exceeds, and exits 3; invalid input exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from planner.commands.common import add_config_args, add_model_cluster_args, load_inputs, parse_int_list, parse_schedule
from planner.cost import CostModel, Estimate
from planner.cost.types import BREAKDOWN_WORDS
from planner.errors import EXIT_DOES_NOT_FIT, ConfigError
from planner.parallel_config import ParallelConfig

GiB = 2**30


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_cluster_args(p, model_default=None, cluster_default=None)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_config(args: argparse.Namespace, world: int, global_batch: int, seq_len: int) -> ParallelConfig:
    """The ParallelConfig the flags describe (dp defaults to world / (tp x pp))."""
    tp, pp = args.tp, args.pp
    if world % (tp * pp):
        raise ConfigError(f"tp x pp = {tp} x {pp} does not divide the world size {world}")
    dp = args.dp or world // (tp * pp)
    schedule, v = parse_schedule(args.schedule)
    if pp == 1 and schedule in ("interleaved", "zbv"):
        raise ConfigError(f"schedule {args.schedule} needs pp > 1")
    return ParallelConfig(
        dp=dp, tp=tp, pp=pp, ep=args.ep, micro_batch_size=args.micro_batch, global_batch_size=global_batch,
        seq_len=seq_len, schedule=schedule, virtual_stages=v, recompute=args.recompute,
        sequence_parallel=args.sequence_parallel, zero_stage=args.zero, grad_sync=args.grad_sync,
        compression=args.compression, compression_param=args.compression_param,
        overlap_grad_reduce=not args.no_overlap,
        stage_layers=parse_int_list(args.stage_layers, "--stage-layers"))


def render(est: Estimate, model_name: str, cluster_name: str) -> str:
    c = est.config
    lines = [f"{model_name} on {cluster_name} ({c.world_size} GPUs): {c.name}",
             f"  micro-batches per step: {c.num_micro_batches}, schedule: {c.schedule}"
             + (f" (v={c.virtual_stages})" if c.virtual_stages > 1 else ""),
             f"step time            {est.step_time_s:10.4f} s",
             f"model TFLOP/s / GPU  {est.tflops_per_gpu:10.1f}   (MFU {est.mfu * 100:.1f}%, HFU {est.hfu * 100:.1f}%)",
             f"tokens/s / GPU       {est.tokens_per_s_per_gpu:10.1f}",
             "time breakdown (s per step, adds up to the step time):"]
    for k, v in est.breakdown.items():
        share = v / est.step_time_s * 100 if est.step_time_s else 0.0
        lines.append(f"  {k:16s} {v:10.4f}  {share:5.1f}%  {BREAKDOWN_WORDS.get(k, '')}")
    lines.append(f"bottleneck: {est.bottleneck}")
    lines.append("memory per pipeline stage (GiB): weights  grads  optimizer  activations  other  total")
    for s in est.memory_by_stage:
        lines.append(f"  stage {s.pp_rank:3d}  {s.weights_bytes / GiB:14.2f} {s.gradients_bytes / GiB:6.2f} "
                     f"{s.optimizer_bytes / GiB:10.2f} {s.activations_bytes / GiB:12.2f} {s.other_bytes / GiB:6.2f} "
                     f"{s.total_bytes / GiB:6.2f}")
    lines.append(f"peak {est.peak_memory_bytes / GiB:.2f} GiB of {est.capacity_bytes / GiB:.2f} GiB usable: "
                 + ("fits" if est.fits else f"DOES NOT FIT, exceeds by {est.excess_bytes:.0f} bytes "
                                            f"({est.excess_bytes / GiB:.2f} GiB) per rank"))
    lines.extend(f"note: {n}" for n in est.notes if not n.startswith("does not fit"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    inp = load_inputs(args)
    config = build_config(args, inp.cluster.world_size, inp.global_batch, inp.seq_len)
    cm = CostModel(inp.model, inp.cluster, profile=inp.profile)
    est = cm.estimate(config)
    if args.json:
        d = est.to_dict()
        d["model"] = inp.model.name
        d["cluster"] = inp.cluster.name
        d["world_size"] = inp.cluster.world_size
        print(json.dumps(d, indent=2, allow_nan=False))
    else:
        print(render(est, inp.model.name, inp.cluster.name))
    if not est.fits:
        print(f"error: does not fit: peak {est.peak_memory_bytes:.0f} bytes exceeds the {est.capacity_bytes:.0f}-byte "
              f"capacity by {est.excess_bytes:.0f} bytes per rank", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0
