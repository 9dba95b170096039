"""A tensor-parallel rank other than 0: loads its shard, builds a ``ModelRunner`` over it, then
makes every model call rank 0 sends until told to stop or rank 0 goes away.

Handshake over the pipe to rank 0: the worker sends ``("loaded",)`` once its weights are in and
waits for ``("start",)``, sent when every rank has loaded; only then do the ranks join the process
group and build their runners, whose set-up may run collectives (a CUDA profiling pass, graph
captures) that all must enter within the collective timeout however long loading took. Then it
sends ``("ready", num_blocks)``. Any failure is sent as ``("failed", message)`` before the process
exits with status 1.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import traceback
from multiprocessing.connection import Connection

import torch

from local_engine.config import EngineConfig
from local_engine.distributed import group, wire
from local_engine.engine.model_runner import ModelRunner
from local_engine.loader import load_model

logger = logging.getLogger(__name__)


def _follow(runner: ModelRunner, conn: Connection) -> None:
    """Make each model call rank 0 sends, on this rank's shard and KV cache."""
    model, device = runner.model, runner.device
    while True:
        command = wire.receive(conn, device)
        kind = command[0]
        if kind == "forward":
            _, input_ids, positions, meta = command
            model(input_ids, positions, runner.kv_caches, meta)
        elif kind == "graph":
            assert runner.decode_graphs is not None  # rank 0 replays only graphs every rank captured
            runner.decode_graphs.run(*command[1:])
        elif kind == "logits":
            model.compute_logits(command[1])
        elif kind == "stop":
            return
        else:
            raise ValueError(f"unknown tensor-parallel command {kind!r}")


def run_worker(
    rank: int, world_size: int, store_port: int, config: EngineConfig, conn: Connection, log_level: int
) -> None:
    """The process entry point (``multiprocessing`` spawn target) of rank ``rank``; it logs at rank
    0's level for the engine's loggers."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s tp-rank-{rank} %(levelname)s %(message)s")
    try:
        config = dataclasses.replace(config, device=group.rank_device(config.device, rank), warmup=False)
        if config.device == "cpu":
            torch.set_num_threads(max(1, config.threads() // world_size))
        loaded = load_model(
            config.model, dtype=config.torch_dtype, device=config.device, tp_rank=rank, tp_size=world_size
        )
        conn.send(("loaded",))
        if conn.recv() != ("start",):
            return
        group.join(store_port, rank, world_size, config.device)
        view = dataclasses.replace(loaded, config=group.rank_view(loaded.config, world_size))
        runner = ModelRunner(config, view)
        conn.send(("ready", runner.num_blocks))
        with torch.inference_mode():
            _follow(runner, conn)
    except EOFError:
        return  # rank 0 is gone: nothing left to follow (the group is not torn down with a peer gone)
    except BaseException as exc:
        message = "".join(traceback.format_exception_only(exc)).strip()
        logger.error("tensor-parallel rank %d failed:\n%s", rank, traceback.format_exc())
        try:
            conn.send(("failed", message))
        except OSError:
            pass
        sys.exit(1)
    group.leave()
