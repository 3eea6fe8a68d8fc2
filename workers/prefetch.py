"""Decoding off the training thread: a batch iterator run ahead by a background thread, in order.

Why: a stage's loop decoded PNGs, ran the MATLAB bicubic and cut patches on the thread that then drives
the GPU, so the GPU waited for every batch. A thread producing the next `depth` batches while the step
runs overlaps the two (PNG decoding and numpy release the GIL). One producer consumes the source in
order, so the batches and their seeded randomness are exactly those of the plain iterator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(source: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `source`, produced up to `depth` ahead on a daemon thread; its errors re-raised here.

    Closing the returned generator early (a loop that breaks) stops the producer after its current item.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failed(err))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
