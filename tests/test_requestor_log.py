"""The summary logger's lines in yapapi's words (requestor.log), event by event: what people and
goth's checks grep for. Pure: events made here, no providers."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest

from requestor import events
from requestor.log import SummaryLogger
from requestor.model import Agreement, Job

JOB = Job(id="1", payload=None, expiration=datetime(2030, 1, 1, tzinfo=timezone.utc))
AGREEMENT = Agreement(id="agr-1", provider_id="0xabc", provider_name="provider-1", address="127.0.0.1:1")


def said(caplog: pytest.LogCaptureFixture, *happened: events.Event) -> list[str]:
    """The summary's lines (INFO and up) for these events, in order."""
    summary = SummaryLogger()
    with caplog.at_level(logging.INFO, logger="requestor.summary"):
        caplog.clear()
        for event in happened:
            summary.log(event)
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == "requestor.summary"]


@pytest.mark.parametrize("reason, line", [
    ({"message": "Finished"}, "INFO [Job 1] Terminated agreement with provider-1"),  # an instance's end
    ({"message": "Work cancelled", "golem.requestor.code": "Cancelled"},
     "INFO [Job 1] Terminated agreement with provider-1"),
    ({"message": "Failure"}, "INFO [Job 1] Terminated agreement with provider-1"),
    ({"message": "Successfully finished all work", "golem.requestor.code": "Success"}, None),
    ({"message": "Success"}, None),
])
def test_an_agreement_ended_before_all_work_succeeded_is_said_as_yapapi_says_it(caplog, reason, line) -> None:
    lines = said(caplog, events.AgreementTerminated(job=JOB, agreement=AGREEMENT, reason={**reason, "cost": "0.1"}))
    assert lines == ([line] if line else [])


def test_no_offers_warns_in_yapapis_words_with_the_time_waited(caplog) -> None:
    waited = events.NoProposalsConfirmed(job=JOB, timeout=timedelta(seconds=20))
    assert said(caplog, waited, waited) == [
        "WARNING No offers have been collected from the market for 20s. Make sure you're using the latest "
        "released versions of yagna and yapapi, and the correct subnet. ",
        "WARNING No offers have been collected from the market for 40s. Make sure you're using the latest "
        "released versions of yagna and yapapi, and the correct subnet. ",
    ]
    offered = events.ProposalReceived(job=JOB, proposal=SimpleNamespace(provider_id="0xabc"))  # type: ignore[arg-type]
    assert said(caplog, offered, waited)[-1].startswith(
        "WARNING 1 offer has been collected from the market, but no provider has responded for 20s. Make sure")


def test_a_job_after_one_that_cost_something_says_the_cost_so_far_and_the_end_the_total(caplog) -> None:
    second = Job(id="2", payload=None, expiration=JOB.expiration)
    lines = said(caplog, events.JobStarted(job=JOB),
                 events.InvoiceAccepted(job=JOB, agreement=AGREEMENT, amount=Decimal("0.250")),
                 events.JobStarted(job=second), events.ShutdownFinished())
    assert lines == ["INFO [Job 1] Accepted invoice from 'provider-1', amount: 0.250", "INFO The cost so far: 0.25",
                     "INFO Negotiated 0 agreements with 0 providers", "INFO Total cost: 0.25",
                     "INFO Golem engine has shut down"]
