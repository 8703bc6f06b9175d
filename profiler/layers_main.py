"""Entry of `python -m profiler layers`: launch the timing ranks, combine, write the profile."""

from __future__ import annotations

import argparse
import os

from planner.errors import SpecError
from planner.model_presets import resolve_model
from planner.profile import BlockRecord, DeviceRate, Profile


def run_layers(args: argparse.Namespace) -> int:
    from profiler.cli import default_threads

    spec = resolve_model(args.model)
    seqs = args.seq or [spec.seq_len]
    if args.seq:
        spec = spec.replace(seq_len=max(seqs))
    torchrun = "RANK" in os.environ
    world = int(os.environ.get("WORLD_SIZE", "1")) if torchrun else args.concurrency
    if world < 1 or args.repeats < 1 or args.warmup < 0:
        raise SpecError("layers: need --concurrency >= 1, --repeats >= 1, --warmup >= 0")
    for tp in args.tp:
        if world % tp:
            raise SpecError(f"layers: tp {tp} does not divide the {world} concurrent ranks (--concurrency)")
        for what, n in (("attention heads", spec.num_heads), ("key/value heads", spec.kv_heads),
                        ("FFN width", spec.ffn_hidden_size), ("vocabulary", spec.vocab_size)):
            if n % tp:
                raise SpecError(f"layers: tensor parallel degree {tp} does not divide the {what} ({n})")
        if args.sequence_parallel and any(s % tp for s in seqs):
            raise SpecError(f"layers: sequence parallelism needs tp {tp} to divide every --seq")
    opts = dict(model=spec.to_dict(), tp=list(args.tp), micro_batch=list(args.micro_batch), seq=list(seqs),
                sequence_parallel=bool(args.sequence_parallel), warmup=args.warmup, repeats=args.repeats)
    threads = args.threads or default_threads(world)
    if torchrun:
        return _under_torchrun(args, spec, opts, world)
    from profiler.launch import launch_local
    from profiler.layers import layers_worker

    per_rank = launch_local(layers_worker, world, opts, threads_per_rank=threads)
    write_profile(args.out, spec, per_rank, world, threads)
    return 0


def _under_torchrun(args: argparse.Namespace, spec, opts: dict, world: int) -> int:
    import torch.distributed as dist

    from profiler.links import init_from_env
    from profiler.layers import layers_worker

    init_from_env()
    try:
        mine = layers_worker(opts)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        if dist.get_rank() == 0:
            write_profile(args.out, spec, gathered, world, mine["threads"])
    finally:
        dist.destroy_process_group()
    return 0


def write_profile(out: str, spec, per_rank: list[dict], world: int, threads: int) -> Profile:
    from profiler.env import local_device, make_header
    from profiler.layers import combine_ranks

    rows, rates = combine_ranks(per_rank)
    device = local_device()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    conc = per_node
    header = make_header(device, "nccl" if device.type == "cuda" else "gloo", world, per_node,
                         notes=f"layers: {spec.name}, {threads} threads per rank")
    blocks = tuple(BlockRecord(model=spec.name, dtype=spec.dtype, concurrency=conc, **r) for r in rows)
    device_rates = (DeviceRate(name=f"matmul_{spec.dtype}", value=rates["matmul_flops_per_s"], concurrency=conc),
                    DeviceRate(name="memory_bandwidth", value=rates["memory_bytes_per_s"], concurrency=conc),
                    DeviceRate(name="optimizer_adamw_s_per_param", value=rates["optimizer_s_per_param"],
                               concurrency=conc))
    device_rates += tuple(DeviceRate(name=f"optimizer_adamw_s_per_param_tp{tp}", value=v, concurrency=conc)
                          for tp, v in sorted((rates.get("optimizer_tp") or {}).items()))
    p = Profile(header=header, blocks=blocks, device_rates=device_rates, models={spec.name: spec.to_dict()})
    p.save(out)
    print(_summary(p))
    return p


def _summary(p: Profile) -> str:
    lines = [f"profile {p.header.device}: {len(p.blocks)} block records",
             f"{'block':<10}{'tp':>3}{'sp':>3}{'mb':>4}{'seq':>6}{'fwd_ms':>9}{'bwd_ms':>9}{'rec_ms':>9}{'iqr_ms':>8}"]
    for r in p.blocks:
        rec = f"{r.recompute_s * 1e3:9.3f}" if r.recompute_s is not None else f"{'-':>9}"
        lines.append(f"{r.block_kind:<10}{r.tp:>3}{'y' if r.sequence_parallel else 'n':>3}{r.micro_batch:>4}"
                     f"{r.seq_len:>6}{r.forward_s * 1e3:9.3f}{r.backward_s * 1e3:9.3f}{rec}"
                     f"{r.forward_spread_s * 1e3:8.3f}")
    return "\n".join(lines)
