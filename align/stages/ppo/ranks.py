"""What every process of an `accelerate launch` run must agree on: the same starting weights, averaged gradients,
averaged metrics. Each is a no-op in a single process, so the training loop reads the same either way."""

from __future__ import annotations

import torch


def average_gradients(params: list[torch.Tensor], state) -> None:
    """Mean of every process's gradients (LoRA and heads are small: one flat all-reduce)."""
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= state.num_processes
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
        offset += g.numel()


def broadcast_from_main(params: list[torch.Tensor], state) -> None:
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def mean_over_processes(values: dict, state) -> dict:
    if state.num_processes == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=state.device)
    dist.all_reduce(tensor)
    return {k: v / state.num_processes for k, v in zip(keys, tensor.tolist())}


def gather_all(values: torch.Tensor, state) -> torch.Tensor:
    if state.num_processes == 1:
        return values
    import torch.distributed as dist

    parts = [torch.zeros_like(values) for _ in range(state.num_processes)]
    dist.all_gather(parts, values)
    return torch.cat(parts)
