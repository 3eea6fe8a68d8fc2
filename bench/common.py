"""Shared helpers of the benchmarks: worker subprocesses, peak memory, machine facts, Markdown tables.

Memory is measured as the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) of a *fresh*
worker process that runs only one configuration. That is what the operating system had to give
the process: Python + torch + the model + optimiser states + every activation, gradient and
allocator slack alive at the worst moment. ``tracemalloc`` would miss it (torch allocates tensors
in C++, outside Python's allocator), and torch has no peak counter for CPU memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import multiprocessing as mp
import os
import platform
import resource
import statistics
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["Worker", "machine_info", "markdown_table", "median", "peak_rss_mib", "release_memory", "rss_mib"]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`), so an idle worker holds little RSS.

    Without it a worker that just ran a dense step keeps its ~8 GB peak resident while the other
    worker runs; with it only the running worker's step is resident. Every step then starts from
    the same trimmed heap, in both modes alike.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _serve(conn: Any, target: str, kwargs: dict[str, Any]) -> None:
    """Worker loop: build ``target(**kwargs)`` (``"module:attr"``), then answer ``(method, args)`` calls."""
    try:
        module_name, attr = target.split(":")
        obj = getattr(importlib.import_module(module_name), attr)(**kwargs)
        conn.send(("ok", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        method, args = message
        try:
            conn.send(("ok", getattr(obj, method)(*args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class Worker:
    """An object living in a fresh process of its own; `call` runs one of its methods there, synchronously.

    A fresh process per measured configuration keeps `peak_rss_mib` (a monotone process-wide
    maximum) about that configuration alone. Workers are forked from a "forkserver" process that
    imported the `preload` modules once (torch: seconds), so starting one costs no import; the
    server holds no model, only the imports. Start several, then `wait_ready` on each, to build
    them in parallel. (`target`'s own module is imported in the worker, not preloaded: a
    preloaded `__main__` module makes runpy warn when the worker re-runs it.)
    """

    def __init__(self, target: str, *, preload: Sequence[str] = ("torch",), **kwargs: Any) -> None:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(list(preload))  # no effect once the server runs
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, target, kwargs), daemon=True)
        self._process.start()
        child.close()
        self._ready = False

    def _receive(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"benchmark worker died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def wait_ready(self) -> None:
        if not self._ready:
            self._receive()
            self._ready = True

    def call(self, method: str, *args: Any) -> Any:
        self.wait_ready()
        self._conn.send((method, args))
        return self._receive()

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
