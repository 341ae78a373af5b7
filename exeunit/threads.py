"""Bridges blocking iterators (Docker streams) onto the event loop without blocking it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Streams can run for as long as a command does, so they get their own, large pool of reusable
# threads instead of asyncio's small default executor (which short Docker calls use).
_STREAM_THREADS = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="docker-stream")

_ITEM, _DONE, _ERROR = range(3)


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]], max_pending: int = 16) -> AsyncIterator[T]:
    """Runs `make_iterator()` in a worker thread and yields its items here.

    At most `max_pending` items wait in between, so a slow consumer slows the producer instead of
    growing memory. Exceptions raised by the iterator are re-raised here. Leaving the loop early
    tells the producer to stop at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    credits = threading.Semaphore(max_pending)
    stop = threading.Event()

    def deliver(kind: int, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:
            stop.set()  # the loop is closed: nobody is listening any more

    def pump() -> None:
        try:
            for item in make_iterator():
                while not credits.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                deliver(_ITEM, item)
        except BaseException as exc:  # handed over to the consumer, which re-raises it
            deliver(_ERROR, exc)
        else:
            deliver(_DONE, None)

    _STREAM_THREADS.submit(pump)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _ITEM:
                credits.release()
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        credits.release()
