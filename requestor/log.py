"""Readable logging for requestor scripts: the summary consumer, event loggers and a set-up.

`log_summary()` is the consumer `Golem` uses unless given another: one line for each step a
person follows (agreements proposed and confirmed, each instance's provider and state changes,
failures with the failing command and its stderr, what each agreement cost, the total), with the
wording yapapi's summary logger uses, so that what people and tests grep for is there (a line about
one job starts "[Job ID] ", as yapapi's; with several jobs at once, that tells them apart). It wraps
another consumer when given one, as yapapi's does: `log_summary(log_event_repr)` logs every event
too. The library never configures handlers itself; `enable_default_logger()` is for scripts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from requestor import events
from requestor.errors import CommandExecutionError
from requestor.version import __version__

summary_log = logging.getLogger("requestor.summary")
event_log = logging.getLogger("requestor.events")

DEFAULT_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"
# What yapapi's debug_*_api flags turn up: here, the calls to providers (requestor.client) and the
# search for them (requestor.discovery); never requestor.engine, whose DEBUG lines are yapapi's
# engine's (the debit notes' counts), in the file whatever the flags.
API_LOGGERS = {"activity": "requestor.client", "market": "requestor.discovery",
               "payment": "requestor.budget", "net": "requestor.network"}

EventConsumer = Callable[[events.Event], None]


class _UtcFormatter(logging.Formatter):
    """RFC 3339 times in UTC with milliseconds: 2026-11-29T13:05:54.123Z."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def enable_default_logger(
    format_: str = DEFAULT_FORMAT,
    log_file: str | None = None,
    debug_activity_api: bool = False,
    debug_market_api: bool = False,
    debug_payment_api: bool = False,
    debug_net_api: bool = False,
    level: int = logging.INFO,
) -> None:
    """Logs `level` and up to stderr; with `log_file`, everything down to DEBUG to that file too
    (the `debug_*_api` flags add the library's calls of that kind to the file, as yapapi's add
    its REST calls). Library noise (grpc, docker, urllib3, the embedded provider) stays at WARNING."""
    formatter = _UtcFormatter(format_)
    root = logging.getLogger()
    # The library's logger holds the handlers itself, as yapapi's "yapapi" logger does (scripts
    # written for yapapi set `getLogger("yapapi").handlers[0]`, the console, to DEBUG); the root
    # logger shares them for other libraries' lines, which the library's no longer pass through.
    library = logging.getLogger("requestor")
    library.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    console.setLevel(level)
    library.addHandler(console)
    root.addHandler(console)
    root.setLevel(min(level, logging.DEBUG if log_file else level))
    library.setLevel(root.level)
    for noisy in ("urllib3", "docker", "exeunit", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not log_file:
        return
    file_handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    file_handler.setFormatter(formatter)
    file_handler.setLevel(logging.DEBUG)
    library.addHandler(file_handler)
    root.addHandler(file_handler)
    for flag, kind in ((debug_activity_api, "activity"), (debug_market_api, "market"),
                       (debug_payment_api, "payment"), (debug_net_api, "net")):
        logging.getLogger(API_LOGGERS[kind]).setLevel(logging.DEBUG if flag else logging.INFO)
    summary_log.debug("requestor %s, script %s, working directory %s", __version__, sys.argv[0], os.getcwd())
    summary_log.info("Using log file `%s`; in case of errors look for additional information there", log_file)


def log_event(event: events.Event) -> None:
    """Logs each event in a line (DEBUG, logger requestor.events)."""
    event_log.debug("%s", event)


def log_event_repr(event: events.Event) -> None:
    """Logs each event's repr (DEBUG), with the traceback of its exception if it has one."""
    event_log.debug("%r", event, exc_info=event.exc_info)


def pluralize(num: int, thing: str) -> str:
    """"1 provider", "2 providers"."""
    return f"1 {thing}" if num == 1 else f"{num} {thing}s"


class SummaryLogger:
    """Follows the events of one Golem and logs what a person wants to know, once each."""

    def __init__(self, wrapped: EventConsumer | None = None, stream_output: bool = False) -> None:
        self._wrapped = wrapped
        self._stream_output = stream_output
        self._costs: dict[str, Decimal] = {}  # agreement id -> cost
        self._names: dict[str, str] = {}  # agreement id -> provider name
        self._job_started: dict[str, float] = {}  # task jobs' start (time.time()), by job id
        self._job_agreements: dict[str, set[str]] = defaultdict(set)  # confirmed ones, by job id
        self._tasks_by: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)  # job -> (id, name) -> tasks
        self._failures: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)  # job -> (id, name) -> failures
        self._offering: set[str] = set()  # providers whose offers were received
        self._waited_for_offers = timedelta(0)  # summed NoProposalsConfirmed timeouts
        self._offers_collected: Counter[str] = Counter()  # ProposalReceived, by job id

    def log(self, event: events.Event) -> None:
        if self._wrapped is not None:
            self._wrapped(event)
        try:
            self._handle(event)
        except Exception:  # a summary must never break the computation it describes
            summary_log.exception("the summary logger failed on %r", event)

    def _handle(self, event: events.Event) -> None:
        if isinstance(event, events.ProposalReceived):
            self._offers_collected[event.job_id] += 1
            if event.provider_id not in self._offering:
                self._offering.add(event.provider_id)
                summary_log.info("Received proposals from %s so far", pluralize(len(self._offering), "provider"))
        elif isinstance(event, events.AgreementCreated):
            self._names[event.agr_id] = event.provider_name
            summary_log.info("%sAgreement proposed to provider '%s' (%s)", _job(event), event.provider_name,
                             event.provider_id)
        elif isinstance(event, events.AgreementConfirmed):
            self._job_agreements[event.job_id].add(event.agr_id)
            summary_log.info("%sAgreement confirmed by provider '%s'", _job(event), event.provider_name)
        elif isinstance(event, (events.JobStarted, events.JobFinished, events.TaskEvent, events.WorkerFinished)):
            self._handle_task_job(event)
        elif isinstance(event, events.ServiceStateChanged):
            where = f" on {event.agreement.provider_name}" if event.agreement else ""
            line = f"{_name(event.service)}{where}: {event.old.value} -> {event.new.value}"
            error = event.exception
            if error is not None:
                summary_log.warning("%s (%s: %s)", line, type(error).__name__, error)
            else:
                summary_log.info("%s", line)
        elif isinstance(event, events.CommandExecuted) and not event.success:
            summary_log.warning(
                "Command failed on provider '%s': %s: %s%s", event.provider_name, event.command, event.message,
                f"\n  stderr: {event.stderr.strip()[-1000:]}" if event.stderr else "",
            )
        elif isinstance(event, events.InvoiceAccepted):
            self._costs[event.agr_id] = event.amount
            summary_log.info("%sAccepted invoice from '%s', amount: %s", _job(event), event.provider_name, event.amount)
        elif isinstance(event, events.PaymentFailed):
            reason = str(event.exception) or repr(event.exception) or "unexpected error"
            summary_log.error("Failed to accept an invoice or a debit note from '%s', reason: %s",
                              event.provider_name, reason)
        elif isinstance(event, events.AgreementTerminated):
            # yapapi's rule: every end but the one after all work succeeded (each instance's, each
            # worker's that is not pooled); the reason is in the events' log
            if "Success" not in (event.reason.get("golem.requestor.code"), event.reason.get("message")):
                summary_log.info("%sTerminated agreement with %s", _job(event), event.provider_name)
        elif isinstance(event, events.NoProposalsConfirmed):
            self._waited_for_offers += event.timeout
            summary_log.warning("%s", _no_offers(self._offers_collected[event.job_id], self._waited_for_offers))
        elif isinstance(event, events.ProposalRejected) and event.reason:
            summary_log.debug("Offer of %s not taken: %s", event.address, event.reason)
        elif isinstance(event, events.ShutdownFinished):
            providers = len(set(self._names.values()))
            summary_log.info("Negotiated %s with %s", pluralize(len(self._names), "agreement"),
                             pluralize(providers, "provider"))
            summary_log.info("Total cost: %s", sum(self._costs.values(), Decimal(0)).normalize())
            self._costs.clear()
            if event.exc_info:
                summary_log.error("Error when shutting down Golem engine: %s", event.exception)
            else:
                summary_log.info("Golem engine has shut down")
        elif isinstance(event, events.ExecutionInterrupted) and event.exc_info:
            summary_log.warning("Execution interrupted by %s", event.exc_info[0].__name__)
        elif self._stream_output and isinstance(event, (events.CommandStdOut, events.CommandStdErr)):
            stream = "stdout" if isinstance(event, events.CommandStdOut) else "stderr"
            for line in event.output.rstrip("\n").splitlines():
                summary_log.info("[%s %s] %s", event.provider_name, stream, line)


    def _handle_task_job(self, event: events.Event) -> None:
        """The Task API's lines, in yapapi's words."""
        if isinstance(event, events.JobStarted):
            self._job_started[event.job_id] = time.time()
            if self._costs:  # as yapapi's, when an earlier job already cost something
                summary_log.info("The cost so far: %s", sum(self._costs.values(), Decimal(0)).normalize())
        elif isinstance(event, events.TaskStarted):
            summary_log.info("%sTask started on provider '%s', task data: %s", _job(event), event.provider_name,
                             str_capped(event.task_data, 200))
        elif isinstance(event, events.TaskFinished):
            summary_log.info("%sTask finished by provider '%s', task data: %s", _job(event), event.provider_name,
                             str_capped(event.task_data, 200))
            self._tasks_by[event.job_id][(event.provider_id, event.provider_name)] += 1
        elif isinstance(event, events.TaskFailed):
            summary_log.warning("%sTask failed after %s, last on provider '%s'; reason: %s; task data: %s", _job(event),
                                pluralize(event.task.attempts, "attempt"), event.provider_name, event.reason,
                                str_capped(event.task_data, 200))
        elif isinstance(event, events.WorkerFinished) and event.exc_info is not None:
            self._failures[event.job_id][(event.provider_id, event.provider_name)] += 1
            error = event.exception
            reason = str(error) or repr(error) or "unexpected error"
            if isinstance(error, CommandExecutionError):
                summary_log.warning("%sActivity failed on provider '%s'; reason: %s", _job(event), event.provider_name,
                                    reason)
            else:
                summary_log.warning("%sWorker for provider '%s' failed; reason: %s", _job(event), event.provider_name,
                                    reason)
        elif isinstance(event, events.JobFinished):
            error = event.exception
            if error is None:
                started = self._job_started.get(event.job_id, time.time())
                summary_log.info("%sJob finished in %.1fs", _job(event), time.time() - started)
            elif isinstance(error, asyncio.CancelledError):
                summary_log.warning("%sJob cancelled", _job(event))
            else:
                summary_log.error("%sJob failed, reason: %s", _job(event),
                                  str(error) or repr(error) or "unexpected error")
            self._job_summary(event.job_id)

    def _job_summary(self, job_id: str) -> None:
        agreements = self._job_agreements.pop(job_id, set())
        tasks = self._tasks_by.pop(job_id, Counter())
        job = f"[Job {job_id}] "
        summary_log.info("%sNegotiated %d agreements with %s", job, len(agreements),
                         pluralize(len({self._names.get(a) for a in agreements}), "provider"))
        for (_, name), count in tasks.items():
            summary_log.info("%sProvider '%s' computed %s", job, name, pluralize(count, "task"))
        for name in sorted({self._names.get(a, "?") for a in agreements} - {name for _, name in tasks}):
            summary_log.info("%sProvider '%s' did not compute any tasks", job, name)
        for (_, name), count in self._failures.pop(job_id, Counter()).items():
            summary_log.info("%sActivity failed %s on provider '%s'", job, pluralize(count, "time"), name)


def _no_offers(collected: int, waited: timedelta) -> str:
    """yapapi's warning while no provider answers a job's demand."""
    if collected == 0:
        said = f"No offers have been collected from the market for {waited.seconds}s."
    else:
        offers = "1 offer has" if collected == 1 else f"{collected} offers have"
        said = f"{offers} been collected from the market, but no provider has responded for {waited.seconds}s."
    return said + " Make sure you're using the latest released versions of yagna and yapapi, and the correct subnet. "


def _job(event: events.JobEvent) -> str:
    """What a line about one job starts with, as yapapi's: "[Job 1] "."""
    return f"[Job {event.job_id}] "


def str_capped(thing: object, max_len: int) -> str:
    """str(thing), cut to `max_len` characters with "..." at the end when longer."""
    text = str(thing)
    return text if len(text) <= max_len else (text[: max_len - 3] + "..." if max_len >= 3 else "...")


def log_summary(wrapped_emitter: EventConsumer | None = None, stream_output: bool = False) -> EventConsumer:
    """The summary consumer (see the module); `wrapped_emitter` gets every event first."""
    return SummaryLogger(wrapped_emitter, stream_output).log


def _name(service: object) -> str:
    return f"{type(service).__name__}#{getattr(service, 'id', '?')[:6]}"
