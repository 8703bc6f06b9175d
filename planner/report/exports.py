"""A plan as arguments for existing runtimes: torchtitan ``--parallelism.*`` and Megatron-LM.

Why: a person who trusts the plan but trains with torchtitan or Megatron-LM should not translate
degrees, schedules and uneven splits by hand (STYLE.md 17). Flag names were read from the sources:

* torchtitan ``torchtitan/config/job_config.py`` (``Parallelism``, ``Training``,
  ``ActivationCheckpoint``): ``data_parallel_replicate_degree`` (DDP), ``data_parallel_shard_degree``
  (FSDP2), ``tensor_parallel_degree``, ``pipeline_parallel_degree``, ``pipeline_parallel_schedule``
  (a torch ``get_schedule_class`` name), ``pipeline_parallel_microbatch_size``,
  ``module_fqns_per_model_part`` (list of module-name lists, one per model chunk, in model order),
  ``expert_parallel_degree``, ``fsdp_reshard_after_forward``; ``training.local_batch_size`` /
  ``global_batch_size`` / ``seq_len``; ``activation_checkpoint.mode`` (none / selective / full).
* Megatron-LM ``megatron/training/arguments.py``: ``--tensor-model-parallel-size``,
  ``--pipeline-model-parallel-size``, ``--num-layers-per-virtual-pipeline-stage``,
  ``--pipeline-model-parallel-layout`` (grammar: ``E`` embedding, ``t`` a transformer layer, ``L`` loss
  and head, ``|`` ends a model chunk; chunk i runs on pipeline rank i mod pp), ``--sequence-parallel``,
  ``--recompute-granularity`` / ``--recompute-method`` / ``--recompute-num-layers``,
  ``--use-distributed-optimizer``, Megatron-FSDP ``--use-megatron-fsdp
  --data-parallel-sharding-strategy optim_grads_params`` (ZeRO-3), ``--expert-model-parallel-size``,
  ``--micro-batch-size``, ``--global-batch-size``, ``--overlap-grad-reduce``.

Where a runtime cannot express a decision exactly, the export says so in ``notes`` (and the written
file carries them as comments) instead of silently emitting something else.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig
from planner.plan import Plan

TORCHTITAN_SCHEDULES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B", "zbv": "ZBVZeroBubble"}
"""Our schedule -> torch.distributed.pipelining ``get_schedule_class`` name (what torchtitan passes on)."""

TORCHTITAN_FLAVORS = {"llama3.1-8b": ("llama3", "8B"), "llama3.1-70b": ("llama3", "70B"),
                      "llama3.1-405b": ("llama3", "405B")}
"""Presets torchtitan ships under ``--model.name`` / ``--model.flavor`` (torchtitan/models/llama3)."""


@dataclass(frozen=True)
class Export:
    """Arguments for one runtime, ready to paste, plus what could not be expressed."""

    runtime: str
    args: tuple[str, ...]
    """Command-line arguments, one option (with its value) per entry."""
    notes: tuple[str, ...]
    config_text: str = ""
    """A config file to pass alongside (torchtitan TOML), or '' when none is needed."""

    def command_line(self) -> str:
        return " ".join(self.args)


# ------------------------------------------------------------------------------------------------
# torchtitan
# ------------------------------------------------------------------------------------------------
def module_fqns_per_model_part(model: ModelSpec, config: ParallelConfig) -> list[list[str]]:
    """torchtitan module names of each model chunk, in model (chunk) order: ``tok_embeddings`` with the
    first chunk, ``layers.i`` for transformer block i, ``norm`` and ``output`` with the last chunk."""
    parts = []
    ranges = config.chunk_layer_ranges(model)
    for c, (a, b) in enumerate(ranges):
        names = ["tok_embeddings"] if c == 0 else []
        names += [f"layers.{i}" for i in range(a, b)]
        if c == len(ranges) - 1:
            names += ["norm", "output"]
        parts.append(names)
    return parts


def torchtitan_export(plan: Plan) -> Export:
    m, c = plan.model, plan.config
    notes: list[str] = []
    if c.zero_stage == 0:
        replicate, shard, reshard = c.dp, 1, None
    else:
        replicate, shard = 1, c.dp
        reshard = "never" if c.zero_stage in (1, 2) else "always"
        if c.zero_stage in (1, 2):
            notes.append(f"ZeRO-{c.zero_stage} has no exact torchtitan form: FSDP2 with "
                         "fsdp_reshard_after_forward=never keeps parameters gathered between forward and "
                         "backward (ZeRO-2 traffic, ZeRO-3 parameter memory at rest)")
    flags = {
        "parallelism.data_parallel_replicate_degree": replicate,
        "parallelism.data_parallel_shard_degree": shard,
        "parallelism.tensor_parallel_degree": c.tp,
        "parallelism.pipeline_parallel_degree": c.pp,
    }
    if reshard:
        flags["parallelism.fsdp_reshard_after_forward"] = reshard
    if c.pp > 1:
        flags["parallelism.pipeline_parallel_schedule"] = TORCHTITAN_SCHEDULES[c.schedule]
        flags["parallelism.pipeline_parallel_microbatch_size"] = c.micro_batch_size
        # torchtitan runs num_microbatches = local_batch_size / microbatch_size per step.
        flags["training.local_batch_size"] = c.global_batch_size // c.dp
    else:
        # Without PP torchtitan accumulates gradients: steps = global / (local x dp).
        flags["training.local_batch_size"] = c.micro_batch_size
    flags["training.global_batch_size"] = c.global_batch_size
    flags["training.seq_len"] = c.seq_len
    if c.ep > 1:
        flags["parallelism.expert_parallel_degree"] = c.ep
        if c.ep > shard:
            notes.append(f"torchtitan carves experts out of the FSDP shard dimension (ep <= "
                         f"data_parallel_shard_degree); ep={c.ep} > {shard} needs ZeRO-3 sharding there")
    flags["activation_checkpoint.mode"] = c.recompute
    if any(c.stage_recompute_layers):
        notes.append("per-stage full-recompute layer counts "
                     f"{list(c.stage_recompute_layers)} have no torchtitan flag; mode stays {c.recompute!r}")
    if c.tp > 1 and not c.sequence_parallel:
        notes.append("torchtitan's tensor parallelism always shards the sequence in norms (sequence parallel); "
                     "the plan was priced without it, which only over-estimates memory")
    if c.grad_sync != "allreduce" or c.compression != "none":
        notes.append(f"grad_sync={c.grad_sync}, compression={c.compression} have no torchtitan flag")
    name_flavor = TORCHTITAN_FLAVORS.get(m.name)
    if name_flavor:
        flags["model.name"], flags["model.flavor"] = name_flavor
    else:
        notes.append(f"model {m.name!r} is not a torchtitan preset: set --model.name and --model.flavor")
    args = [f"--{k} {_flag_value(v)}" for k, v in flags.items()]
    toml = _torchtitan_toml(plan, flags)
    if c.pp > 1:
        notes.append("module_fqns_per_model_part is in the TOML file (pass --job.config_file): torchtitan's "
                     "default split would otherwise take one layer off the first and last stages")
        args.append("--job.config_file torchtitan.toml")
    return Export("torchtitan", tuple(args), tuple(notes), toml)


def _flag_value(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else shlex.quote(str(v))


def _torchtitan_toml(plan: Plan, flags: dict[str, object]) -> str:
    sections: dict[str, list[str]] = {}
    for key, v in flags.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"{name} = {_toml_value(v)}")
    if plan.config.pp > 1:
        parts = module_fqns_per_model_part(plan.model, plan.config)
        body = ",\n".join("  [" + ", ".join(_toml_value(n) for n in p) + "]" for p in parts)
        sections["parallelism"].append(f"module_fqns_per_model_part = [\n{body},\n]")
    lines = [f"# torchtitan job config for plan {plan.config.name} (written by hybridplan)"]
    for section, entries in sections.items():
        lines += ["", f"[{section}]", *entries]
    return "\n".join(lines) + "\n"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


# ------------------------------------------------------------------------------------------------
# Megatron-LM
# ------------------------------------------------------------------------------------------------
def megatron_layout(model: ModelSpec, config: ParallelConfig) -> str:
    """``--pipeline-model-parallel-layout``: one ``|``-separated entry per model chunk, in chunk order."""
    chunks = []
    counts = config.layers_per_chunk(model)
    for i, n in enumerate(counts):
        s = "E" if i == 0 else ""
        s += "t" if n == 1 else (f"t*{n}" if n else "")
        s += "L" if i == len(counts) - 1 else ""
        chunks.append(s)
    return "|".join(chunks)


def megatron_export(plan: Plan) -> Export:
    m, c = plan.model, plan.config
    notes: list[str] = []
    a: list[str] = [f"--tensor-model-parallel-size {c.tp}", f"--pipeline-model-parallel-size {c.pp}"]
    counts = c.layers_per_chunk(m)
    even = len(set(counts)) == 1
    if c.pp > 1:
        if c.schedule == "interleaved" and even:
            a.append(f"--num-layers-per-virtual-pipeline-stage {counts[0]}")
        elif not (even and c.schedule in ("1f1b", "gpipe")):
            a.append(f"--pipeline-model-parallel-layout {shlex.quote(megatron_layout(m, c))}")
        if c.schedule == "gpipe":
            notes.append("Megatron-LM has no GPipe schedule; it runs 1F1B (same bubble, less activation memory)")
        if c.schedule == "zbv":
            notes.append("Megatron-LM has no ZB-V schedule: the layout gives the same 2 chunks per rank but "
                         "Megatron places chunk i on rank i mod pp (interleaved), not in a V")
    if c.ep > 1:
        a.append(f"--expert-model-parallel-size {c.ep}")
    if c.sequence_parallel:
        a.append("--sequence-parallel")
    full_layers = max(c.stage_recompute_layers, default=0)
    if c.recompute == "full":
        a += ["--recompute-granularity full", "--recompute-method uniform", "--recompute-num-layers 1"]
    elif full_layers:
        a += ["--recompute-granularity full", "--recompute-method block", f"--recompute-num-layers {full_layers}"]
        if len(set(c.stage_recompute_layers)) > 1:
            notes.append(f"per-chunk full-recompute layers {list(c.stage_recompute_layers)} differ; Megatron "
                         f"takes one count per chunk, so every chunk recomputes {full_layers} (more memory saved, "
                         "more time than planned)")
        if c.recompute == "selective":
            notes.append("selective recompute of the remaining layers is dropped: Megatron takes one granularity")
    elif c.recompute == "selective":
        a.append("--recompute-granularity selective")
    if c.zero_stage in (1, 2):
        a.append("--use-distributed-optimizer")
        if c.zero_stage == 2:
            notes.append("ZeRO-2: Megatron's distributed optimizer reduce-scatters gradients, which is ZeRO-2 traffic")
    elif c.zero_stage == 3:
        a += ["--use-megatron-fsdp", "--data-parallel-sharding-strategy optim_grads_params",
              "--use-distributed-optimizer", "--no-gradient-accumulation-fusion", "--ckpt-format fsdp_dtensor"]
    if c.overlap_grad_reduce and c.dp > 1:
        a.append("--overlap-grad-reduce")
    if c.grad_sync != "allreduce" or c.compression != "none":
        notes.append(f"grad_sync={c.grad_sync}, compression={c.compression} have no Megatron-LM flag")
    a += [f"--micro-batch-size {c.micro_batch_size}", f"--global-batch-size {c.global_batch_size}",
          f"--seq-length {c.seq_len}"]
    a += _megatron_model_args(m)
    return Export("megatron", tuple(a), tuple(notes))


def _megatron_model_args(m: ModelSpec) -> list[str]:
    a = [f"--num-layers {m.num_layers}", f"--hidden-size {m.hidden_size}", f"--ffn-hidden-size {m.ffn_hidden_size}",
         f"--num-attention-heads {m.num_heads}", f"--max-position-embeddings {m.position_rows}"]
    if m.kv_heads != m.num_heads:
        a += ["--group-query-attention", f"--num-query-groups {m.kv_heads}"]
    if m.head_dim and m.head_dim != m.hidden_size // m.num_heads:
        a.append(f"--kv-channels {m.head_dim}")
    if m.norm == "rmsnorm":
        a.append("--normalization RMSNorm")
    if m.activation == "swiglu":
        a.append("--swiglu")
    if m.position_embedding == "rope":
        a.append("--position-embedding-type rope")
    if not m.tied_embeddings:
        a.append("--untie-embeddings-and-output-weights")
    if not m.linear_bias:
        a.append("--disable-bias-linear")
    if m.qkv_bias:
        a.append("--add-qkv-bias")
    if m.qk_norm:
        a.append("--qk-layernorm")
    if m.is_moe:
        a += [f"--num-experts {m.num_experts}", f"--moe-router-topk {m.moe_top_k}",
              f"--moe-ffn-hidden-size {m.moe_ffn_hidden_size}"]
        if m.shared_ffn_width:
            a.append(f"--moe-shared-expert-intermediate-size {m.shared_ffn_width}")
    a.append({"bf16": "--bf16", "fp16": "--fp16"}.get(m.dtype, ""))
    return [x for x in a if x]


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def export_files(plan: Plan) -> dict[str, str]:
    """File name -> text for the export files a search writes next to plan.json."""
    tt, mg = torchtitan_export(plan), megatron_export(plan)
    out = {"torchtitan_args.sh": _shell_file(tt, "TORCHTITAN_ARGS", plan),
           "megatron_args.sh": _shell_file(mg, "MEGATRON_ARGS", plan)}
    if tt.config_text:
        out["torchtitan.toml"] = tt.config_text
    return out


def _shell_file(e: Export, var: str, plan: Plan) -> str:
    lines = ["#!/usr/bin/env bash", f"# {e.runtime} arguments for plan {plan.config.name} (written by hybridplan);",
             f"# source this file and append ${{{var}[@]}} to the {e.runtime} launch line."]
    lines += [f"# note: {n}" for n in e.notes]
    lines.append(f"{var}=(")
    lines += [f"  {arg}" for arg in e.args]
    lines.append(")")
    return "\n".join(lines) + "\n"
