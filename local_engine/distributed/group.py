"""The tensor-parallel process group: backend and device per rank, rendezvous on loopback, and the
per-rank view of a model's shape."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import torch
import torch.distributed as dist

from local_engine.models.config import ModelConfig

# How long a collective may wait for a rank that is alive but not arriving. Ranks enter a step's
# collectives together (rank 0 sends the step first), so only a stuck rank ever waits this long; a
# rank that dies closes its sockets and its peers fail at once. It also bounds the rendezvous,
# which happens before any rank loads weights.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
_HOST = "127.0.0.1"


def backend_for(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str, rank: int) -> str:
    """Rank ``rank``'s device: the CPU for every rank, or the ``rank``-th GPU from ``device``'s."""
    parsed = torch.device(device)
    if parsed.type != "cuda":
        return device
    return f"cuda:{(parsed.index or 0) + rank}"


def open_store(world_size: int) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free loopback port (``store.port`` for the other ranks)."""
    return dist.TCPStore(_HOST, 0, world_size, True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)


def join(store: dist.Store | int, rank: int, world_size: int, device: str) -> None:
    """Join the default process group: rank 0 with its ``open_store``, the others with its port."""
    if isinstance(store, int):
        store = dist.TCPStore(_HOST, store, world_size, False, timeout=COLLECTIVE_TIMEOUT)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        backend_for(device), store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
    )
    # NCCL creates its communicator on the first collective, which must not be one inside a CUDA
    # graph capture (the runner captures without a profiling pass when the KV budget is given).
    dist.all_reduce(torch.zeros(1, device=device))


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_view(config: ModelConfig, tp_size: int) -> ModelConfig:
    """``config`` with one rank's attention heads and KV heads (what its KV cache holds); KV heads
    fewer than the ranks are replicated, one per rank."""
    return dataclasses.replace(
        config,
        num_attention_heads=config.num_attention_heads // tp_size,
        num_key_value_heads=max(1, config.num_key_value_heads // tp_size),
    )
