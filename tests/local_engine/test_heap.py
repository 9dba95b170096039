"""release_free_heap: memory freed inside glibc's heap goes back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest

from local_engine.engine.heap import release_free_heap
from local_engine.engine.kv_pool import resident_bytes

BLOCK = 64 << 10  # under glibc's mmap threshold: served from the heap, not its own mapping
COUNT = 1600  # 100 MiB


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_returned() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # resident
    # Everything but the last block is freed: the heap's top cannot shrink past it, so free()
    # alone keeps the pages (as after an engine burst, where live objects sit above the garbage).
    for block in blocks[:-1]:
        libc.free(block)
    held = resident_bytes()
    release_free_heap()
    released = held - resident_bytes()
    libc.free(blocks[-1])
    assert released > COUNT * BLOCK // 2, f"{released >> 20} MiB released of {COUNT * BLOCK >> 20} freed"
