"""`python -m runtime train|verify`: execute a plan, or check it against the single-process model.

train: under torchrun (``torchrun --standalone --nproc-per-node N -m runtime train --plan plan.json
--steps K``; multi-node: the torchrun / sbatch lines the planner writes) every process runs its
rank. Started without torchrun, a plan of N > 1 processes is run on N local processes forked by
runtime.local_launch (gloo), which is the laptop path.

verify: the plan on local gloo processes vs the single-process reference, the max abs loss and
parameter differences on the last line; exit 4 (planner.errors.EXIT_CHECK_FAILED) past tolerance.

Errors are one line on stderr with planner/errors.py's exit codes; --verbose shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from planner.commands.common import positive_float as _positive_float
from planner.commands.common import positive_int as _positive_int
from planner.errors import CheckFailedError, ConfigError, PlannerError


def _slow_stage(text: str):
    from runtime.slowdown import SlowStage

    try:
        return SlowStage.parse(text)
    except ConfigError as exc:  # argparse's one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def _common(p: argparse.ArgumentParser, dtype_default: str) -> None:
    p.add_argument("--plan", required=True, help="plan.json written by `python -m planner search`")
    p.add_argument("--steps", type=_positive_int, required=True, help="optimizer steps")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    p.add_argument("--seed", type=int, default=0, help="master seed (initialisation and data)")
    p.add_argument("--dtype", choices=("fp32", "fp64", "bf16"), default=dtype_default)
    p.add_argument("--data", default="synthetic", help="'synthetic' or 'bytes:PATH' (byte-level tokens of a text file)")
    p.add_argument("--timeout", type=_positive_float, default=600.0, help="local runs: wall-clock limit, seconds")
    p.add_argument("--verbose", "-v", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runtime", description="hybridplan runtime: execute and verify plans")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train with the plan's parallel layout")
    _common(t, "fp32")
    t.add_argument("--log-every", type=_positive_int, default=1)
    t.add_argument("--checkpoint-dir")
    t.add_argument("--checkpoint-every", type=int, default=0)
    t.add_argument("--resume", help="'auto' (latest complete checkpoint in --checkpoint-dir) or a checkpoint dir")
    t.add_argument("--trace", help="write the measured timeline (Chrome / Perfetto JSON) here")
    t.add_argument("--trace-steps", type=_positive_int, default=2)
    t.add_argument("--metrics", help="write per-step metrics JSON here")
    t.add_argument("--slow-stage", type=_slow_stage, metavar="S:FACTOR",
                   help="debugging option for testing dynamic load balancing: pipeline stage S runs FACTOR (> 1) "
                        "times slower (its transformer blocks sleep), e.g. 0:3")
    v = sub.add_parser("verify", help="compare the plan's run with the single-process model")
    _common(v, "fp64")
    v.add_argument("--loss-tol", type=_positive_float, help="default: per dtype (runtime.verify.TOLERANCES)")
    v.add_argument("--param-tol", type=_positive_float)
    return parser


def _options(args):
    from runtime.engine import RunOptions
    from runtime.optim import OptimConfig

    optim = OptimConfig(args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                        max_grad_norm=args.clip if args.clip > 0 else None)
    return RunOptions(seed=args.seed, dtype=args.dtype, optim=optim, data=args.data)


def _init_from_torchrun(plan) -> None:
    """init_process_group from torchrun's environment, on a store prefixed by the restart attempt.

    Why the prefix: under ``torchrun --max-restarts`` the workers of every attempt share the agent's
    TCPStore, and torch 2.13 keys the default group's rendezvous without the attempt, so a restarted
    gloo group can read the dead attempt's addresses and fail ("connectFullMesh ... Connection
    refused"), intermittently. Keys under ``hybridplan/attempt_N/`` cannot collide.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from runtime import faults

    backend = plan.cluster.backend
    if backend == "nccl" and not torch.cuda.is_available():
        logging.getLogger("runtime").warning("plan asks for nccl but CUDA is not available: using gloo")
        backend = "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, timeout=timedelta(seconds=300))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"hybridplan/attempt_{attempt}", store)
    # a blocked collective fails after HYBRIDPLAN_COLLECTIVE_TIMEOUT_S (default 300 s), not torch's 30 min
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=faults.process_group_timeout(faults.timeout_s_from_env()))


def _train(args) -> int:
    from planner.plan import Plan
    from runtime.train import TrainConfig, train

    plan = Plan.load(args.plan)
    options = _options(args)
    tc = TrainConfig(steps=args.steps, log_every=args.log_every, checkpoint_dir=args.checkpoint_dir,
                     checkpoint_every=args.checkpoint_every, resume=args.resume, trace_path=args.trace,
                     trace_steps=args.trace_steps, metrics_path=args.metrics, slow_stage=args.slow_stage)
    if tc.resume and tc.resume != "auto" and not os.path.isdir(tc.resume):
        raise ConfigError(f"--resume {tc.resume}: no such checkpoint directory")
    from runtime.data import make_source
    from runtime.data_parallel import check_supported

    check_supported(plan.config, plan.model.is_moe)
    if tc.slow_stage is not None:
        tc.slow_stage.check(plan.config.pp)  # before any rank starts
    make_source(args.data, plan.model.vocab_size, plan.config.seq_len, args.seed)  # bad --data: one line, here
    world = plan.config.world_size
    if "WORLD_SIZE" in os.environ:  # torchrun
        if int(os.environ["WORLD_SIZE"]) != world:
            raise ConfigError(f"plan {plan.config.name} needs {world} processes, torchrun started "
                              f"{os.environ['WORLD_SIZE']}")
        import torch.distributed as dist

        _init_from_torchrun(plan)
        try:
            train(plan, options, tc)
        finally:
            dist.destroy_process_group()
        return 0
    if world == 1:
        train(plan, options, tc)
        return 0
    from runtime.local_launch import run_ranks

    def worker() -> int:
        logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
        train(plan, options, tc)
        return 0

    res = run_ranks(worker, world, timeout_s=args.timeout)
    sys.stdout.write(res.logs[0])
    return 0


def _verify(args) -> int:
    from planner.plan import Plan
    from runtime.verify import TOLERANCES, verify_plan

    plan = Plan.load(args.plan)
    loss_tol, param_tol = TOLERANCES.get(args.dtype, TOLERANCES["fp32"])
    loss_tol = args.loss_tol or loss_tol
    param_tol = args.param_tol or param_tol
    r = verify_plan(plan, args.steps, _options(args), timeout_s=args.timeout)
    print(f"plan {r.plan_name} on {r.world_size} local processes vs single process, {r.steps} steps, {args.dtype}, "
          f"{args.optimizer}, {r.wall_s:.1f} s")
    print(f"{'step':>4} {'parallel loss':>20} {'reference loss':>20} {'|diff|':>10}")
    for i, (a, b) in enumerate(zip(r.losses, r.reference_losses), 1):
        print(f"{i:>4} {a:>20.12f} {b:>20.12f} {abs(a - b):>10.2e}")
    if r.missing:
        print(f"parameters no rank compared: {', '.join(r.missing)}")
    ok = r.passed(loss_tol, param_tol)
    print(f"{'PASS' if ok else 'FAIL'}: max |loss diff| = {r.max_loss_diff:.3e} (tol {loss_tol:g}), "
          f"max |param diff| = {r.max_param_diff:.3e} (tol {param_tol:g}, worst {r.worst_param}) "
          f"after step {r.steps}")
    if not ok:
        raise CheckFailedError(f"verify failed for plan {r.plan_name}: loss diff {r.max_loss_diff:.3e}, "
                               f"param diff {r.max_param_diff:.3e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_usage(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return {"train": _train, "verify": _verify}[args.command](args)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line unless --verbose
        from runtime.local_launch import LaunchError

        if args.verbose:
            raise
        if isinstance(exc, LaunchError):
            print(str(exc), file=sys.stderr)
            print("error: a rank failed (logs above)", file=sys.stderr)
            return 1
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: internal error ({type(exc).__name__}): {msg} (re-run with --verbose for details)",
              file=sys.stderr)
        return 1
