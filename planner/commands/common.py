"""Arguments shared by the commands that take a model, a cluster and (parts of) a configuration."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from planner.cluster_spec import ClusterSpec, resolve_cluster
from planner.errors import ConfigError, SpecError
from planner.model_spec import ModelSpec
from planner.model_presets import resolve_model
from planner.parallel_config import COMPRESSION, GRAD_SYNC, RECOMPUTE


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def parse_schedule(text: str) -> tuple[str, int]:
    """'1f1b' | 'gpipe' | 'interleaved:V' | 'zbv' -> (schedule, virtual_stages)."""
    t = text.strip().lower()
    if t in ("1f1b", "gpipe"):
        return t, 1
    if t == "zbv":
        return "zbv", 2
    if t.startswith("interleaved"):
        _, _, v = t.partition(":")
        try:
            chunks = int(v) if v else 2
        except ValueError:
            raise ConfigError(f"schedule {text!r}: chunks after 'interleaved:' must be an integer") from None
        if chunks < 2:
            raise ConfigError(f"schedule {text!r}: interleaved needs at least 2 chunks per rank")
        return "interleaved", chunks
    raise ConfigError(f"unknown schedule {text!r} (expected 1f1b, gpipe, interleaved:V or zbv)")


def add_model_cluster_args(p: argparse.ArgumentParser, *, model_default: str | None,
                           cluster_default: str | None) -> None:
    g = p.add_argument_group("model and cluster")
    g.add_argument("--model", default=model_default, help="preset name, HuggingFace config.json, or spec file")
    g.add_argument("--cluster", default=cluster_default, help="preset name or cluster JSON/YAML file")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--gpus", type=positive_int, help="total devices (whole nodes, or one partial node)")
    size.add_argument("--nodes", type=positive_int, help="number of nodes")
    g.add_argument("--global-batch", type=positive_int, help="sequences per optimizer step")
    g.add_argument("--seq", type=positive_int, help="sequence length (default: the model's)")
    g.add_argument("--profile", help="measured profile (python -m profiler) to replace spec-sheet estimates")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The knobs of one configuration (estimate takes them all; search takes them as --fix)."""
    g = p.add_argument_group("configuration")
    g.add_argument("--tp", type=positive_int, default=1)
    g.add_argument("--pp", type=positive_int, default=1)
    g.add_argument("--dp", type=positive_int, default=None, help="default: world / (tp x pp)")
    g.add_argument("--ep", type=positive_int, default=1)
    g.add_argument("--micro-batch", type=positive_int, default=1)
    g.add_argument("--schedule", default="1f1b", help="1f1b | gpipe | interleaved:V | zbv")
    g.add_argument("--recompute", choices=RECOMPUTE, default="none")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0)
    g.add_argument("--grad-sync", choices=GRAD_SYNC, default="allreduce")
    g.add_argument("--compression", choices=COMPRESSION, default="none")
    g.add_argument("--compression-param", type=float, default=0.0, help="powersgd rank or topk fraction")
    g.add_argument("--no-overlap", action="store_true", help="do not overlap gradient reduction with backward")
    g.add_argument("--stage-layers", help="comma-separated layers per model chunk, e.g. 7,9,9,7")


@dataclass(frozen=True)
class Inputs:
    model: ModelSpec
    cluster: ClusterSpec
    global_batch: int
    seq_len: int
    profile: Any = None


def load_inputs(args: argparse.Namespace, default_global_batch: int | None = None) -> Inputs:
    if not args.model:
        raise SpecError("--model is required")
    if not args.cluster:
        raise SpecError("--cluster is required")
    model = resolve_model(args.model)
    cluster = resolve_cluster(args.cluster, gpus=args.gpus, nodes=args.nodes)
    seq = args.seq or model.seq_len
    if args.seq:
        model = model.replace(seq_len=seq)
    gb = args.global_batch or default_global_batch
    if not gb:
        raise SpecError("--global-batch is required")
    profile = None
    if getattr(args, "profile", None):
        from planner.profile import Profile  # owned by the profiler issue

        profile = Profile.load(args.profile)
    return Inputs(model=model, cluster=cluster, global_batch=gb, seq_len=seq, profile=profile)


def parse_int_list(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise ConfigError(f"{what} must be non-negative, got {text!r}")
    return vals
