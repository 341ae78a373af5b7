"""Readable logging for requestor scripts: a default event consumer and a logger set-up.

`log_summary()` is the consumer `Golem` uses unless given another: it says which provider each
instance runs on, every state change, failures with the failing command and its stderr, and the
cost of each agreement. The library itself never configures logging handlers;
`enable_default_logger()` is for scripts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from requestor import events

summary_log = logging.getLogger("requestor.summary")


def enable_default_logger(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Logs to stderr (and optionally a file) in a short, readable format."""
    formatter = logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "docker", "exeunit"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_summary(stream_output: bool = False) -> Callable[[events.Event], None]:
    """An event consumer that logs a readable account of the computation."""

    def consume(event: events.Event) -> None:
        if isinstance(event, events.ServiceStateChanged):
            where = f" on {event.agreement.provider_name}" if event.agreement else ""
            line = f"{_name(event.service)}{where}: {event.old.value} -> {event.new.value}"
            if event.exception is not None:
                summary_log.warning("%s (%s)", line, event.exception)
            else:
                summary_log.info("%s", line)
        elif isinstance(event, events.AgreementCreated):
            summary_log.info("Agreement with %s (%s) [%s]", event.provider_name, event.agreement.address, event.agr_id[:8])
        elif isinstance(event, events.CommandExecuted) and not event.success:
            summary_log.warning(
                "Command failed on %s: %r: %s%s", event.provider_name, event.command, event.message,
                f"\n  stderr: {event.stderr.strip()[-1000:]}" if event.stderr else "",
            )
        elif isinstance(event, events.AgreementTerminated):
            summary_log.info("Agreement with %s ended (%s), cost %s", event.provider_name,
                             event.reason.get("message"), event.reason.get("cost"))
        elif isinstance(event, events.ProposalRejected) and event.reason:
            summary_log.debug("Offer of %s not taken: %s", event.address, event.reason)
        elif stream_output and isinstance(event, (events.CommandStdOut, events.CommandStdErr)):
            stream = "stdout" if isinstance(event, events.CommandStdOut) else "stderr"
            for line in event.output.rstrip("\n").splitlines():
                summary_log.info("[%s %s] %s", event.provider_name, stream, line)

    return consume


def _name(service: object) -> str:
    return f"{type(service).__name__}#{getattr(service, 'id', '?')[:6]}"
