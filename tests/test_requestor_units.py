"""Unit tests of the requestor's pure logic: the state table, offer matching, budget, payloads."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import grpc
import pytest

from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1 import transfer_pb2_grpc as xfer_grpc
from exeunit.v1.conventions import GIB

from requestor import events
from requestor.budget import Budget
from requestor.errors import BudgetExceededError, PackageException, RequestorError
from requestor.payload import vm
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.model import Offer, Pricing
from requestor.services.cluster import _resolve_instance_params
from requestor.services.state import TRANSITIONS, InvalidTransition, ServiceState, next_state
from requestor.strategy import LeastExpensiveLinearPayuMS, mismatch

S = ServiceState


@pytest.mark.parametrize(
    ("state", "transition", "target"),
    [
        (S.pending, "start", S.starting),
        (S.starting, "ready", S.running),
        (S.running, "stop", S.stopping),
        (S.starting, "terminate", S.terminated),
        (S.stopping, "terminate", S.terminated),
        (S.pending, "terminate", S.terminated),
        (S.running, "mark_unresponsive", S.unresponsive),
        (S.unresponsive, "terminate", S.terminated),
        (S.terminated, "restart", S.pending),
    ],
)
def test_allowed_transitions(state, transition, target) -> None:
    assert next_state(state, transition) is target


@pytest.mark.parametrize(
    ("state", "transition"),
    [(S.running, "start"), (S.pending, "ready"), (S.starting, "stop"), (S.terminated, "mark_unresponsive")],
)
def test_refused_transitions(state, transition) -> None:
    with pytest.raises(InvalidTransition, match=f"cannot {transition} a service instance that is {state.value}"):
        next_state(state, transition)


def test_state_names_and_availability() -> None:
    assert [s.value for s in S] == ["pending", "starting", "running", "stopping", "terminated", "unresponsive",
                                    "suspended"]
    assert S.AVAILABLE == (S.starting, S.running, S.stopping)  # type: ignore[attr-defined]
    assert set(TRANSITIONS) == {"start", "ready", "stop", "terminate", "mark_unresponsive", "restart", "suspend"}


def offer(**fields: object) -> Offer:
    values: dict[str, object] = dict(
        address="127.0.0.1:1", provider_id="p", provider_name="p", subnet_tag="public", runtime_name="docker-vm",
        cpu_threads=2, memory_bytes=4 * GIB, storage_bytes=10 * GIB, total_cpu_threads=2,
        total_memory_bytes=4 * GIB, total_storage_bytes=10 * GIB, pricing=Pricing(0.0, 0.001, 0.0001, "GLM"),
        images=("img:1", "sha256:" + "a" * 64), accepts_image_urls=True, capabilities=(),
    )
    values.update(fields)
    return Offer(**values)  # type: ignore[arg-type]


async def test_matching() -> None:
    payload = await vm.repo(image_tag="img:1", min_mem_gib=1)
    assert mismatch(offer(), payload, "public") is None
    assert mismatch(offer(subnet_tag="x"), payload, "public") == "subnet 'x', not 'public'"
    assert mismatch(offer(total_memory_bytes=GIB // 2), payload, "public") == "only 0.5 GiB memory"
    assert "does not have image img:2" in mismatch(offer(), await vm.repo(image_tag="img:2"), "public")
    by_hash = await vm.repo(image_hash="a" * 64)
    assert by_hash.image_hash == "sha256:" + "a" * 64 and mismatch(offer(), by_hash, "public") is None
    by_url = await vm.repo(image_hash="b" * 64, image_url="http://127.0.0.1/x.tar")
    assert mismatch(offer(), by_url, "public") is None
    assert mismatch(offer(accepts_image_urls=False), by_url, "public") is not None


async def test_a_strategy_that_raises_turns_the_offer_down_with_yapapis_warning(caplog: pytest.LogCaptureFixture) -> None:
    from requestor.strategy import MarketStrategy, score

    class Broken(MarketStrategy):
        async def score_offer(self, offer: Offer) -> float:
            raise KeyError("no such property")

    with caplog.at_level("WARNING", logger="requestor.strategy"):
        assert await score(Broken(), offer(provider_id="0xbad")) is None
    assert [r.getMessage() for r in caplog.records] == [
        "Strategy error: score_offer(proposal) failed when calling with proposal: 0xbad"]
    assert caplog.records[0].exc_info is not None


async def test_strategies_score_as_yapapis_do() -> None:
    from requestor.props import com
    from requestor.strategy import (
        SCORE_REJECTED, SCORE_TRUSTED, DecreaseScoreForUnconfirmedAgreement, DummyMS, MarketStrategy, score,
    )

    strategy = LeastExpensiveLinearPayuMS(expected_time_secs=100,
                                          max_price_for={com.Counter.CPU: Decimal("0.01"), "duration": 0.5})
    cheap, dear = offer(pricing=Pricing(0, 0.001, 0, "")), offer(pricing=Pricing(1, 0.001, 0, ""))
    assert SCORE_TRUSTED > strategy.score_offer(cheap) > strategy.score_offer(dear) > 0  # cheaper scores higher
    assert strategy.score_offer(offer(pricing=Pricing(0, 0.02, 0, ""))) == SCORE_REJECTED
    assert LeastExpensiveLinearPayuMS(max_price_for={"golem.usage.cpu_sec": 0.0001}).score_offer(cheap) == SCORE_REJECTED
    assert await score(strategy, offer(pricing=Pricing(0, 0.02, 0, ""))) is None
    assert await score(DummyMS(), cheap) == 0.0

    class Trusting(MarketStrategy):  # yapapi's strategies are async
        async def score_offer(self, offer):
            return SCORE_TRUSTED

    wary = DecreaseScoreForUnconfirmedAgreement(Trusting(), 0.5)
    assert await score(wary, cheap) == SCORE_TRUSTED
    wary.on_event(events.ActivityCreateFailed(job=events.Job("1", None, None),
                                              agreement=events.Agreement("a", cheap.provider_id, "p", "x")))
    assert await score(wary, cheap) == SCORE_TRUSTED * 0.5


def test_budget_accrues_in_decimal_and_settles_what_was_spent() -> None:
    budget = Budget(1.0)
    budget.check(0.1, "p")
    budget.open("a1", 0.1)
    budget.accrue("a1", 0.3)
    budget.accrue("a1", 0.2)  # a reading never counts down
    assert budget.accrued == Decimal("0.3") and budget.remaining == Decimal("0.7")
    with pytest.raises(BudgetExceededError, match="has 0.7 left, not more than the start fee 0.7 of p"):
        budget.check(0.7, "p")
    assert budget.would_pass(Decimal("0.71")) and not budget.would_pass(Decimal("0.7"))
    assert budget.settle("a1", 0.25) == Decimal("0.3")  # the provider's last word may lag a reading
    assert budget.spent == Decimal("0.3") and budget.accrued == 0
    assert Budget(0.1).amount + Budget(0.2).amount == Decimal("0.3")  # no float artefacts


async def test_payload_errors_name_the_fix() -> None:
    with pytest.raises(PackageException, match="image_hash is required"):
        await vm.repo(image_url="http://127.0.0.1/x.tar")
    with pytest.raises(PackageException, match="needs an image_hash, an image_tag or an image_url"):
        await vm.repo()
    with pytest.raises(PackageException, match="not a sha256"):
        await vm.repo(image_hash="xyz")


def test_instance_params_resolution() -> None:
    assert list(_resolve_instance_params(None, None)) == [{}]
    assert list(_resolve_instance_params(3, None)) == [{}, {}, {}]
    assert list(_resolve_instance_params(None, [{"a": 1}, {"a": 2}])) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="depleted after 1 spawned instances"):
        list(_resolve_instance_params(2, [{"a": 1}]))


class PublicOffer(mkt_grpc.MarketServicer):
    """Just enough of a provider for a client to learn its id on loopback."""

    async def GetOffer(self, request, context):
        return mkt.GetOfferResponse(offer=mkt.Offer(provider_id="0x" + "ab" * 20))


class LyingTransfer(xfer_grpc.TransferServicer):
    """A provider that announces more than it sends, or ends without a trailer."""

    def __init__(self, trailer: bool, announced: int = 10, chunks: int = 1) -> None:
        self.trailer, self.announced, self.chunks = trailer, announced, chunks

    async def Download(self, request, context):
        yield xfer.DownloadResponse(header=xfer.DownloadHeader(size=self.announced))
        for _ in range(self.chunks):
            yield xfer.DownloadResponse(chunk=b"12345")
        if self.trailer:
            yield xfer.DownloadResponse(trailer=xfer.DownloadTrailer(sha256=hashlib.sha256(b"12345").hexdigest()))


@pytest.mark.parametrize(("lie", "says"), [
    (LyingTransfer(True), "is incomplete: 5 bytes arrived, 10 were announced"),
    (LyingTransfer(False), "ended after 5 bytes without its trailer"),
    (LyingTransfer(True, announced=1, chunks=1000), "sent 5 bytes, more than the 1 bytes its header announced"),
])
async def test_a_short_or_long_download_is_an_error_not_a_wrong_file(lie: LyingTransfer, says: str) -> None:
    """Short, or longer than announced (a provider may not fill the requestor's disk: refused at
    the first byte past the announced size, not at the end)."""
    server = grpc.aio.server()
    xfer_grpc.add_TransferServicer_to_server(lie, server)
    mkt_grpc.add_MarketServicer_to_server(PublicOffer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ProviderClient(f"127.0.0.1:{port}", RequestorIdentity.ephemeral())
    try:
        with pytest.raises(RequestorError, match=says):
            async for _ in client.download("a", "/golem/work/x"):
                pass
    finally:
        await client.close()
        await server.stop(0)


def test_help_of_golem_documents_every_parameter() -> None:
    import inspect

    from requestor import Golem

    doc = inspect.getdoc(Golem) or ""
    for name in inspect.signature(Golem.__init__).parameters:
        if name != "self":
            assert f"`{name}`" in doc, name


def test_props_declare_payload_fields_as_golem_constraints_and_properties() -> None:
    from dataclasses import dataclass

    from requestor.payload import Payload
    from requestor.props import com, inf
    from requestor.props.base import constraint, constraints_of, prop, props_of

    @dataclass(frozen=True)
    class Custom(Payload):
        runtime: str = constraint(inf.INF_RUNTIME_NAME, default="test-counters")
        min_mem_gib: float = constraint(inf.INF_MEM, ">=", default=0.5)
        model: com.PriceModel = prop(com.PRICE_MODEL, default=com.PriceModel.LINEAR)

    assert constraints_of(Custom()) == ["(golem.runtime.name=test-counters)", "(golem.inf.mem.gib>=0.5)"]
    assert props_of(Custom()) == {"golem.com.pricing.model": "linear"}
    assert com.Counter.CPU.value == "golem.usage.cpu_sec" and com.Counter.MAXMEM.value == "golem.usage.gib"


def test_budget_readings_come_as_often_as_the_budget_needs() -> None:
    from requestor.budget import MAX_POLL_SECONDS, POLL_SECONDS, BudgetWatch

    async def never(_: str) -> float:
        raise AssertionError("not read in this test")

    budget = Budget(1.0)
    watch = BudgetWatch(budget, never, never)  # type: ignore[arg-type]
    assert watch.next_reading_in() == MAX_POLL_SECONDS  # nothing live
    watch._live["cheap"] = Decimal("0.00001")  # 100,000 s to spend 1.0: a reading every 30 s
    assert watch.next_reading_in() == MAX_POLL_SECONDS
    watch._live["dear"] = Decimal("0.05")  # ~20 s to the end at full speed: readings every ~10 s
    assert 9 < watch.next_reading_in() < 10
    budget.open("a", 0)
    budget.accrue("a", 0.99)  # nearly spent: as often as allowed
    assert watch.next_reading_in() == POLL_SECONDS
