"""Gradient compression as the cost model sees it: bytes on the wire, codec time, collective kind.

Pure python (no torch): the cost model (planner/cost/, planner/collectives.py) prices DP gradient sync
with these terms and the search treats ``ParallelConfig.compression`` as a dimension. The runtime that
executes each method is ``runtime/compression.py`` (DDP communication hooks); the formulas below describe
exactly what those hooks send, so prediction and execution agree.

Methods (``ParallelConfig.compression``):

=========  =====================================  ==============  ===============================
method     what each rank sends per element set    collective      source
=========  =====================================  ==============  ===============================
none       n * dtype_bytes                         all-reduce      ring all-reduce (DDP default)
fp16/bf16  n * 2                                   all-reduce      torch ``fp16_compress_hook``
int8       n * 1 + 4 (one fp32 scale per chunk)    all-reduce [1]  ZeRO++ qgZ (Wang et al. 2023 Sec 4.3)
topk       k * (dtype_bytes + 4), k = ceil(f * n)  all-gather [2]  Lin et al. 2018 (DGC), EF: Stich 2018
powersgd   r * (rows + cols) * dtype_bytes per     all-reduce x2   Vogels et al. 2019, Alg. 1
           matrix (shape model below)
=========  =====================================  ==============  ===============================

[1] int8 cannot be summed in int8 (p contributions overflow), so the hook does what ZeRO++'s quantised
    gradient reduction does: an all-to-all of int8 chunks (each rank receives the p contributions to its
    1/p share: the reduce-scatter), dequantise + sum + re-quantise locally, then an all-gather of the int8
    shares. Each rank sends 2 (p-1)/p * payload bytes, the same scaling as a ring all-reduce, so
    ``collective_kind('int8') == 'all_reduce'`` and the cost model prices it as one.
[2] top-k indices differ between ranks, so the (value, index) pairs cannot be summed in flight: every rank
    all-gathers everyone's pairs and scatter-adds them. A ring all-gather sends (p-1) * payload bytes per
    rank: the cost GROWS linearly with the DP size p while a ring all-reduce's 2 (p-1)/p * n * b stays
    flat. top-k therefore wins only while p * f * (b + 4) < 2 * b; at f = 1 % and fp32 (b = 4) that is
    p < 100. ``collective_kind('topk') == 'all_gather'`` tells the cost model to price it that way.

PowerSGD shape model. PowerSGD compresses each gradient *matrix* M (rows x cols) to P = M Q (rows x r) and
Q = M^T P (cols x r), so its payload depends on the shapes, not only on n. torch's ``powerSGD_hook`` views
every parameter as (shape[0], -1) and sends uncompressed any matrix where compression saves less than 2x
(``min_compression_rate=2``). With ``hidden`` (the model's hidden size h) given, the element set is taken to
be GPT transformer layers: QKV (3h x h), attention projection (h x h), MLP up (4h x h) and down (h x 4h),
which hold 12 h^2 elements and sum to rows + cols = 4h + 2h + 5h + 5h = 16h per layer (Narayanan et al.
2021 Sec 3 layer shapes), so the payload is n * 16 r / (12 h) = n * 4r / (3h) elements. Without ``hidden``
the element set is one square matrix of side sqrt(n): payload 2 r sqrt(n) (a lower bound; pass ``hidden``).
Vectors (biases, norms) are a negligible share of an LLM and are ignored here.

Codec time is memory-bound work on the compute stream (torch runs DDP hooks inside backward; the encode and
decode are not overlapped with compute), counted in passes over the gradient in HBM (see
``_CODEC_BYTES_PER_ELEMENT``); PowerSGD adds three rank-r matmuls (6 r flops per element), priced on a
roofline when ``peak_flops`` is given. The cost model should add ``codec_time_s`` to the backward compute
of the bucket, never hide it under communication.

TP communication overlap: torch on CPU/gloo has no asynchronous TP collective overlap (no
``torch._inductor`` micro-pipelined TP on CPU; DTensor TP collectives are blocking), so the cost model
should expose TP collectives fully. DP gradient reduction does overlap with backward: the hooks return
futures and DDP launches each bucket asynchronously as soon as it is ready.

Accuracy cost (what tests/runtime/test_compression_convergence.py measures, see ``ACCURACY_NOTES``): the
planner cannot price accuracy in seconds, so a lossy method should be chosen only when it shortens the
predicted step by at least ``LOSSY_MIN_STEP_GAIN``.
"""

from __future__ import annotations

import math

from planner.errors import ConfigError

METHODS = ("none", "fp16", "bf16", "int8", "topk", "powersgd")
"""Must equal planner.parallel_config.COMPRESSION (tested)."""

INDEX_BYTES = 4
"""top-k sends int32 indices beside the values (runtime/compression.py packs both in one int32 tensor)."""
SCALE_BYTES = 4
"""int8 sends one fp32 scale per chunk it quantises."""
POWERSGD_MIN_COMPRESSION_RATE = 2.0
"""torch powerSGD_hook default: a matrix is compressed only if that divides its size by >= 2."""
DEFAULT_TOPK_FRACTION = 0.01
"""Kept fraction when compression_param is 0. Lin et al. 2018 keep 0.1 % on large models (with momentum
correction and warm-up); our tiny-model test loses +32 % final loss at 1 % and +3.7 % at 10 % (ACCURACY_NOTES):
small models have few redundant gradient entries, large ones many."""
DEFAULT_POWERSGD_RANK = 4
"""Rank when compression_param is 0 (Vogels et al. 2019 Table 3: rank 2-4 matches SGD on their tasks)."""

LOSSY_MIN_STEP_GAIN = 0.05
"""A lossy method should be chosen only when it shortens the predicted step time by >= 5 %: the accuracy
cost is not in seconds, and a marginal speed-up is not worth the convergence risk (see ACCURACY_NOTES)."""

ACCURACY_NOTES: dict[str, str] = {
    # Measured by tests/runtime/test_compression_convergence.py: 2 gloo ranks, 16-64-64-4 MLP, SGD momentum,
    # 300 steps; relative difference of the final held-out loss vs uncompressed (0.0457), and the tolerance
    # the test enforces. Per-step bounds: tests/runtime/test_compression.py.
    "none": "lossless: bit-identical to plain all-reduce (tested).",
    "fp16": "per-step error <= p * 2^-11 * mean|g| per element; convergence +0.00 % (tolerance 1 %). "
            "Overflows above 65504 (grads are divided by p first, as torch's fp16 hook).",
    "bf16": "per-step error <= p * 2^-8 * mean|g| per element; convergence +0.01 % (tolerance 1 %).",
    "int8": "per-step error <= max|g| / 127 per element (contribution + share rounding); convergence "
            "+0.06 % (tolerance 2 %).",
    "topk": "biased per step (drops 1 - f of the entries) but error feedback re-sends the residual later "
            "(Stich et al. 2018); at f = 10 %: convergence +3.7 % (tolerance 10 %), slower early progress; "
            "at f = 1 %: +32 % after 300 steps (not a tested setting).",
    "powersgd": "rank-r projection of the error-corrected mean gradient per matrix (Vogels et al. 2019); "
                "at rank 2 after 10 uncompressed warm-up steps: convergence +2.4 % (tolerance 10 %); "
                "rank 1: +18 %.",
}

# Bytes of HBM traffic per gradient element for encode + decode, for grads of 4 bytes (g = 4):
#   fp16/bf16: read g + write 2 (cast), read 2 + write g (cast back)                     = 2g + 4
#   int8:      absmax read g; quantise read g + write 1; all-to-all share: read 1, write g (sum),
#              re-quantise read g + write 1; dequantise all-gathered: read 1 + write g   = 5g + 4
#   topk:      error feedback read 2g + write g; selection ~4 passes (|acc| read g + write g, threshold
#              compare + compaction read g + read g/4; runtime/compression.py samples the threshold as
#              Lin et al. 2018 Sec 3.3; torch.topk's GPU radix select also makes ~4 passes over 32-bit
#              keys); residual write g; output zero-fill write g                           = 9g
#   powersgd:  error feedback read 2g + write g; M Q read g; M^T P read g; P Q^T write g; new error
#              read 2g + write g (Vogels et al. 2019 Alg. 2 with error feedback)           = 9g
# (scatter-add of top-k's p * k received pairs is added separately: it scales with the DP size.)


def _codec_bytes_per_element(method: str, g: int) -> float:
    return {"none": 0.0, "fp16": 2 * g + 4, "bf16": 2 * g + 4, "int8": 5 * g + 4,
            "topk": 9 * g, "powersgd": 9 * g}[method]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"compression must be one of {', '.join(METHODS)}, got {method!r}")


def check_combination(grad_sync: str, method: str) -> None:
    """Which (grad_sync, compression) pairs the runtime executes. The casts (fp16/bf16) compose with any
    topology; int8 / topk / powersgd run their own collectives over the flat DP group."""
    check_method(method)
    if method in ("int8", "topk", "powersgd") and grad_sync != "allreduce":
        raise ConfigError(f"compression {method} runs its own collectives over the DP group; it needs "
                          f"grad_sync allreduce, got {grad_sync}")


def is_lossless(method: str) -> bool:
    check_method(method)
    return method == "none"


def all_reducible(method: str) -> bool:
    """True when the compressed payloads of the ranks can be combined in flight (sum of ring all-reduce
    / reduce-scatter + all-gather); False for top-k, whose payloads are all-gathered."""
    return collective_kind(method) == "all_reduce"


def collective_kind(method: str) -> str:
    """'all_reduce' (bytes per rank 2 (p-1)/p * payload) or 'all_gather' (bytes per rank (p-1) * payload)."""
    check_method(method)
    return "all_gather" if method == "topk" else "all_reduce"


def sequential_collectives(method: str) -> int:
    """Collectives per bucket that run one after the other (latency terms): PowerSGD sends P, then Q."""
    check_method(method)
    return 2 if method == "powersgd" else 1


def effective_param(method: str, param: float) -> float:
    """compression_param with its documented default when 0 (kept fraction for topk, rank for powersgd)."""
    check_method(method)
    if method == "topk":
        f = param or DEFAULT_TOPK_FRACTION
        if not 0 < f <= 1:
            raise ConfigError(f"topk kept fraction must be in (0, 1], got {param!r}")
        return f
    if method == "powersgd":
        r = param or DEFAULT_POWERSGD_RANK
        if r < 1 or r != int(r):
            raise ConfigError(f"powersgd rank must be a positive integer, got {param!r}")
        return float(int(r))
    return param


def topk_count(n_elements: int, fraction: float) -> int:
    """Entries kept by top-k (at least one); the runtime uses the same rounding."""
    return max(1, min(n_elements, math.ceil(fraction * n_elements)))


def powersgd_elements_sent(n_elements: int, rank: int, hidden: int | None = None) -> float:
    """Elements of P and Q for an element set under the shape model of the module docstring."""
    if n_elements <= 0:
        return 0.0
    if hidden:
        # GPT layer: (3h x h), (h x h), (4h x h), (h x 4h): 12 h^2 elements, rows + cols = 16 h.
        per_layer = [(3 * hidden, hidden), (hidden, hidden), (4 * hidden, hidden), (hidden, 4 * hidden)]
        layer_elems = 12 * hidden * hidden
        sent = sum(_powersgd_matrix_elements(r_, c_, rank) for r_, c_ in per_layer)
        return n_elements * sent / layer_elems
    side = math.sqrt(n_elements)
    return min(float(n_elements), _powersgd_matrix_elements(side, side, rank))


def _powersgd_matrix_elements(rows: float, cols: float, rank: int) -> float:
    compressed = rank * (rows + cols)
    uncompressed = rows * cols
    # torch _should_compress: compress only if uncompressed / compressed > min_compression_rate
    return compressed if uncompressed > POWERSGD_MIN_COMPRESSION_RATE * compressed else uncompressed


def payload_bytes(method: str, n_elements: int, param: float, dtype_bytes: int, *,
                  hidden: int | None = None) -> float:
    """Bytes ONE rank contributes to the collective for an element set of ``n_elements`` gradient entries
    held in ``dtype_bytes`` each (the message size the collective moves; see ``sync_bytes_per_rank`` for
    the bytes a rank actually sends in a ring). ``param``: kept fraction (topk) or rank (powersgd), 0 for
    the default. ``hidden``: model hidden size, for PowerSGD's shape model."""
    check_method(method)
    if n_elements < 0 or dtype_bytes <= 0:
        raise ConfigError(f"payload_bytes needs n_elements >= 0 and dtype_bytes > 0, got {n_elements}, "
                          f"{dtype_bytes}")
    if n_elements == 0:
        return 0.0
    param = effective_param(method, param)
    if method == "none":
        return float(n_elements * dtype_bytes)
    if method in ("fp16", "bf16"):
        return float(n_elements * min(2, dtype_bytes))
    if method == "int8":
        return float(n_elements * 1 + SCALE_BYTES)
    if method == "topk":
        return float(topk_count(n_elements, param) * (dtype_bytes + INDEX_BYTES))
    return powersgd_elements_sent(n_elements, int(param), hidden) * dtype_bytes


def sync_bytes_per_rank(method: str, n_elements: int, param: float, dtype_bytes: int, group_size: int, *,
                        hidden: int | None = None) -> float:
    """Bytes each rank sends to sync one element set over a flat ring of ``group_size`` ranks:
    all-reduce 2 (p-1)/p * payload (Patarasuk & Yuan 2009), all-gather (p-1) * payload (Thakur et al. 2005).
    The bench (bench/comm_sync.py) prints this beside its measured times."""
    if group_size <= 1:
        return 0.0
    payload = payload_bytes(method, n_elements, param, dtype_bytes, hidden=hidden)
    p = group_size
    if collective_kind(method) == "all_gather":
        return (p - 1) * payload
    return 2 * (p - 1) / p * payload


def codec_time_s(method: str, n_elements: int, param: float, hbm_bytes_per_s: float, *, dtype_bytes: int = 4,
                 group_size: int = 2, peak_flops: float | None = None, hidden: int | None = None) -> float:
    """Encode + decode time for one element set on one rank: HBM passes (``_codec_bytes_per_element``)
    over ``hbm_bytes_per_s``; top-k adds the scatter-add of the p * k received pairs; PowerSGD adds its
    three rank-r matmuls (2 r flops per element each) on a roofline when ``peak_flops`` is given (at small
    rank they are memory-bound and the passes already count their reads)."""
    check_method(method)
    if hbm_bytes_per_s <= 0:
        raise ConfigError(f"hbm_bytes_per_s must be positive, got {hbm_bytes_per_s}")
    if n_elements <= 0 or method == "none":
        return 0.0
    param = effective_param(method, param)
    mem_bytes = _codec_bytes_per_element(method, dtype_bytes) * n_elements
    if method == "topk":
        # read each received (value, index) pair, read-modify-write its target entry
        mem_bytes += group_size * topk_count(n_elements, param) * (dtype_bytes + INDEX_BYTES + 2 * dtype_bytes)
    t = mem_bytes / hbm_bytes_per_s
    if method == "powersgd" and peak_flops:
        compressed = powersgd_elements_sent(n_elements, int(param), hidden)
        if compressed < n_elements:  # matmuls run only when the set is compressed
            t = max(t, 3 * 2 * int(param) * n_elements / peak_flops)
    return t
