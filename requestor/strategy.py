"""Choosing among offers, with yapapi's names and conventions: a strategy scores each matching
offer, the highest score is tried first, and a negative score (SCORE_REJECTED) rejects it.
`score_offer` may be a plain or an async method (yapapi's are async)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from requestor import events
from requestor.budget import money
from requestor.model import Offer, PaymentChoice
from requestor.payload.vm import GIB, TEST_COUNTERS_RUNTIME, VmPackage
from requestor.props.com import Counter

log = logging.getLogger(__name__)

__all__ = [  # yapapi.strategy's names that exist here
    "MarketStrategy", "DummyMS", "LeastExpensiveLinearPayuMS", "DecreaseScoreForUnconfirmedAgreement",
    "WrappingMarketStrategy", "PropValueRange", "SCORE_NEUTRAL", "SCORE_REJECTED", "SCORE_TRUSTED",
    "DEBIT_NOTE_INTERVAL_GRACE_PERIOD", "PROP_DEBIT_NOTE_INTERVAL_SEC", "PROP_PAYMENT_TIMEOUT_SEC",
    "PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT",
]

SCORE_NEUTRAL = 0.0
SCORE_REJECTED = -1.0
SCORE_TRUSTED = 100.0

# The payment terms a demand negotiates, by Golem's property names (yapapi.strategy.base's).
PROP_DEBIT_NOTE_INTERVAL_SEC = "golem.com.scheme.payu.debit-note.interval-sec?"
PROP_PAYMENT_TIMEOUT_SEC = "golem.com.scheme.payu.payment-timeout-sec?"
PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT = "golem.com.payment.debit-notes.accept-timeout?"
MID_AGREEMENT_PAYMENTS_PROPS = [PROP_DEBIT_NOTE_INTERVAL_SEC, PROP_PAYMENT_TIMEOUT_SEC]
DEFAULT_DEBIT_NOTE_ACCEPTANCE_TIMEOUT_SEC = 30
DEFAULT_DEBIT_NOTE_INTERVAL_SEC = 60
DEFAULT_PAYMENT_TIMEOUT_SEC = 18000
MIN_EXPIRATION_FOR_MID_AGREEMENT_PAYMENTS = DEFAULT_PAYMENT_TIMEOUT_SEC
# Debit notes may come this much sooner than their interval says before there are too many.
DEBIT_NOTE_INTERVAL_GRACE_PERIOD = 30
# This library's earlier names for the two linear coefficients, still accepted in max_price_for.
_SHORT_COUNTERS = {"cpu": Counter.CPU.value, "duration": Counter.TIME.value}


@dataclass(frozen=True)
class PropValueRange:
    """A range of acceptable values of a property: `min <= value <= max` (None: unbounded)."""

    min: float | None = None
    max: float | None = None

    def __contains__(self, item: float) -> bool:
        return (self.min is None or item >= self.min) and (self.max is None or item <= self.max)

    def clamp(self, item: float) -> float:
        """The nearest value in the range; ValueError for a range with min > max."""
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Cannot clamp to a range in which min={self.min} > max={self.max}.")
        if self.min is not None and item < self.min:
            return self.min
        if self.max is not None and item > self.max:
            return self.max
        return item

    def __str__(self) -> str:
        return f"({self.min}, {self.max})"


DEFAULT_PROPERTY_VALUE_RANGES = {
    PROP_DEBIT_NOTE_INTERVAL_SEC: PropValueRange(DEFAULT_DEBIT_NOTE_INTERVAL_SEC, None),
    PROP_PAYMENT_TIMEOUT_SEC: PropValueRange(DEFAULT_PAYMENT_TIMEOUT_SEC, None),
    PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT: PropValueRange(DEFAULT_DEBIT_NOTE_ACCEPTANCE_TIMEOUT_SEC, None),
}


class MarketStrategy:
    """Scores offers; override `score_offer` (plain or async). Subclasses may also listen to
    events through `on_event` (Golem calls it for strategies that have it), and set
    `acceptable_prop_value_range_overrides` (property name: PropValueRange) to narrow or widen the
    payment terms they take (DEFAULT_PROPERTY_VALUE_RANGES otherwise)."""

    acceptable_prop_value_range_overrides: dict[str, PropValueRange]

    def score_offer(self, offer: Offer) -> Any:
        return SCORE_NEUTRAL

    @property
    def acceptable_prop_value_ranges(self) -> dict[str, PropValueRange]:
        ranges = dict(getattr(self, "acceptable_prop_value_range_overrides", {}))
        for name, default in DEFAULT_PROPERTY_VALUE_RANGES.items():
            ranges.setdefault(name, default)
        return ranges


class DummyMS(MarketStrategy):
    """Takes any matching offer whose prices stay under caps (yapapi's DummyMS): all neutral."""

    def __init__(self, max_for_counter: Mapping[Counter | str, Decimal] | None = None,
                 max_fixed: Decimal = Decimal("0.05"), activity: Any = None) -> None:
        self._caps = LeastExpensiveLinearPayuMS(max_fixed_price=max_fixed, max_price_for=max_for_counter or {})

    def score_offer(self, offer: Offer) -> float:
        return SCORE_NEUTRAL if self._caps.score_offer(offer) >= 0 else SCORE_REJECTED


class LeastExpensiveLinearPayuMS(MarketStrategy):
    """Prefers the offer cheapest for `expected_time_secs` of work at full cpu use; rejects offers
    whose start fee or per-counter price passes a cap. `max_price_for` is keyed by
    `props.com.Counter` (or its name, e.g. "golem.usage.cpu_sec")."""

    def __init__(self, expected_time_secs: float = 60, max_fixed_price: Decimal | float | None = None,
                 max_price_for: Mapping[Counter | str, Decimal | float] | None = None) -> None:
        self.expected_time_secs = expected_time_secs
        self.max_fixed_price = money(max_fixed_price) if max_fixed_price is not None else Decimal("inf")
        self.max_price_for: dict[str, Decimal] = {}
        for counter, cap in (max_price_for or {}).items():
            name = counter.value if isinstance(counter, Counter) else _SHORT_COUNTERS.get(counter, counter)
            self.max_price_for[name] = money(cap)

    def score_offer(self, offer: Offer) -> float:
        p = offer.pricing
        prices = {Counter.CPU.value: money(p.per_cpu_second), Counter.TIME.value: money(p.per_duration_second)}
        fee = money(p.start_fee)
        if fee < 0 or fee > self.max_fixed_price:
            return SCORE_REJECTED
        others = {name: money(price) for name, price in p.per_unit.items()}
        for counter, price in {**prices, **others}.items():
            if price < 0 or price > self.max_price_for.get(counter, Decimal("inf")):
                return SCORE_REJECTED
        expected = float(fee) + self.expected_time_secs * float(sum(prices.values()))
        return SCORE_TRUSTED / (expected + 1.01)  # cheaper scores higher; always in (0, SCORE_TRUSTED)


class WrappingMarketStrategy(MarketStrategy):
    """A strategy that defers to `base_strategy` (subclass it to adjust the scores)."""

    def __init__(self, base_strategy: MarketStrategy) -> None:
        self.base_strategy = base_strategy

    async def score_offer(self, offer: Offer) -> float:
        return float(await _resolved(self.base_strategy.score_offer(offer)))

    @property
    def acceptable_prop_value_ranges(self) -> dict[str, PropValueRange]:
        return self.base_strategy.acceptable_prop_value_ranges


class DecreaseScoreForUnconfirmedAgreement(WrappingMarketStrategy):
    """Multiplies by `factor` the positive scores of providers that did not confirm (here: could
    not go through with) an agreement in this run, as yapapi's strategy of that name."""

    def __init__(self, base_strategy: MarketStrategy, factor: float) -> None:
        super().__init__(base_strategy)
        self.factor = factor
        self._unconfirmed: set[str] = set()

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ActivityCreateFailed):
            self._unconfirmed.add(event.provider_id)
        elif isinstance(event, events.ActivityCreated):
            self._unconfirmed.discard(event.provider_id)

    async def score_offer(self, offer: Offer) -> float:
        score = await super().score_offer(offer)
        return score * self.factor if offer.provider_id in self._unconfirmed and score > 0 else score


async def score(strategy: MarketStrategy, offer: Offer) -> float | None:
    """The strategy's score of the offer, or None when it rejects it (also when it raises: one bad
    offer or a strategy's bug turns that offer down, as yapapi does, and is logged as yapapi's)."""
    try:
        value = await _resolved(strategy.score_offer(offer))
    except Exception:  # noqa: BLE001 - the strategy is the caller's code
        log.warning("Strategy error: score_offer(proposal) failed when calling with proposal: %s",
                     offer.provider_id, exc_info=True)
        return None
    if value is None or float(value) < 0:
        return None
    return float(value)


def payment_choice(strategy: MarketStrategy, offer: Offer, expiration: datetime, platform: str = "") -> PaymentChoice | None:
    """The payment terms to ask of `offer` for an agreement until `expiration`, as yapapi's
    `respond_to_provider_offer` negotiates them: each term the offer states is taken when in the
    strategy's range, else the range's nearest value is asked instead; the debit note interval and
    payment timeout (mid-agreement payments) only when the agreement lasts at least
    MIN_EXPIRATION_FOR_MID_AGREEMENT_PAYMENTS, the offer has a payment timeout and a payment
    `platform` is chosen (without one, no payment timeout can be asked: the offer's interval holds).
    None for an offer that states no terms. ValueError from a range with min > max."""
    terms = offer.payment
    if terms is None:
        return None
    seconds = round((expiration - datetime.now(timezone.utc)).total_seconds())
    trigger = seconds >= MIN_EXPIRATION_FOR_MID_AGREEMENT_PAYMENTS
    enabled = trigger and terms.payment_timeout > 0 and bool(platform)
    if enabled:
        log.debug("Enabling mid-agreement payments mechanism as the expiration set to %ss (more than %ss). "
                  "provider=%s", seconds, MIN_EXPIRATION_FOR_MID_AGREEMENT_PAYMENTS, offer.issuer)
    elif trigger and terms.payment_timeout > 0:
        log.debug("Not enabling mid-agreement payments, with no payment platform chosen. expiration: %s, "
                  "provider: %s", seconds, offer.issuer)
    elif trigger:
        log.debug("Expiration of %ss (more than our minimum for MAP: %ss) while negotiating with a provider "
                  "unaware of mid-agreeement-payments. provider=%s", seconds,
                  MIN_EXPIRATION_FOR_MID_AGREEMENT_PAYMENTS, offer.issuer)
    else:
        log.debug("Not enabling mid-agreement payments for the planned activity. expiration: %s, provider: %s",
                  seconds, offer.issuer)
    offered = {PROP_DEBIT_NOTE_INTERVAL_SEC: terms.debit_note_interval, PROP_PAYMENT_TIMEOUT_SEC: terms.payment_timeout,
               PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT: terms.debit_note_accept_timeout}
    chosen: dict[str, float] = {}
    for name, accepted in strategy.acceptable_prop_value_ranges.items():
        value = offered.get(name)
        if not value or (name in MID_AGREEMENT_PAYMENTS_PROPS and not enabled):
            continue
        if value not in accepted:
            ours = accepted.clamp(value)
            log.debug("Negotiated property %s = %s outside of our accepted range: %s. Proposing our own value "
                      "instead: %s", name, value, accepted, ours)
            value = ours
        chosen[name] = float(value)
    return PaymentChoice(platform=platform, debit_note_interval=chosen.get(PROP_DEBIT_NOTE_INTERVAL_SEC, 0.0),
                         payment_timeout=chosen.get(PROP_PAYMENT_TIMEOUT_SEC, 0.0),
                         debit_note_accept_timeout=chosen.get(PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT, 0.0))


async def _resolved(value: Any) -> Any:
    return await value if hasattr(value, "__await__") else value


def mismatch(offer: Offer, payload: VmPackage, subnet_tag: str) -> str | None:
    """Why the offer cannot serve the payload, or None when it can."""
    if offer.subnet_tag != subnet_tag:
        return f"subnet {offer.subnet_tag!r}, not {subnet_tag!r}"
    runtimes = offer.runtimes or (offer.runtime_name,)
    if payload.runtime not in runtimes:
        return f"runtime {payload.runtime!r} not among {', '.join(runtimes)}"
    if offer.total_cpu_threads < payload.min_cpu_threads:
        return f"only {offer.total_cpu_threads} cpu threads"
    if offer.total_memory_bytes < payload.min_mem_gib * GIB:
        return f"only {offer.total_memory_bytes / GIB:.1f} GiB memory"
    if offer.total_storage_bytes < payload.min_storage_gib * GIB:
        return f"only {offer.total_storage_bytes / GIB:.1f} GiB storage"
    missing = set(payload.capabilities) - set(offer.capabilities)
    if missing:
        return f"lacks capabilities {', '.join(sorted(missing))}"
    has_image = (payload.image_tag and payload.image_tag in offer.images) or (
        payload.image_hash and payload.image_hash in offer.images
    )
    if payload.runtime == TEST_COUNTERS_RUNTIME and not (payload.image_tag or payload.image_hash or payload.image_url):
        return None  # the runtime brings its image
    if not has_image and not (payload.image_url and offer.accepts_image_urls):
        return f"does not have image {payload.image_tag or payload.image_hash or payload.image_url}"
    return None
