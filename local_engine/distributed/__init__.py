"""Tensor parallelism inside one engine, over ``torch.distributed``.

One process per rank: the engine's own process is rank 0 and starts the others (``executor``). Every
rank holds its shard of the model (``tp_rank`` / ``tp_size`` through the loader: its share of the
heads, KV cache, MLP and vocabulary) and runs a normal ``ModelRunner`` over it. Rank 0 schedules;
each model call it makes (a forward pass, a CUDA graph replay, the LM head) is first sent to the
other ranks (``wire``), which make the same call on their shard (``worker``), so the layers'
all-reduces and all-gathers meet. gloo on the CPU, NCCL on CUDA (``group``).
"""
