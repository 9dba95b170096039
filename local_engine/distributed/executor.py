"""Rank 0's side of tensor parallelism: starts and supervises one process per other rank, and runs
the engine's steps on a normal ``ModelRunner`` whose model calls are sent to those ranks first.

A rank that dies (killed, crashed, out of memory) ends the engine: a watcher thread sees its process
exit at once and logs why; the step in flight fails as its collective loses the peer (gloo closes
the connection; NCCL's communicator is aborted), and every later step raises
``TensorParallelError`` naming the rank before it touches the group.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import threading
import weakref
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist

from local_engine.attention.metadata import AttentionMetadata
from local_engine.config import EngineConfig
from local_engine.distributed import group, wire
from local_engine.distributed.worker import run_worker
from local_engine.engine.cuda_graph import DecodeGraphRunner
from local_engine.engine.model_runner import ModelRunner, StepResult
from local_engine.engine.scheduler import SchedulerOutput
from local_engine.loader import LoadedModel

logger = logging.getLogger(__name__)

# How long a failed step waits for the watcher to find a dead rank, to name it in the error.
_REAP_SECONDS = 5.0
# How long shutdown waits for a rank to stop before killing it.
_STOP_SECONDS = 5.0


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank failed or died; the engine cannot run further steps."""


def make_runner(config: EngineConfig, loaded: LoadedModel) -> ModelRunner | TensorParallelRunner:
    """The engine's runner: a plain ``ModelRunner`` for one device, else the tensor-parallel one."""
    if config.tensor_parallel_size == 1:
        return ModelRunner(config, loaded)
    return TensorParallelRunner(config, loaded)


class _MirroredModel:
    """Rank 0's model as its ``ModelRunner`` calls it: each call goes to the other ranks first."""

    def __init__(self, model: torch.nn.Module, conns: list[Connection]) -> None:
        self._model = model
        self._conns = conns

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        wire.send(self._conns, ("forward", input_ids, positions, meta))  # each rank has its own cache
        return self._model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        wire.send(self._conns, ("logits", hidden))
        return self._model.compute_logits(hidden)  # type: ignore[operator]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _MirroredGraphs:
    """Rank 0's captured decode graphs: each replay goes to the other ranks (which captured theirs
    in the same order, collectives included) first."""

    def __init__(self, graphs: DecodeGraphRunner, conns: list[Connection]) -> None:
        self._graphs = graphs
        self._conns = conns

    def bucket_for(self, num_seqs: int) -> int | None:
        return self._graphs.bucket_for(num_seqs)

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        wire.send(self._conns, ("graph", *inputs))
        return self._graphs.run(*inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graphs, name)


def _stop_ranks(processes: list[BaseProcess], conns: list[Connection]) -> None:
    """Ask every other rank to stop, kill those that do not within ``_STOP_SECONDS``, leave the group."""
    for conn in conns:
        try:
            wire.send([conn], ("stop",))
        except OSError:
            pass  # already gone
    for process in processes:
        process.join(_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
    for conn in conns:
        conn.close()
    group.leave()


def _exit_reason(process: BaseProcess, conn: Connection) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with status {code}"
    try:
        if conn.poll():
            message = conn.recv()
            if message[0] == "failed":
                how += f": {message[1]}"
    except (OSError, EOFError):
        pass
    return how


class TensorParallelRunner:
    """``ModelRunner``'s interface over ``config.tensor_parallel_size`` ranks, this process rank 0.

    ``num_blocks`` is the smallest KV cache of all ranks (a GPU's free memory may differ); other
    attributes are rank 0's runner's. ``shutdown()`` stops the other ranks (so does garbage
    collection, and their pipe closing when this process exits). One per process: the layers'
    collectives use the default process group.
    """

    def __init__(self, config: EngineConfig, loaded: LoadedModel) -> None:
        size = config.tensor_parallel_size
        if loaded.tp_size != size:
            raise ValueError(
                f"tensor_parallel_size {size}: the model was loaded as {loaded.tp_size} shard(s); "
                f"load it with load_model(..., tp_size={size})"
            )
        if dist.is_initialized():
            raise TensorParallelError("this process already runs a tensor-parallel engine (one per process)")
        self._closing = False
        self._failure: str | None = None  # set by the watcher thread, the only one reaping ranks
        self._failed = threading.Event()
        self._backend = group.backend_for(config.device)
        if config.device == "cpu":
            torch.set_num_threads(max(1, config.threads() // size))  # the ranks share the cores
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLogger("local_engine").getEffectiveLevel()
        store = group.open_store(size)
        self._processes: list[BaseProcess] = []
        self._conns: list[Connection] = []
        for rank in range(1, size):
            parent, child = context.Pipe()
            process = context.Process(
                target=run_worker,
                args=(rank, size, store.port, config, child, log_level),
                name=f"switchyard-tp-rank-{rank}",
                daemon=True,  # ends with this process even when shutdown() is never called
            )
            process.start()
            child.close()
            self._processes.append(process)
            self._conns.append(parent)
        self._finalizer = weakref.finalize(self, _stop_ranks, self._processes, self._conns)
        try:
            self._await_all("loaded")
            for conn in self._conns:
                conn.send(("start",))
            group.join(store, 0, size, config.device)
            view = dataclasses.replace(loaded, config=group.rank_view(loaded.config, size))
            self._runner = ModelRunner(config, view)
            blocks = [int(message[1]) for message in self._await_all("ready")]
        except BaseException:
            self.shutdown()
            raise
        self._runner.model = _MirroredModel(self._runner.model, self._conns)  # type: ignore[assignment]
        if self._runner.decode_graphs is not None:
            graphs = _MirroredGraphs(self._runner.decode_graphs, self._conns)
            self._runner.decode_graphs = graphs  # type: ignore[assignment]
        self.num_blocks = min(self._runner.num_blocks, *blocks)
        self.max_model_len = self._runner.max_model_len
        sentinels = [p.sentinel for p in self._processes]
        watch_args = (weakref.ref(self), sentinels)
        threading.Thread(target=_watch, args=watch_args, name="tp-watch", daemon=True).start()
        logger.info(
            "tensor parallel: %d ranks over %s, %d KV blocks each", size, self._backend, self.num_blocks
        )

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of ranks 1.. (rank 0 is this process)."""
        return [p.pid for p in self._processes if p.pid is not None]

    def execute(self, batch: SchedulerOutput) -> StepResult:
        if self._failure is not None:
            raise TensorParallelError(self._failure)
        try:
            return self._runner.execute(batch)
        except Exception as exc:  # a collective or a pipe losing a dead rank
            if not self._failed.wait(_REAP_SECONDS):
                raise
            raise TensorParallelError(self._failure) from exc

    def shutdown(self) -> None:
        """Stop the other ranks and leave the process group (idempotent)."""
        self._closing = True
        self._finalizer()

    def __getattr__(self, name: str) -> Any:
        if name == "_runner":  # not built (a failed __init__)
            raise AttributeError(name)
        return getattr(self._runner, name)

    # -- supervision ---------------------------------------------------------------------------

    def _await_all(self, kind: str) -> list[tuple[Any, ...]]:
        """Each other rank's next message, which must be ``kind``; raises as soon as one fails."""
        messages: list[tuple[Any, ...]] = []
        for rank, (process, conn) in enumerate(zip(self._processes, self._conns, strict=True), 1):
            wait([conn, process.sentinel])
            if not conn.poll():
                process.join(_REAP_SECONDS)
                raise TensorParallelError(f"tensor-parallel rank {rank} {_exit_reason(process, conn)}")
            message = conn.recv()
            if message[0] != kind:
                detail = message[1] if message[0] == "failed" else repr(message)
                raise TensorParallelError(f"tensor-parallel rank {rank} failed: {detail}")
            messages.append(message)
        return messages

    def _rank_ended(self, ended: list[int]) -> None:
        """Another rank's process ended (its sentinel is in ``ended``): fail the engine now."""
        for rank, (process, conn) in enumerate(zip(self._processes, self._conns, strict=True), 1):
            if process.sentinel in ended:
                process.join()
                self._failure = (
                    f"tensor-parallel rank {rank} (pid {process.pid}) {_exit_reason(process, conn)}; "
                    "the engine cannot run further steps"
                )
                break
        self._failed.set()
        logger.error("%s", self._failure)
        if self._backend == "nccl":
            # A collective waiting for the dead rank would hang on the GPU; aborting the
            # communicator makes it fail (gloo fails by itself when the peer's socket closes).
            dist.distributed_c10d._abort_process_group()


def _watch(runner: weakref.ref[TensorParallelRunner], sentinels: list[int]) -> None:
    """The watcher thread: waits for any other rank's process to end (holding the runner only
    weakly, so dropping it still stops the ranks)."""
    ended = wait(sentinels)
    alive = runner()
    if alive is not None and not alive._closing:
        alive._rank_ended(ended)  # type: ignore[arg-type]
