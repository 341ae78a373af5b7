"""Blocking data-plane work (Docker streams, transfers, image fetches) kept off the event loop and
off the pool that control calls use.

Short Docker calls (inspect, create, start, remove) run on the loop's default executor. Anything
that can last as long as a caller wants (a stream a client reads slowly, an upload whose client
stalls, an archive fetched from a slow server) runs on `DATA_THREADS` instead, so that however much
of it is in flight, GetOffer, ProposeAgreement, Destroy and the rest still find a thread at once.
How much of it one caller may hold is bounded elsewhere (`exeunit.services.fairness`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DATA_THREADS = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="data-plane")


async def in_data_thread(function: Callable[..., T], *args: Any) -> T:
    """Runs a blocking call that may take long on the data-plane pool."""
    return await asyncio.get_running_loop().run_in_executor(DATA_THREADS, functools.partial(function, *args))


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

    DATA_THREADS.submit(pump)
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
