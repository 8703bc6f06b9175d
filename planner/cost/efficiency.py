"""The hardware efficiency model: the few calibrated constants of the cost model, each named and explained.

Every calibration row (``planner/data/published_runs.csv``, ``python -m planner validate``) is priced with
these same numbers; nothing is fitted per row. They were set by hand against two kinds of evidence:

1. Korthikanti et al. 2022 Table 4 (one GPT-22B layer on 8 A100s, tp 8, b 4, s 2048: forward 7.7 ms,
   backward 11.9 ms; with sequence parallelism 7.2 / 11.8 ms; selective recompute adds 1.3 ms, full recompute
   7.6 ms): a per-layer breakdown that separates matmul, elementwise and TP-communication time;
2. the end-to-end rows of the calibration table (A100: Narayanan et al. 2021 Table 1, Korthikanti Table 5;
   H100: Megatron-Core README weak scaling), which fix the achieved matmul efficiency per GPU generation.

GEMM time = FLOPs / (peak x efficiency(n)), with efficiency(n) = GEMM_EFF_MAX x n / (n + GEMM_HALF_DIM): n is
the geometric mean of the matmul's dimensions on one rank (tokens of the micro-batch, output width / tp,
input width), a size measure that tracks how well the matmul fills the GPU.
Large matmuls reach GEMM_EFF_MAX of the datasheet peak; a dimension of GEMM_HALF_DIM halves it (tile
quantisation and too few thread blocks to fill the SMs: NVIDIA "Matrix Multiplication Background" guide).
"""

from __future__ import annotations

GEMM_EFF_MAX = {"ampere": 0.77, "hopper": 0.56, "default": 0.70}
"""Achieved / peak dense 16-bit matmul throughput for large matmuls inside a training step. A100: cuBLAS
reaches ~250 of 312 TFLOP/s on large bf16 GEMMs (NVIDIA DL performance guide); H100 SXM: ~650-700 of
989 TFLOP/s (power/clock-limited under sustained load). Chosen against the calibration rows (A100 / H100)."""

GEMM_HALF_DIM = 500
"""Smallest matmul dimension at which efficiency halves (see module docstring)."""

ATTENTION_CORE_EFF = 0.5
"""Batched QK^T / AV matmuls (head dim 64-128 as the inner dimension) run at this share of the large-GEMM
efficiency: their K = head_dim is small (Korthikanti Table 4: selective recompute of the attention core
costs 1.3 ms where its FLOPs alone would take 0.2 ms)."""

FLASH_ATTENTION_EFF = 0.45
"""FlashAttention-2 forward reaches ~70-75% of peak on A100 / ~60-70% on H100 relative to the same device's
large-GEMM efficiency (Dao 2023 Fig. 4-6), causal masking skipping half the blocks."""

HBM_EFFICIENCY = 0.80
"""Achieved / spec-sheet HBM bandwidth of streaming elementwise kernels (norm, dropout, bias-GeLU, softmax):
STREAM-like copies reach ~1.6 of 2.0 TB/s on A100 80GB and ~2.6-2.8 of 3.35 TB/s on H100."""

BACKWARD_ELEMENTWISE_FACTOR = 2.0
"""Elementwise backward kernels read the saved input and the output gradient and write the input
gradient: twice the forward traffic."""

KERNEL_LAUNCH_S = 4e-6
"""Per-kernel launch and scheduling overhead (CUDA launch latency ~3-5 us; PyTorch eager dispatch)."""

KERNELS_PER_BLOCK_FWD = 8
"""Kernels one attention or MLP block launches in forward (norm, matmuls, fused elementwise, collective)."""

TP_COMM_OVERLAP_BWD = 0.5
"""Share of the backward TP communication hidden behind the weight-gradient matmul: Megatron overlaps the
column-parallel input-gradient all-reduce (one of the two per block pair) with the weight-gradient GEMM
(Narayanan et al. 2021 Sec 4; ``async_tensor_model_parallel_allreduce``)."""

OPTIMIZER_BYTES_PER_PARAM = 36
"""HBM traffic of one mixed-precision Adam step per parameter: read fp32 grad, master, m, v (16), write
master, m, v (12), write the 16-bit copy (2), zero the grad buffer (4) and read it for the norm clip (2)."""

MOE_IMBALANCE = 1.15
"""Tokens on the busiest expert rank / mean (dropless routing with auxiliary load-balancing loss): the
all-to-all and expert matmuls wait for the most loaded rank (Megatron-Core MoE / DeepSeek-V3 reports show
10-20% imbalance at steady state)."""

FRAMEWORK_OVERHEAD_BYTES = {"ampere": 2.0 * 2**30, "hopper": 2.0 * 2**30, "default": 2.0 * 2**30,
                            "cpu": 0.25 * 2**30}
"""GPUs: CUDA context, cuBLAS / NCCL workspaces and allocator fragmentation per GPU (~1.5-3 GiB observed).
CPU processes (the ``cpu`` cluster): a forked torch process with gloo, ~250 MiB RSS beyond its tensors
(measured here with ``ps -o rss`` on a runtime worker of the tiny models)."""

MEMORY_SAFETY_MARGIN = 0.05
"""Share of device memory kept free: the search never returns a plan above (1 - margin) x memory."""


def device_family(device_name: str) -> str:
    """'ampere' (A100), 'hopper' (H100 / H200 / H800), 'cpu' (local CPU processes) or 'default'."""
    n = device_name.upper()
    if n.startswith("CPU"):
        return "cpu"
    if "A100" in n or "A800" in n or "A30" in n:
        return "ampere"
    if "H100" in n or "H200" in n or "H800" in n or "H20" in n:
        return "hopper"
    return "default"


def gemm_efficiency(family: str, smallest_dim: float) -> float:
    """Achieved share of peak for a matmul whose smallest dimension is ``smallest_dim``."""
    n = max(float(smallest_dim), 1.0)
    return GEMM_EFF_MAX.get(family, GEMM_EFF_MAX["default"]) * n / (n + GEMM_HALF_DIM)
