"""Published training runs as cost-model inputs: rows, FLOP conventions, and the prediction per row.

Data: ``planner/data/published_runs.csv`` and ``planner/data/korthikanti_memory.csv`` (derived from the
project's shared calibration tables; provenance in ``planner/data/SOURCES.md``). A blank knob (micro-batch,
schedule / interleaving chunks, recompute, sequence parallelism, ZeRO-1) was not stated by the source: the
prediction takes the fastest configuration that fits over that knob, the stated degrees fixed, and the
validate table marks the row with ``*``.

FLOP conventions, normalised to a step time before comparing (a TFLOP/s figure is FLOPs / time / GPUs):
* ``tflops_eq3``: Narayanan et al. 2021 eq. 3, F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h)): counts the
  recompute forward (HFU-like).
* ``tflops_eq7``: Korthikanti et al. 2022 eq. 7, F = 72 B L s h^2 (1 + s/(6h) + V/(12 h L)): model FLOPs;
  Megatron-Core's ``num_floating_point_operations`` reduces to it for MHA and a 4h GeLU MLP.
* ``iter_time_s``: the iteration time itself.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from planner.cluster_spec import resolve_cluster
from planner.cost.step import CostModel, CostOptions
from planner.cost.types import Estimate
from planner.errors import PlannerError, SpecError
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

ERA_OPTIONS = {
    # Megatron-LM 2021-2022: explicit softmax (no FlashAttention), dropout 0.1, no TP comm overlap
    # and blocking pipeline send/recv. 2021 runs trained in fp16, whose gradients Megatron-LM v2 accumulated
    # and all-reduced in fp16 (--accumulate-allreduce-grads-in-fp32 off); 2022 runs keep fp32 main grads
    # (Korthikanti Fig. 1: 18 bytes per parameter)
    "megatron2021": CostOptions(flash_attention=False, dropout=True, tp_comm_overlap=False, pp_comm_overlap=False,
                                grad_bytes=2, zero1="distributed_optimizer"),
    "megatron2022": CostOptions(flash_attention=False, dropout=True, tp_comm_overlap=False, pp_comm_overlap=False,
                                zero1="distributed_optimizer"),
    # Megatron-Core r0.8 (2024): Transformer Engine FlashAttention, --tp-comm-overlap, overlapped PP
    # communication, gradients reduced in bf16
    "mcore2024": CostOptions(flash_attention=True, dropout=True, tp_comm_overlap=True, pp_comm_overlap=True,
                             grad_bytes=2, zero1="distributed_optimizer"),
}

MICRO_BATCH_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class RunRow:
    """One published run (or a baseline the source reports beside it)."""

    id: str
    group: str
    source: str
    model: ModelSpec
    cluster: str
    num_gpus: int
    global_batch: int
    tp: int
    pp: int
    dp: int
    micro_batch: int | None
    schedule: str | None
    virtual_stages: int | None
    recompute: str | None
    sequence_parallel: bool | None
    overlap_grad_reduce: bool
    era: str
    metric: str
    published: float
    notes: str

    @property
    def unstated(self) -> tuple[str, ...]:
        out = []
        if self.micro_batch is None:
            out.append("micro-batch")
        if self.schedule is None or (self.schedule == "interleaved" and self.virtual_stages is None):
            out.append("chunks")
        if self.recompute is None:
            out.append("recompute")
        if self.sequence_parallel is None and self.tp > 1:
            out.append("sp")
        if self.era == "mcore2024":
            out.append("zero")
        return tuple(out)

    def flops_per_step(self) -> float:
        """FLOPs of one step under the row's own convention (0 for iteration-time rows)."""
        m = self.model
        B, s, l, h, V = self.global_batch, m.seq_len, m.num_layers, m.hidden_size, m.vocab_size
        if self.metric == "tflops_eq3":
            return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
        if self.metric == "tflops_eq7":
            return 72 * B * l * s * h * h * (1 + s / (6 * h) + V / (12 * h * l))
        return 0.0

    def to_time_s(self, value: float) -> float:
        """A value in the row's metric (TFLOP/s per GPU or seconds) as a step time."""
        if self.metric == "iter_time_s":
            return value
        return self.flops_per_step() / (value * 1e12 * self.num_gpus)

    def from_time_s(self, step_s: float) -> float:
        return step_s if self.metric == "iter_time_s" else self.flops_per_step() / step_s / self.num_gpus / 1e12


def _opt(text: str, kind=str):
    text = (text or "").strip()
    if not text:
        return None
    if kind is bool:
        return text.lower() in ("yes", "true", "1")
    return kind(text)


def gpt_model(name: str, layers: int, hidden: int, heads: int, ffn: int, seq: int, vocab: int) -> ModelSpec:
    """Megatron GPT as the sources train it: LayerNorm, GeLU MLP, biases, learned positions, tied embeddings."""
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_heads=heads,
                     vocab_size=vocab, seq_len=seq, norm="layernorm", activation="gelu", position_embedding="learned",
                     tied_embeddings=True, linear_bias=True, dtype="bf16", notes="calibration row")


def load_runs(path: Path | None = None) -> list[RunRow]:
    path = path or DATA_DIR / "published_runs.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    except OSError as exc:
        raise SpecError(f"cannot read calibration data {path}: {exc}") from None
    rows = []
    for r in raw:
        try:
            hidden = int(r["hidden"])
            model = gpt_model(r["model"], int(r["layers"]), hidden, int(r["heads"]),
                              _opt(r["ffn_hidden"], int) or 4 * hidden, int(r["seq_len"]), int(r["vocab"]))
            rows.append(RunRow(
                id=r["id"], group=r["group"], source=r["source"], model=model, cluster=r["cluster"],
                num_gpus=int(r["num_gpus"]), global_batch=int(r["global_batch"]), tp=int(r["tp"]), pp=int(r["pp"]),
                dp=int(r["dp"]), micro_batch=_opt(r["micro_batch"], int), schedule=_opt(r["schedule"]),
                virtual_stages=_opt(r["virtual_stages"], int), recompute=_opt(r["recompute"]),
                sequence_parallel=_opt(r["sequence_parallel"], bool),
                overlap_grad_reduce=bool(_opt(r["overlap_grad_reduce"], bool)), era=r["era"], metric=r["metric"],
                published=float(r["published"]), notes=r["notes"]))
        except (KeyError, ValueError, PlannerError) as exc:
            raise SpecError(f"{path}: row {r.get('id', '?')}: {exc}") from None
    return rows


def _schedules(row: RunRow, m: int) -> Iterator[tuple[str, int]]:
    if row.pp == 1:
        yield "1f1b", 1
        return
    per_rank = row.model.num_layers // row.pp
    if row.schedule in (None, "1f1b"):
        yield "1f1b", 1
    if row.schedule in (None, "interleaved") and m % row.pp == 0:
        vs = [row.virtual_stages] if row.virtual_stages else [v for v in range(2, per_rank + 1)
                                                               if row.model.num_layers % (row.pp * v) == 0]
        for v in vs:
            yield "interleaved", v
        if row.schedule == "interleaved" and not vs:
            yield "1f1b", 1


def candidates(row: RunRow) -> Iterator[ParallelConfig]:
    """Every configuration the row allows: stated knobs fixed, unstated ones enumerated."""
    mbs = [row.micro_batch] if row.micro_batch else [b for b in MICRO_BATCH_CHOICES
                                                    if row.global_batch % (row.dp * b) == 0]
    recs = [row.recompute] if row.recompute else ["none", "selective", "full"]
    sps = [row.sequence_parallel] if row.sequence_parallel is not None else ([False, True] if row.tp > 1 else [False])
    zeros = [0, 1] if row.era == "mcore2024" else [0]
    for b in mbs:
        m = row.global_batch // (row.dp * b)
        for (sched, v), rc, sp, z in itertools.product(list(_schedules(row, m)), recs, sps, zeros):
            if sched != "gpipe" and row.pp > 1 and m < row.pp:
                continue
            yield ParallelConfig(dp=row.dp, tp=row.tp, pp=row.pp, micro_batch_size=b,
                                 global_batch_size=row.global_batch, seq_len=row.model.seq_len, schedule=sched,
                                 virtual_stages=v, recompute=rc, sequence_parallel=sp, zero_stage=z,
                                 overlap_grad_reduce=row.overlap_grad_reduce)


@dataclass(frozen=True)
class RowPrediction:
    row: RunRow
    estimate: Estimate
    candidates: int
    fits: bool

    @property
    def predicted_time_s(self) -> float:
        return self.estimate.step_time_s

    @property
    def error(self) -> float:
        """(predicted - published) / published, on step time."""
        pub = self.row.to_time_s(self.row.published)
        return (self.predicted_time_s - pub) / pub


def cost_model_for(row: RunRow) -> CostModel:
    cluster = resolve_cluster(row.cluster, gpus=row.num_gpus)
    return CostModel(row.model, cluster, options=ERA_OPTIONS[row.era])


def predict(row: RunRow) -> RowPrediction:
    """The row's prediction: its stated configuration, or the fastest that fits over the unstated knobs."""
    cm = cost_model_for(row)
    best: Estimate | None = None
    best_any: Estimate | None = None
    n = 0
    for cfg in candidates(row):
        n += 1
        if cm.memory(cfg).fits:
            est = cm.estimate(cfg)
            if best is None or est.step_time_s < best.step_time_s:
                best = est
        elif best is None:
            est = cm.estimate(cfg)
            if best_any is None or est.step_time_s < best_any.step_time_s:
                best_any = est
    if best is None and best_any is None:
        raise SpecError(f"calibration row {row.id}: no valid configuration")
    return RowPrediction(row, best or best_any, n, best is not None)


@dataclass(frozen=True)
class MemoryRow:
    """One row of korthikanti_memory.csv (Korthikanti et al. 2022 Fig. 1), two values."""

    model: ModelSpec
    config: ParallelConfig
    mode: str
    static_gib: float
    activations_gib: float


def load_memory_rows(path: Path | None = None) -> list[MemoryRow]:
    path = path or DATA_DIR / "korthikanti_memory.csv"
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            layers, hidden = int(r["layers"]), int(r["hidden"])
            model = gpt_model(r["model"], layers, hidden, int(r["heads"]), 4 * hidden, int(r["seq_len"]),
                              int(r["vocab"]))
            tp, pp, gpus = int(r["tp"]), int(r["pp"]), int(r["gpus"])
            interleaved = "interleaved" in r["schedule"]
            sel = r["mode"] != "none"
            cfg = ParallelConfig(dp=gpus // (tp * pp), tp=tp, pp=pp, micro_batch_size=int(r["micro_batch"]),
                                 global_batch_size=int(r["global_batch"]), seq_len=int(r["seq_len"]),
                                 schedule="interleaved" if interleaved else "1f1b",
                                 virtual_stages=3 if interleaved else 1, recompute="selective" if sel else "none",
                                 sequence_parallel=sel)
            out.append(MemoryRow(model, cfg, r["mode"], float(r["params_grads_optimizer_GiB"]),
                                 float(r["activations_GiB"])))
    return out


def predict_memory(row: MemoryRow) -> tuple[float, float]:
    """(weights + gradients + optimizer of the first stage's transformer layers, first-stage activations), GiB.

    Korthikanti Fig. 1 counts the transformer layers' parameters only (it equals 18 bytes x 12 L h^2 / t
    exactly), so the embedding table on the first stage is left out of the static side here; activations
    are the whole first stage as the cost model prices it (embedding and, for pp = 1, the head included).
    """
    cluster = resolve_cluster("dgx-a100-80gb", gpus=row.config.world_size)
    cm = CostModel(row.model, cluster, options=ERA_OPTIONS["megatron2022"])
    est = cm.memory(row.config)
    static = 0.0
    for c, (lo, hi) in enumerate(row.config.chunk_layer_ranges(row.model)):
        if ParallelConfig.chunk_to_pp_rank(c, row.config.pp, row.config.schedule) == 0:
            for lt in cm.graph.layer_types:
                n = sum(1 for i in lt.layers if lo <= i < hi)
                static += n * sum(sum(cm._static(b, row.config)) for b in lt.blocks)
    return static / 2**30, est.memory_by_stage[0].activations_bytes / 2**30
