"""The contract's messages to and from the requestor's records (requestor.model), in one place."""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1.conventions import activity_state_name
from exeunit.v1.payments import binding_message, verify
from requestor.model import (
    ActivityStatus, AgreementInfo, BatchEvent, CommandSpec, DemandSpec, DeploySpec, Offer, PaymentChoice,
    PaymentTerms, Pricing, Refusal, StartSpec, TerminateSpec, Usage,
)


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


def _seconds(duration: Duration) -> float:
    return duration.ToTimedelta().total_seconds()


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def bound_payees(terms: mkt.PaymentTerms, provider_id: str) -> tuple[tuple[str, str], ...]:
    """The platforms whose payee address the provider signed (binding_signature, under the key
    whose id is `provider_id`), each with that address lowercase; the others left out."""
    return tuple((p.platform, p.payee_address.lower()) for p in terms.platforms
                 if verify(terms.provider_public_key, p.binding_signature,
                           binding_message(provider_id, p.platform, p.chain_id, p.token_address, p.payee_address),
                           provider_id))


def payment_terms_from(terms: mkt.PaymentTerms, provider_id: str = "") -> PaymentTerms:
    return PaymentTerms(
        platforms=tuple(p.platform for p in terms.platforms),
        payees=bound_payees(terms, provider_id) if provider_id else (),
        debit_note_interval=_seconds(terms.debit_note_interval),
        min_debit_note_interval=_seconds(terms.min_debit_note_interval),
        payment_timeout=_seconds(terms.payment_timeout),
        min_payment_timeout=_seconds(terms.min_payment_timeout),
        debit_note_accept_timeout=_seconds(terms.debit_note_accept_timeout),
    )


def payment_choice_to(choice: PaymentChoice) -> mkt.PaymentChoice:
    return mkt.PaymentChoice(
        platform=choice.platform, payer_address=choice.payer_address,
        debit_note_interval=_duration(choice.debit_note_interval),
        payment_timeout=_duration(choice.payment_timeout),
        debit_note_accept_timeout=_duration(choice.debit_note_accept_timeout), payer_proof=choice.payer_proof,
    )


def offer_from(address: str, o: mkt.Offer) -> Offer:
    return Offer(
        address=address,
        provider_id=o.provider_id,
        provider_name=o.provider_name,
        subnet_tag=o.subnet_tag,
        runtime_name=o.runtime_name,
        cpu_threads=o.cpu_threads,
        memory_bytes=o.memory_bytes,
        storage_bytes=o.storage_bytes,
        total_cpu_threads=o.total_cpu_threads,
        total_memory_bytes=o.total_memory_bytes,
        total_storage_bytes=o.total_storage_bytes,
        pricing=Pricing(o.pricing.start_fee, o.pricing.per_cpu_second, o.pricing.per_duration_second, o.pricing.currency,
                        dict(o.pricing.per_unit)),
        images=tuple(o.images),
        accepts_image_urls=o.accepts_image_urls,
        capabilities=tuple(o.capabilities),
        runtimes=tuple(o.runtimes) or (o.runtime_name,),
        overlay_port=o.overlay_port,
        activity_cpu_threads=o.activity_cpu_threads,
        activity_memory_bytes=o.activity_memory_bytes,
        activity_storage_bytes=o.activity_storage_bytes,
        payment=payment_terms_from(o.payment, o.provider_id) if o.HasField("payment") else None,
    )


def demand_to(demand: DemandSpec) -> mkt.Demand:
    return mkt.Demand(
        image=mkt.ImageRef(hash=demand.image_hash, tag=demand.image_tag, url=demand.image_url),
        min_memory_bytes=demand.min_memory_bytes,
        min_storage_bytes=demand.min_storage_bytes,
        min_cpu_threads=demand.min_cpu_threads,
        capabilities=list(demand.capabilities),
        subnet_tag=demand.subnet_tag,
        expiration=_timestamp(demand.expiration),
        runtime=demand.runtime,
        payment=payment_choice_to(demand.payment) if demand.payment is not None else None,
    )


def proposal_outcome_from(response: mkt.ProposeAgreementResponse) -> AgreementInfo | Refusal:
    if response.WhichOneof("outcome") == "refusal":
        return Refusal(mkt.RefusalReason.Name(response.refusal.reason), response.refusal.message)
    return agreement_from(response.agreement)


def agreement_from(agreement: mkt.Agreement) -> AgreementInfo:
    return AgreementInfo(
        agreement_id=agreement.agreement_id,
        cpu_threads=agreement.cpu_threads,
        expiration=agreement.expiration.ToDatetime(tzinfo=timezone.utc),
        memory_bytes=agreement.memory_bytes,
        storage_bytes=agreement.storage_bytes,
        created=agreement.created.ToDatetime(tzinfo=timezone.utc) if agreement.HasField("created") else None,
        debit_note_interval=_seconds(agreement.payment.debit_note_interval),
        debit_note_accept_timeout=_seconds(agreement.payment.debit_note_accept_timeout),
        payment_timeout=_seconds(agreement.payment.payment_timeout),
        platform=agreement.payment.platform,
        payee_address=agreement.payment.payee_address,
        payer_address=agreement.payment.payer_address,
        chain_id=agreement.payment.chain_id,
        token_address=agreement.payment.token_address,
        confirmations=agreement.payment.confirmations,
    )


def command_to(command: CommandSpec) -> act.Command:
    if isinstance(command, DeploySpec):
        networks = [act.DeployNetwork(network_id=command.network_id, ip=command.ip)] if command.network_id else []
        return act.Command(deploy=act.DeployCommand(networks=networks))
    if isinstance(command, StartSpec):
        return act.Command(start=act.StartCommand(args=list(command.args)))
    if isinstance(command, TerminateSpec):
        return act.Command(terminate=act.TerminateCommand())
    run = act.RunCommand(entry_point=command.entry_point, args=list(command.args), env=command.env,
                         workdir=command.workdir)
    if command.timeout:
        run.timeout.CopyFrom(_duration(command.timeout))
    return act.Command(run=run)


def batch_event_from(event: act.BatchEvent) -> BatchEvent:
    kind = event.WhichOneof("kind") or ""
    if kind in ("stdout", "stderr"):
        data = getattr(event, kind).data
        return BatchEvent(event.sequence, event.command_index, kind, data=data)
    if kind == "finished":
        done = event.finished
        return BatchEvent(event.sequence, event.command_index, kind, return_code=done.return_code,
                          success=done.success, message=done.message)
    return BatchEvent(event.sequence, event.command_index, kind)


def status_from(status: act.ActivityStatus) -> ActivityStatus:
    return ActivityStatus(activity_state_name(status.state), status.reason, status.message)


def usage_from(response: act.GetActivityUsageResponse) -> Usage:
    return Usage(response.cpu_seconds, response.duration.ToTimedelta().total_seconds(), response.cost,
                 response.memory_bytes, response.storage_bytes,
                 response.measured.ToDatetime(tzinfo=timezone.utc) if response.HasField("measured") else None,
                 dict(response.counters))
