"""How rank 0 hands each model call to the other ranks: a pickled command down a pipe per rank.

Host data travels in the pickle, CPU tensors as their raw bytes (pickle's own route for a
tensor goes through ``torch.save`` per storage, about 1.5 ms a step). Device tensors stay on the
device: the pickle carries their shape and dtype, and the tensors follow by ``broadcast`` from
rank 0 over the process group (NCCL), in the order the pickle names them.
"""

from __future__ import annotations

import io
import pickle
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

Command = tuple[Any, ...]
# A tensor in the pickle: shape, dtype, and its bytes (a CPU tensor) or None (a device tensor).
_TensorRef = tuple[tuple[int, ...], torch.dtype, bytes | None]


class _Pickler(pickle.Pickler):
    """Pickles tensors as references, collecting the device tensors to broadcast."""

    def __init__(self, file: io.BytesIO, device_tensors: list[torch.Tensor]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.device_tensors = device_tensors

    def persistent_id(self, obj: object) -> _TensorRef | None:
        if not isinstance(obj, torch.Tensor):
            return None
        if obj.device.type != "cpu":
            self.device_tensors.append(obj.contiguous())
            return tuple(obj.shape), obj.dtype, None
        data = obj.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return tuple(obj.shape), obj.dtype, data


class _Unpickler(pickle.Unpickler):
    """Rebuilds CPU tensors from their bytes; allocates each device tensor for the broadcast
    that fills it."""

    def __init__(self, file: io.BytesIO, device: torch.device) -> None:
        super().__init__(file)
        self.device = device
        self.device_tensors: list[torch.Tensor] = []

    def persistent_load(self, pid: _TensorRef) -> torch.Tensor:
        shape, dtype, data = pid
        if data is not None:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        self.device_tensors.append(tensor)
        return tensor


def send(conns: list[Connection], command: Command) -> None:
    """Rank 0: ``command`` to every other rank (raises ``OSError`` if one's pipe is closed)."""
    buffer = io.BytesIO()
    device_tensors: list[torch.Tensor] = []
    _Pickler(buffer, device_tensors).dump(command)
    payload = buffer.getvalue()
    for conn in conns:
        conn.send_bytes(payload)
    for tensor in device_tensors:
        dist.broadcast(tensor, src=0)


def receive(conn: Connection, device: torch.device) -> Command:
    """Another rank: the next command from rank 0 (``EOFError`` once rank 0 is gone)."""
    unpickler = _Unpickler(io.BytesIO(conn.recv_bytes()), device)
    command = unpickler.load()
    for tensor in unpickler.device_tensors:
        dist.broadcast(tensor, src=0)
    return command
