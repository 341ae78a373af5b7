"""Watching an activity from the requestor's side: the provider ending it, or falling silent, is
noticed within seconds, not at the instance's next script."""

from __future__ import annotations

import asyncio

from requestor.client import ActivityHandle
from requestor.errors import ActivityTerminatedError, ProviderUnreachableError, RequestorError

# Activity termination reasons that come from this requestor, not from the provider.
OWN_REASONS = frozenset({"Requested", "Destroyed"})
CLOSE_SECONDS = 1.0


class ActivityWatch:
    """Follows the activity's state on the provider; `ended` resolves with the reason the
    provider ended it or stopped answering. Within seconds, not at the next script."""

    def __init__(self, handle: ActivityHandle, unresponsive_after: float) -> None:
        self._handle = handle
        self._unresponsive_after = unresponsive_after
        self.ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(), name=f"watch-{handle.activity.id}")

    def _end(self, error: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(error)

    async def _follow(self) -> None:
        """Watches; the client watches again while the provider is away (a restart) and says it is
        unreachable once it was not back within `unresponsive_after` seconds."""
        client, activity_id = self._handle.client, self._handle.activity.id
        try:
            async for status in client.watch(activity_id, self._unresponsive_after):
                if status.state == "Terminated":
                    if status.reason not in OWN_REASONS:
                        self._end(ActivityTerminatedError(status.reason, status.message))
                    return
        except ProviderUnreachableError as exc:
            self._end(exc)
        except RequestorError as exc:
            self._end(ActivityTerminatedError("Lost", f"the provider no longer knows the activity ({exc})"))

    async def check(self) -> BaseException | None:
        """Asks the provider now (a handler just failed): the reason it ended the activity, if it did."""
        if self.ended.done():
            return self.ended.result()
        try:
            status = await self._handle.client.state(self._handle.activity.id)
        except ProviderUnreachableError as exc:
            return exc
        except RequestorError:
            return None
        if status.state == "Terminated" and status.reason not in OWN_REASONS:
            self._end(ActivityTerminatedError(status.reason, status.message))
            return self.ended.result()
        return None

    async def close(self) -> None:
        """Stops watching, waiting CLOSE_SECONDS at most: a watch that goes on after its cancellation
        (Python 3.11's wait_for can swallow one while the client reconnects) must not hold up the
        release that follows; it ends at the latest when the client's channel is closed."""
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CLOSE_SECONDS)
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # _follow handles what it expects; anything else is retrieved here
