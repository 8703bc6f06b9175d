"""Expert-parallel token dispatch and combine: hand-written all-to-all with uneven splits.

Why hand-written: the list form of ``torch.distributed.all_to_all`` fails on gloo with unequal
sizes (STYLE.md point 15), and ``all_to_all_single`` is not differentiable. So the token
exchange is one ``all_to_all_single`` wrapped in an autograd function whose backward is the
reverse exchange, with the split sizes exchanged first (a fixed-size count matrix).

Layout (Megatron-LM / torchtitan "alltoall" token dispatcher):

1. every (token, k) routing pair that survives the capacity drop picks a destination EP rank,
   a holder of its expert (a replicated expert's pairs are split evenly over its holders);
2. pairs are stably sorted by (destination rank, destination expert slot), so each rank sends
   one contiguous block per destination, tokens in their original order inside it;
3. the per-slot counts travel first (``all_to_all_single`` of an ``ep x max_slots`` matrix),
   then the token rows (uneven ``all_to_all_single``);
4. the receiver regroups its rows by local expert slot (stable), runs the experts, undoes the
   regrouping and sends the rows back along the reverse splits; the source undoes its sort.

On one process (``group is None``) the same code runs with no communication, so the single
process reference and the EP run share every index computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from planner.errors import ConfigError


class _AllToAll(torch.autograd.Function):
    """Uneven all_to_all_single along dim 0; backward sends gradients back the way rows came."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_in = grad_out.new_empty((sum(ctx.in_splits),) + tuple(grad_out.shape[1:]))
        dist.all_to_all_single(grad_in, grad_out.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return grad_in, None, None, None


def all_to_all_rows(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Differentiable uneven exchange of rows; identity when there is no group (one process)."""
    if group is None:
        return x
    return _AllToAll.apply(x, out_splits, in_splits, group)


def validate_placement(placement: list[list[int]], num_experts: int, ep: int) -> None:
    """One list per EP rank; every expert held somewhere; no rank holds an expert twice."""
    if len(placement) != ep:
        raise ConfigError(f"expert placement lists {len(placement)} EP ranks, the EP group has {ep}")
    held: set[int] = set()
    for r, experts in enumerate(placement):
        if len(set(experts)) != len(experts):
            raise ConfigError(f"EP rank {r} holds an expert twice: {list(experts)}")
        for e in experts:
            if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < num_experts:
                raise ConfigError(f"EP rank {r} names expert {e!r} outside 0..{num_experts - 1}")
        held.update(experts)
    missing = sorted(set(range(num_experts)) - held)
    if missing:
        raise ConfigError(f"expert placement holds no copy of expert {missing[0]}")


@dataclass
class DispatchState:
    """What combine needs to send rows back and put them where their pairs were."""

    order: torch.Tensor
    """Kept pair indices, in send order (sorted by destination rank, then slot)."""
    send_splits: list[int]
    recv_splits: list[int]
    regroup: torch.Tensor
    """Permutation of the received rows that groups them by local expert slot."""
    num_pairs: int


class ExpertDispatcher:
    """Routes (token, expert) pairs to the EP ranks that hold the experts, and back.

    ``placement[r]`` lists the global expert ids EP rank ``r`` holds, in slot order; an expert
    may appear on several ranks (a replica, from dynamic balancing).
    """

    def __init__(self, placement: list[list[int]], num_experts: int, group=None):
        ep = 1 if group is None else dist.get_world_size(group)
        validate_placement(placement, num_experts, ep)
        self.group = group
        self.ep = ep
        self.ep_rank = 0 if group is None else dist.get_rank(group)
        self.placement = [list(p) for p in placement]
        self.num_experts = num_experts
        self.max_slots = max(len(p) for p in placement)
        holders: list[list[int]] = [[] for _ in range(num_experts)]
        slot_of: dict[tuple[int, int], int] = {}
        for r, experts in enumerate(placement):
            for s, e in enumerate(experts):
                holders[e].append(r)
                slot_of[(r, e)] = s
        self.holders = holders
        self._slot_of = slot_of
        n_holders = torch.tensor([len(h) for h in holders], dtype=torch.long)
        self._n_holders = n_holders
        # holder_key[e, j] = destination key (rank * max_slots + slot) of e's j-th holder.
        key = torch.full((num_experts, int(n_holders.max())), -1, dtype=torch.long)
        for e, hs in enumerate(holders):
            for j, r in enumerate(hs):
                key[e, j] = r * self.max_slots + slot_of[(r, e)]
        self._holder_key = key

    @property
    def local_experts(self) -> list[int]:
        return self.placement[self.ep_rank]

    def _destination_keys(self, expert_P: torch.Tensor) -> torch.Tensor:
        """Destination key of each pair; a replicated expert's pairs go to its holders in even contiguous
        chunks, rotated by the source rank so that rounding does not always favour the first holder."""
        if expert_P.numel() == 0 or int(self._n_holders.max()) == 1:
            return self._holder_key[expert_P, 0]
        n = self._n_holders[expert_P]
        # position of each pair among this source's pairs of the same expert (stable, token order)
        sorted_e, perm = torch.sort(expert_P, stable=True)
        counts = torch.bincount(expert_P, minlength=self.num_experts)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(expert_P)
        pos[perm] = torch.arange(expert_P.numel(), device=expert_P.device) - starts[sorted_e]
        chunk = (pos * n) // counts[expert_P]
        j = (chunk + self.ep_rank) % n
        return self._holder_key[expert_P, j]

    def dispatch(self, x_ND: torch.Tensor, token_P: torch.Tensor, expert_P: torch.Tensor
                 ) -> tuple[torch.Tensor, list[int], DispatchState]:
        """Send the rows ``x_ND[token_P]`` to the holders of ``expert_P``.

        Returns the received rows grouped by local expert slot, the row count per local slot
        (for this rank's experts, in ``local_experts`` order), and the state for ``combine``.
        """
        num_pairs = token_P.numel()
        if self._holder_key.device != expert_P.device:  # tables follow the tokens (cuda under NCCL)
            self._holder_key = self._holder_key.to(expert_P.device)
            self._n_holders = self._n_holders.to(expert_P.device)
        keys = self._destination_keys(expert_P)
        keys_sorted, order = torch.sort(keys, stable=True)
        ep, slots = self.ep, self.max_slots
        send_counts = torch.bincount(keys_sorted, minlength=ep * slots).view(ep, slots)
        if self.group is None:
            recv_counts = send_counts
        else:
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts.view(-1), send_counts.reshape(-1), group=self.group)
        send_splits = send_counts.sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()
        rows = all_to_all_rows(x_ND[token_P[order]], recv_splits, send_splits, self.group)
        # received rows come source by source, each block ordered by slot; regroup by slot, stably
        slot_of_row = torch.repeat_interleave(torch.arange(slots, device=rows.device).repeat(ep), recv_counts.reshape(-1))
        _, regroup = torch.sort(slot_of_row, stable=True)
        per_slot = recv_counts.sum(0).tolist()[: len(self.local_experts)]
        state = DispatchState(order=order, send_splits=send_splits, recv_splits=recv_splits,
                              regroup=regroup, num_pairs=num_pairs)
        return rows[regroup], per_slot, state

    def combine(self, y_RD: torch.Tensor, state: DispatchState) -> torch.Tensor:
        """Inverse of ``dispatch``: one row per pair, in the caller's pair order."""
        back = torch.empty_like(y_RD)
        back = back.index_copy(0, state.regroup, y_RD)  # undo regrouping (differentiable)
        rows = all_to_all_rows(back, state.send_splits, state.recv_splits, self.group)
        out = y_RD.new_zeros((state.num_pairs,) + tuple(y_RD.shape[1:]))
        return out.index_copy(0, state.order, rows)
