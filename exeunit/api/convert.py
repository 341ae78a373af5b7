"""Conversions between the contract's messages (exeunit.v1) and the domain objects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from exeunit import __version__, errors
from exeunit.domain import commands
from exeunit.domain.batch import RESULT_OUTPUT_BYTES, Batch, BatchEvent, BatchState, CommandResult, CommandState, EventKind
from exeunit.domain.market import Agreement, AgreementState, Demand, ImageRef, Offer, Refusal, RefusalReason
from exeunit.domain.networks import PrivateNetwork
from exeunit.domain.payments import AgreedPayment, AgreementMoney, PaymentChoice, PaymentPlatform, PaymentSettings
from exeunit.domain.reports import ActivityStatus, ActivitySummary, Usage
from exeunit.domain.resources import LinearPricing
from exeunit.domain.settings import ActivityLimits, ProviderSettings
from exeunit.domain.states import ActivityState
from exeunit.runtime.files import transfer_digests
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import network_pb2 as net
from exeunit.v1.conventions import DOCKER_VM_RUNTIME
from exeunit.v1.payments import format_amount


# The range google.protobuf.Timestamp and Duration define (0001-01-01 to 9999-12-31; +-10,000 years).
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
MAX_DURATION_SECONDS = 315_576_000_000
MAX_NANOS = 999_999_999


def datetime_from_proto(value: Timestamp, name: str) -> datetime:
    """A Timestamp as an aware UTC datetime; INVALID_ARGUMENT naming the field when out of range."""
    low, high = TIMESTAMP_SECONDS
    if not (low <= value.seconds <= high and 0 <= value.nanos <= MAX_NANOS):
        raise errors.InvalidArgument(
            f"{name} is not a valid timestamp (seconds must be within [{low}, {high}], nanos within "
            f"[0, {MAX_NANOS}]; got seconds={value.seconds}, nanos={value.nanos})"
        )
    return value.ToDatetime(tzinfo=timezone.utc)


def seconds_from_proto(value: Duration, name: str) -> float:
    """A non-negative Duration in seconds; INVALID_ARGUMENT naming the field otherwise."""
    if not (0 <= value.seconds <= MAX_DURATION_SECONDS and 0 <= value.nanos <= MAX_NANOS):
        raise errors.InvalidArgument(
            f"{name} must be a non-negative duration of at most {MAX_DURATION_SECONDS} seconds with nanos "
            f"within [0, {MAX_NANOS}] (got seconds={value.seconds}, nanos={value.nanos})"
        )
    return value.seconds + value.nanos / 1e9


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def timestamp(value: datetime) -> Timestamp:
    """Every event carries one, so this avoids protobuf's slower FromDatetime."""
    whole = (value - _EPOCH) // _SECOND  # exact; aware datetimes only (utcnow() makes them)
    return Timestamp(seconds=whole, nanos=value.microsecond * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


def pricing_to_proto(pricing: LinearPricing) -> mkt.LinearPricing:
    return mkt.LinearPricing(
        start_fee=pricing.start_fee,
        per_cpu_second=pricing.per_cpu_second,
        per_duration_second=pricing.per_duration_second,
        currency=pricing.currency,
        per_unit=pricing.per_unit,
    )


def offer_to_proto(offer: Offer) -> mkt.Offer:
    s = offer.settings
    return mkt.Offer(
        provider_id=s.provider_id,
        provider_name=s.name,
        subnet_tag=s.subnet_tag,
        runtime_name=s.runtimes[0],
        runtimes=list(s.runtimes),
        runtime_version=__version__,
        cpu_threads=max(offer.free.cpu_threads, 0),
        memory_bytes=max(offer.free.memory_bytes, 0),
        storage_bytes=max(offer.free.storage_bytes, 0),
        total_cpu_threads=s.capacity.cpu_threads,
        total_memory_bytes=s.capacity.memory_bytes,
        total_storage_bytes=s.capacity.storage_bytes,
        activity_cpu_threads=s.activity_preset.cpu_threads,
        activity_memory_bytes=s.activity_preset.memory_bytes,
        activity_storage_bytes=s.activity_preset.storage_bytes,
        pricing=pricing_to_proto(s.pricing),
        images=list(offer.images),
        accepts_image_urls=s.images.fetch.enabled,
        capabilities=list(s.capabilities),
        max_agreement_duration=duration(s.max_agreement_seconds),
        agreement_idle_timeout=duration(s.agreement_idle_seconds),
        limits=limits_to_proto(offer.limits, s),
        overlay_port=offer.overlay_port,
        payment=payment_terms_to_proto(s.payment),
        transfer_digests=list(transfer_digests()),
    )


def platform_to_proto(platform: PaymentPlatform) -> mkt.PaymentPlatform:
    return mkt.PaymentPlatform(
        platform=platform.platform, chain_id=platform.chain_id, token_address=platform.token_address,
        payee_address=platform.payee_address, confirmations=platform.confirmations,
        binding_signature=platform.binding_signature,
    )


def payment_terms_to_proto(payment: PaymentSettings) -> mkt.PaymentTerms:
    """The operator's payment terms as the offer states them; each platform's binding signature is
    made when the settings are (exeunit.api.payments.bind_platform)."""
    return mkt.PaymentTerms(
        platforms=[platform_to_proto(p) for p in payment.platforms],
        debit_note_interval=duration(payment.debit_note_interval_seconds),
        min_debit_note_interval=duration(payment.min_debit_note_interval_seconds),
        payment_timeout=duration(payment.payment_timeout_seconds),
        min_payment_timeout=duration(payment.min_payment_timeout_seconds),
        debit_note_accept_timeout=duration(payment.accept_timeout_seconds),
        provider_public_key=payment.public_key,
    )


def payment_choice_from_proto(choice: mkt.PaymentChoice) -> PaymentChoice:
    """A demand's payment choice; INVALID_ARGUMENT naming the field for a negative duration (whether
    the choice is within the offer is the market's to say: REFUSAL_REASON_PAYMENT_TERMS)."""
    return PaymentChoice(
        platform=choice.platform,
        payer_address=choice.payer_address,
        debit_note_interval_seconds=seconds_from_proto(choice.debit_note_interval, "demand.payment.debit_note_interval"),
        payment_timeout_seconds=seconds_from_proto(choice.payment_timeout, "demand.payment.payment_timeout"),
        accept_timeout_seconds=seconds_from_proto(choice.debit_note_accept_timeout,
                                                  "demand.payment.debit_note_accept_timeout"),
        payer_proof=choice.payer_proof[:128],  # a 65-byte signature: a longer one is no proof anyway
    )


def payment_choice_to_proto(choice: PaymentChoice) -> mkt.PaymentChoice:
    return mkt.PaymentChoice(
        platform=choice.platform, payer_address=choice.payer_address,
        debit_note_interval=duration(choice.debit_note_interval_seconds),
        payment_timeout=duration(choice.payment_timeout_seconds),
        debit_note_accept_timeout=duration(choice.accept_timeout_seconds), payer_proof=choice.payer_proof,
    )


def agreed_payment_to_proto(payment: AgreedPayment) -> mkt.AgreedPayment:
    return mkt.AgreedPayment(
        platform=payment.platform, chain_id=payment.chain_id, token_address=payment.token_address,
        payee_address=payment.payee_address, payer_address=payment.payer_address,
        confirmations=payment.confirmations, debit_note_interval=duration(payment.debit_note_interval_seconds),
        payment_timeout=duration(payment.payment_timeout_seconds),
        debit_note_accept_timeout=duration(payment.accept_timeout_seconds),
    )


def limits_to_proto(limits: ActivityLimits, s: ProviderSettings) -> mkt.OfferLimits:
    """Every bound the operator sets with a flag of `exeunit serve` (OfferLimits names each flag)."""
    return mkt.OfferLimits(
        batches_queued=limits.batches_queued, batches_kept=limits.batches_kept,
        activities_per_agreement=limits.activities_per_agreement,
        batch_ids_remembered=limits.batch_ids_remembered, replay_window_bytes=limits.replay_window_bytes,
        result_output_bytes=limits.result_output_cap, transfers_per_activity=limits.transfers_per_activity,
        transfers_per_requestor=limits.transfers_per_requestor, tunnels_per_activity=limits.tunnels_per_activity,
        tunnels_per_requestor=limits.tunnels_per_requestor, streams_per_requestor=limits.streams_per_requestor,
        networks_per_requestor=limits.networks_per_requestor,
        image_fetches_per_requestor=s.images.fetches_per_requestor,
        peers_per_network=limits.peers_per_network, macs_per_network=limits.overlay_macs_per_network,
        relay_queue_bytes=limits.relay_queue_bytes, pids_limit=limits.pids_limit,
        transfer_idle_timeout=duration(limits.transfer_idle_seconds),
        output_memory_bytes=limits.output_memory_bytes,
        output_memory_per_requestor_bytes=limits.output_memory_per_requestor_bytes,
        journal_bytes_per_activity=limits.journal_bytes_per_activity, image_bytes=s.images.fetch.max_bytes,
        ended_retention=duration(s.ended_retention_seconds),
    )


def demand_from_proto(demand: mkt.Demand) -> Demand:
    if not demand.HasField("expiration"):
        raise errors.InvalidArgument("demand.expiration is required (when the agreement ends by itself)")
    return Demand(
        image=ImageRef(hash=demand.image.hash, tag=demand.image.tag, url=demand.image.url),
        min_memory_bytes=demand.min_memory_bytes,
        min_storage_bytes=demand.min_storage_bytes,
        min_cpu_threads=demand.min_cpu_threads,
        capabilities=tuple(demand.capabilities),
        subnet_tag=demand.subnet_tag,
        expiration=datetime_from_proto(demand.expiration, "demand.expiration"),
        runtime=demand.runtime or DOCKER_VM_RUNTIME,
        payment=payment_choice_from_proto(demand.payment) if demand.HasField("payment") else None,
    )


def demand_to_proto(demand: Demand) -> mkt.Demand:
    return mkt.Demand(
        image=mkt.ImageRef(hash=demand.image.hash, tag=demand.image.tag, url=demand.image.url),
        min_memory_bytes=demand.min_memory_bytes,
        min_storage_bytes=demand.min_storage_bytes,
        min_cpu_threads=demand.min_cpu_threads,
        capabilities=list(demand.capabilities),
        subnet_tag=demand.subnet_tag,
        expiration=timestamp(demand.expiration),
        runtime=demand.runtime,
        payment=payment_choice_to_proto(demand.payment) if demand.payment is not None else None,
    )


AGREEMENT_STATES = {
    AgreementState.APPROVED: mkt.AGREEMENT_STATE_APPROVED,
    AgreementState.TERMINATED: mkt.AGREEMENT_STATE_TERMINATED,
}


def agreement_to_proto(agreement: Agreement, usage: Usage | None = None) -> mkt.Agreement:
    message = mkt.Agreement(
        agreement_id=agreement.agreement_id,
        provider_id=agreement.provider_id,
        requestor_id=agreement.requestor_id,
        demand=demand_to_proto(agreement.demand),
        pricing=pricing_to_proto(agreement.pricing),
        state=AGREEMENT_STATES[agreement.state],
        created=timestamp(agreement.created),
        expiration=timestamp(agreement.expiration),
        cpu_threads=agreement.reserved.cpu_threads,
        memory_bytes=agreement.reserved.memory_bytes,
        storage_bytes=agreement.reserved.storage_bytes,
        termination_reason=agreement.termination_reason,
        termination_message=agreement.termination_message,
        activity_ids=agreement.activity_ids,
        payment=agreed_payment_to_proto(agreement.payment),
    )
    if usage is not None:
        message.usage.CopyFrom(mkt.AgreementUsage(
            cpu_seconds=usage.cpu_seconds, duration=duration(usage.duration_seconds), cost=usage.cost,
            counters=usage.counters, measured=timestamp(usage.measured),
        ))
    return message


REFUSAL_REASONS = {
    RefusalReason.SUBNET_MISMATCH: mkt.REFUSAL_REASON_SUBNET_MISMATCH,
    RefusalReason.INSUFFICIENT_RESOURCES: mkt.REFUSAL_REASON_INSUFFICIENT_RESOURCES,
    RefusalReason.MISSING_CAPABILITY: mkt.REFUSAL_REASON_MISSING_CAPABILITY,
    RefusalReason.IMAGE_UNAVAILABLE: mkt.REFUSAL_REASON_IMAGE_UNAVAILABLE,
    RefusalReason.EXPIRATION_TOO_FAR: mkt.REFUSAL_REASON_EXPIRATION_TOO_FAR,
    RefusalReason.RUNTIME_MISMATCH: mkt.REFUSAL_REASON_RUNTIME_MISMATCH,
    RefusalReason.PAYMENT_TERMS: mkt.REFUSAL_REASON_PAYMENT_TERMS,
}


def refusal_to_proto(refusal: Refusal) -> mkt.Refusal:
    return mkt.Refusal(reason=REFUSAL_REASONS[refusal.reason], message=refusal.message)


def commands_from_proto(messages: list[act.Command]) -> list[commands.Command]:
    result: list[commands.Command] = []
    for index, message in enumerate(messages):
        kind = message.WhichOneof("command")
        if kind == "deploy":
            networks = message.deploy.networks
            if len(networks) > 1:
                raise errors.InvalidArgument(f"command {index} (deploy) names {len(networks)} networks; at most one")
            if networks and not (networks[0].network_id and networks[0].ip):
                raise errors.InvalidArgument(f"command {index} (deploy): a network needs its network_id and the ip")
            result.append(commands.Deploy(networks[0].network_id, networks[0].ip) if networks else commands.Deploy())
        elif kind == "start":
            result.append(commands.Start(args=tuple(message.start.args)))
        elif kind == "run":
            run = message.run
            timeout = seconds_from_proto(run.timeout, f"command {index} (run): timeout") if run.HasField("timeout") else None
            result.append(
                commands.Run(
                    entry_point=run.entry_point,
                    args=tuple(run.args),
                    env=dict(run.env),
                    workdir=run.workdir,
                    timeout_seconds=timeout or None,
                )
            )
        elif kind == "terminate":
            result.append(commands.Terminate())
        else:
            raise errors.InvalidArgument(
                f"command {index} sets none of deploy, start, run, terminate (empty or unknown command)"
            )
    return result


ACTIVITY_STATES = {
    ActivityState.NEW: act.ACTIVITY_STATE_NEW,
    ActivityState.DEPLOYED: act.ACTIVITY_STATE_DEPLOYED,
    ActivityState.READY: act.ACTIVITY_STATE_READY,
    ActivityState.TERMINATED: act.ACTIVITY_STATE_TERMINATED,
}


def status_to_proto(status: ActivityStatus) -> act.ActivityStatus:
    return act.ActivityStatus(
        activity_id=status.activity_id,
        agreement_id=status.agreement_id,
        state=ACTIVITY_STATES[status.state],
        reason=status.reason,
        message=status.message,
        changed=timestamp(status.changed),
        executor=status.executor,
    )


BATCH_STATES = {
    BatchState.QUEUED: act.BATCH_STATE_QUEUED,
    BatchState.RUNNING: act.BATCH_STATE_RUNNING,
    BatchState.SUCCEEDED: act.BATCH_STATE_SUCCEEDED,
    BatchState.FAILED: act.BATCH_STATE_FAILED,
}

COMMAND_STATES = {
    CommandState.PENDING: act.COMMAND_STATE_PENDING,
    CommandState.RUNNING: act.COMMAND_STATE_RUNNING,
    CommandState.SUCCEEDED: act.COMMAND_STATE_SUCCEEDED,
    CommandState.FAILED: act.COMMAND_STATE_FAILED,
    CommandState.SKIPPED: act.COMMAND_STATE_SKIPPED,
}


def event_to_proto(event: BatchEvent) -> act.BatchEvent:
    message = act.BatchEvent(sequence=event.sequence, time=timestamp(event.time), command_index=event.command_index)
    if event.kind is EventKind.STARTED:
        message.started.SetInParent()
    elif event.kind is EventKind.STDOUT:
        message.stdout.data = event.data
    elif event.kind is EventKind.STDERR:
        message.stderr.data = event.data
    elif event.kind is EventKind.FINISHED:
        message.finished.return_code = event.return_code
        message.finished.success = event.success
        message.finished.message = event.message
    else:
        assert event.batch_state is not None
        message.batch_finished.state = BATCH_STATES[event.batch_state]
    return message


def batch_to_proto(batch: Batch, results: list[CommandResult]) -> act.GetBatchResponse:
    """The batch's results; their output shares RESULT_OUTPUT_BYTES in command order, and what
    does not fit is cut with the truncated flag set (the event stream has all of it)."""
    response = act.GetBatchResponse(batch_id=batch.batch_id, state=BATCH_STATES[batch.state])
    room = RESULT_OUTPUT_BYTES
    for r in results:
        stdout, stderr = bytes(r.stdout.data[:room]), b""
        room -= len(stdout)
        stderr = bytes(r.stderr.data[:room])
        room -= len(stderr)
        result = response.results.add(
            index=r.index,
            state=COMMAND_STATES[r.state],
            return_code=r.return_code,
            message=r.message,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=r.stdout.truncated or len(stdout) < len(r.stdout.data),
            stderr_truncated=r.stderr.truncated or len(stderr) < len(r.stderr.data),
        )
        if r.started:
            result.started.CopyFrom(timestamp(r.started))
        if r.finished:
            result.finished.CopyFrom(timestamp(r.finished))
    return response


def usage_to_proto(usage: Usage) -> act.GetActivityUsageResponse:
    return act.GetActivityUsageResponse(
        cpu_seconds=usage.cpu_seconds,
        duration=duration(usage.duration_seconds),
        cost=usage.cost,
        memory_bytes=usage.memory_bytes,
        measured=timestamp(usage.measured),
        storage_bytes=usage.storage_bytes,
        counters=usage.counters,
    )


def summary_to_proto(summary: ActivitySummary, money: AgreementMoney | None = None) -> act.ActivitySummary:
    status, usage = summary.status, summary.usage
    figures = (money.due, money.invoiced, money.accepted, money.paid, money.overdue) if money else (Decimal(0),) * 5
    due, invoiced, accepted, paid, overdue = (format_amount(value) for value in figures)
    message = act.ActivitySummary(
        amount_due=due, amount_invoiced=invoiced, amount_accepted=accepted, amount_paid=paid, amount_overdue=overdue,
        activity_id=status.activity_id, agreement_id=status.agreement_id, requestor_id=summary.requestor_id,
        state=ACTIVITY_STATES[status.state], reason=status.reason, image=summary.image,
        created=timestamp(summary.created), cpu_seconds=usage.cpu_seconds, memory_bytes=usage.memory_bytes,
        storage_bytes=usage.storage_bytes, executor=status.executor, network_id=summary.network_id, ip=summary.ip,
    )
    if summary.started is not None:
        message.started.CopyFrom(timestamp(summary.started))
    return message


def network_to_proto(network: PrivateNetwork) -> net.NetworkInfo:
    return net.NetworkInfo(
        network_id=network.network_id,
        address=str(network.subnet),
        gateway=network.gateway,
        members=[net.NetworkMember(activity_id=m.activity_id, ip=str(m.ip), attached=m.attached)
                 for m in network.members.values()],
    )
