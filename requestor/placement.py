"""Where the engine (requestor.engine) places an activity: the providers' offers as every pending
instance and task worker reads them, the order it tries them in, and what waiting ones say.

Three decisions, each for what happens at scale (many instances placed at once on a few loaded
providers):

- `OfferBook`: one GetOffer per provider at a time, shared by every placement asking meanwhile. A
  provider that did not answer is not given up on: it is asked again in the background after a
  backoff (1 s, doubling to 15 s), each time allowed longer to answer (5 s, doubling to 30 s), and
  placements do not wait for it meanwhile. One that answered once in this run is worth waiting
  for (`Unanswered.worth_waiting`): a daemon loaded by the containers it starts answers late, a
  restarted one comes back. One never heard from (a wrong address) is not.
- `Spread`: offers the market strategy scores alike are tried with the provider holding the fewest
  of this Golem's agreements (live ones and those being made) first, then in random order, so equal
  providers share the load; a strategy that scores them apart decides.
- `Waits`: a job's pending instances or workers say at INFO what they wait for, once each time the
  reasons change (not at every retry).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from requestor.client import ProviderClient
from requestor.errors import RequestorError
from requestor.model import Offer

log = logging.getLogger(__name__)

OFFER_TIMEOUT = 5.0  # seconds a provider in good standing has to answer GetOffer
OFFER_TIMEOUT_MAX = 30.0  # ... doubling at each failure up to this
RETRY_FIRST, RETRY_MAX = 1.0, 15.0  # seconds before a provider that did not answer is asked again


@dataclass(frozen=True)
class Unanswered:
    """A provider whose offer is not at hand: why, and when it is asked again."""

    where: str  # "name (host:port)", or "host:port" for one never heard from
    address: str  # host:port
    error: str
    retry_in: float | None  # seconds until it is asked again; None: it is being asked now
    worth_waiting: bool  # it answered before in this run: its silence is likely to pass

    @property
    def reason(self) -> str:
        return f"unreachable ({self.error})"

    def said(self) -> str:
        again = "being asked again" if self.retry_in is None else f"asking again in {self.retry_in:.0f} s"
        return f"{self.reason}, {again}"


@dataclass
class _Standing:
    """How one provider has answered."""

    failures: int = 0  # GetOffer calls in a row that failed
    error: str = ""
    retry_at: float = 0.0  # loop time after which it is asked again
    asking: asyncio.Task[Offer | RequestorError] | None = None
    offer: Offer | None = None  # its last offer: it answered once


class OfferBook:
    """The offers of the engine's providers (the list may grow: resumed instances add theirs)."""

    def __init__(self, clients: list[ProviderClient]) -> None:
        self._clients = clients
        self._standing: dict[str, _Standing] = {}

    async def read(self) -> tuple[list[Offer], list[Unanswered]]:
        """The offers at hand now: every provider in good standing is asked (sharing a call already
        under way) and waited for; one that failed is only asked again, in the background, once its
        backoff is over, and is reported unanswered meanwhile."""
        loop = asyncio.get_running_loop()
        awaited: list[tuple[ProviderClient, asyncio.Task[Offer | RequestorError]]] = []
        for client in list(self._clients):
            standing = self._standing.setdefault(client.address, _Standing())
            if standing.asking is None and (standing.failures == 0 or loop.time() >= standing.retry_at):
                self._ask(client, standing)
            if standing.failures == 0 and standing.asking is not None:
                awaited.append((client, standing.asking))
        if awaited:  # shielded: a placement that is cancelled must not cancel the others' call
            await asyncio.wait([asyncio.shield(task) for _, task in awaited])
        for client, task in awaited:
            self._settle(client, task)
        offers, unanswered = [], []
        for client in list(self._clients):
            standing = self._standing[client.address]
            if standing.failures == 0 and standing.offer is not None:
                offers.append(standing.offer)
            elif standing.failures:
                retry_in = None if standing.asking else max(standing.retry_at - loop.time(), 0.0)
                where = client.address if standing.offer is None else _where(standing.offer)
                unanswered.append(Unanswered(where, client.address, standing.error, retry_in, standing.offer is not None))
        return offers, unanswered

    def _ask(self, client: ProviderClient, standing: _Standing) -> None:
        timeout = min(OFFER_TIMEOUT * 2 ** standing.failures, OFFER_TIMEOUT_MAX)
        standing.asking = asyncio.create_task(_offer_of(client, timeout), name=f"offer-{client.address}")
        standing.asking.add_done_callback(lambda task: self._settle(client, task))

    def _settle(self, client: ProviderClient, task: asyncio.Task[Offer | RequestorError]) -> None:
        """Records a finished call's answer, once (whichever of its callback and its readers comes first)."""
        standing = self._standing[client.address]
        if standing.asking is not task:
            return
        standing.asking = None
        result = None if task.cancelled() else task.result()
        if isinstance(result, Offer):
            if standing.failures:
                log.info("event=provider_answers_again address=%s after_failures=%d", client.address,
                         standing.failures)
            standing.failures, standing.error, standing.offer = 0, "", result
            return
        standing.failures += 1
        standing.error = str(result) if result is not None else "GetOffer cancelled"
        delay = min(RETRY_FIRST * 2 ** (standing.failures - 1), RETRY_MAX)
        standing.retry_at = asyncio.get_running_loop().time() + delay
        log.debug("event=offer_unanswered address=%s failures=%d retry_in=%.1fs error=%s", client.address,
                  standing.failures, delay, standing.error)

    async def close(self) -> None:
        """Cancels the calls still under way."""
        tasks = [s.asking for s in self._standing.values() if s.asking is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _offer_of(client: ProviderClient, timeout: float) -> Offer | RequestorError:
    try:
        return await client.offer(timeout)
    except RequestorError as exc:
        return exc


def _where(offer: Offer) -> str:
    return f"{offer.provider_name} ({offer.address})"


class Spread:
    """Orders candidate offers: those of providers to avoid last, the strategy's highest score
    first, then the provider with the fewest of this Golem's agreements, then at random."""

    def __init__(self, live: Callable[[], Iterable[str]]) -> None:
        self._live = live  # the provider ids of the live agreements, one per agreement
        self._making: Counter[str] = Counter()  # agreements being made, by provider id

    def load(self, provider_id: str) -> int:
        return sum(1 for held in self._live() if held == provider_id) + self._making[provider_id]

    def order(self, candidates: Iterable[tuple[bool, float, Offer]]) -> list[Offer]:
        """`candidates` as (avoided, score, offer), in the order to try them."""
        loads = Counter(self._live()) + self._making
        keyed = [(avoided, -value, loads[offer.provider_id], random.random(), offer)
                 for avoided, value, offer in candidates]
        return [entry[-1] for entry in sorted(keyed, key=lambda entry: entry[:4])]

    @contextmanager
    def making(self, provider_id: str) -> Iterator[None]:
        """Counts an agreement being made with the provider while the block runs."""
        self._making[provider_id] += 1
        try:
            yield
        finally:
            self._making[provider_id] -= 1
            if not self._making[provider_id]:
                del self._making[provider_id]


class Waits:
    """What a job's pending instances or workers wait for, said at INFO when it changes."""

    def __init__(self) -> None:
        self._waiting: Counter[str] = Counter()  # placements waiting, by job id
        self._said: dict[str, tuple[tuple[str, str], ...]] = {}  # by job id: the reasons last said

    @contextmanager
    def placing(self, job_id: str, workers: bool) -> Iterator[Callable[[Mapping[str, str], list[Unanswered]], None]]:
        """One placement for the job (of a task worker, or else of a service instance) while the
        block runs; it calls what it is given each time it waits, with the reasons by provider
        (those of the providers that did not answer among them) and those providers. Once no
        placement of the job waits, the next wait is said anew."""
        counted = False

        def waits(reasons: Mapping[str, str], unanswered: list[Unanswered]) -> None:
            nonlocal counted
            if not counted:
                self._waiting[job_id] += 1
                counted = True
            self._say(job_id, workers, reasons, unanswered)

        try:
            yield waits
        finally:
            if counted:
                self._waiting[job_id] -= 1
                if not self._waiting[job_id]:
                    del self._waiting[job_id]
                    self._said.pop(job_id, None)

    def _say(self, job_id: str, workers: bool, reasons: Mapping[str, str], unanswered: list[Unanswered]) -> None:
        key = tuple(sorted(reasons.items()))
        if self._said.get(job_id) == key:
            return
        self._said[job_id] = key
        told = {**reasons, **{u.where: u.said() for u in unanswered}}
        count = self._waiting[job_id]
        noun = ("worker" if workers else "instance") + ("s" if count != 1 else "")
        details = "; ".join(f"{where}: {why}" for where, why in told.items()) or "no provider configured"
        log.info("[Job %s] %d %s wait%s for a provider: %s", job_id, count, noun, "s" if count == 1 else "", details)
