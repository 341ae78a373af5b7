"""The daemon's logs: one event per line, as logfmt (default) or JSON.

    time=2026-11-29T13:05:54.123Z level=info logger=exeunit.services.activity event=activity_state agreement=... state=Ready
    {"time": "2026-11-29T13:05:54.123Z", "level": "info", "logger": "exeunit.services.activity", "event": "activity_state", ...}

Library modules log `"event=NAME key=%s key2=%d"` templates with %-arguments (cheap when the level
is off); the formatter turns each `key=%s` into a field and quotes values as logfmt wants (double
quotes when a value has spaces, quotes, `=` or nothing). A bare `%s` inserts ready-made `k=v` pairs
(an activity's ids). Messages not in that form (other libraries') become `msg="..."`. Times are
RFC 3339 in UTC. Only the CLI configures handlers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

PLACEHOLDER = re.compile(r"%(?:[-+ 0#]*\d*(?:\.\d+)?)[sdifr]|%%")
PLAIN_VALUE = re.compile(r'^[^\s"=\\]+$')
FORMATS = ("logfmt", "json")
# Libraries that say a lot at DEBUG about their own plumbing, not about the daemon's work.
QUIET = ("urllib3", "docker", "grpc", "asyncio", "hpack")


def _render(template: str, args: list[Any]) -> str:
    """`template` with its placeholders filled from `args` (consumed from the front)."""

    def fill(match: re.Match[str]) -> str:
        spec = match.group()
        if spec == "%%":
            return "%"
        value = args.pop(0)
        return str(value) if spec.endswith(("r", "s")) else spec % (value,)

    return PLACEHOLDER.sub(fill, template)


def fields_of(record: logging.LogRecord) -> list[tuple[str, str]]:
    """The record as (key, value) pairs."""
    template = str(record.msg)
    raw = record.args
    args = list(raw) if isinstance(raw, tuple) else ([raw] if raw else [])
    if not template.startswith("event="):
        return [("msg", record.getMessage())]
    try:
        pairs: list[tuple[str, str]] = []
        for token in template.split(" "):
            if not token:
                continue
            key, equals, value = token.partition("=")
            if equals and key and "%" not in key:
                pairs.append((key, _render(value, args)))
                continue
            for piece in _render(token, args).split(" "):  # ready-made pairs, or a stray word
                key, equals, value = piece.partition("=")
                pairs.append((key, value) if equals and key else ("msg", piece))
        if args:
            raise ValueError("more arguments than placeholders")
        return pairs
    except (IndexError, TypeError, ValueError):  # a template that does not fit its arguments
        return [("msg", record.getMessage())]


def quoted(value: str) -> str:
    if PLAIN_VALUE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class EventFormatter(logging.Formatter):
    def __init__(self, style: str = "logfmt") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        pairs = [("time", moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"),
                 ("level", record.levelname.lower()), ("logger", record.name), *fields_of(record)]
        if record.exc_info:
            pairs.append(("error_trace", self.formatException(record.exc_info)))
        if self.style == "json":
            return json.dumps(dict(pairs), ensure_ascii=False)
        return " ".join(f"{key}={quoted(value)}" for key, value in pairs)


def configure(level: str = "INFO", style: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
