"""The embedded provider as the requestor starts it: `Golem` with no providers configured runs
one inside the script's process (exeunit.app.embedded), imported only then, so that `import requestor`
loads none of the daemon."""

from __future__ import annotations

from typing import Any

from requestor.errors import RequestorError


class EmbeddedProvider:
    """`address = await EmbeddedProvider(subnet).start()`; `await provider.stop()` when done."""

    def __init__(self, subnet_tag: str) -> None:
        self._subnet_tag = subnet_tag
        self._provider: Any = None

    async def start(self) -> str:
        from exeunit.app.embedded import LocalProvider, NoEngine  # the daemon, loaded when it is wanted

        self._provider = LocalProvider(self._subnet_tag)
        try:
            return str(await self._provider.start())
        except NoEngine as exc:
            raise RequestorError(
                f"the embedded provider needs a Docker engine, and none answers ({exc}). Start dockerd "
                "(scripts/setup.sh does), or name running providers: Golem(providers=[...]) or GOLEM_PROVIDERS"
            ) from None

    @property
    def interrupted(self) -> bool:
        """Whether SIGTERM cancelled the script's task (Ctrl-C being ignored): see LocalProvider."""
        return bool(self._provider is not None and self._provider.interrupted)

    async def stop(self) -> None:
        if self._provider is not None:
            await self._provider.stop()
            self._provider = None
