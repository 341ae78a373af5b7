"""`exeunit ps`: what the host's operator sees of a daemon, through its admin socket."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import grpc

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1.conventions import GIB, activity_state_name

COLUMNS = ("ACTIVITY", "REQUESTOR", "STATE", "IMAGE", "AGE", "CPU-S", "MEMORY", "STORAGE", "IP", "DUE", "ACCEPTED",
           "PAID", "OVERDUE")


class Unreachable(Exception):
    """The admin socket exists but no daemon answers on it."""


async def list_activities(socket_path: Path, timeout: float = 10.0) -> list[act.ActivitySummary]:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            response = await act_grpc.ActivityStub(channel).ListActivities(act.ListActivitiesRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unreachable(f"the daemon at {socket_path} did not answer: {exc.details()}") from None
    return list(response.activities)


def _age(row: act.ActivitySummary, now: datetime) -> str:
    seconds = int((now - row.created.ToDatetime(tzinfo=timezone.utc)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _size(count: int) -> str:
    for unit, size in (("G", GIB), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _amount(text: str) -> str:
    """An amount as a column shows it: at most 6 digits after the point ("-" for none)."""
    if not text or text == "0":
        return "-"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction[:6]}" if fraction else whole


def as_table(rows: list[act.ActivitySummary]) -> list[str]:
    now = datetime.now(timezone.utc)
    cells = [COLUMNS] + [
        (row.activity_id[:12], row.requestor_id[:14], activity_state_name(row.state) + (f" ({row.reason})" if row.reason else ""),
         row.image[:40], _age(row, now), f"{row.cpu_seconds:.1f}", _size(row.memory_bytes), _size(row.storage_bytes),
         row.ip or "-", _amount(row.amount_due), _amount(row.amount_accepted), _amount(row.amount_paid),
         _amount(row.amount_overdue))
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]


def as_json(rows: list[act.ActivitySummary]) -> list[str]:
    return [json.dumps({
        "activity_id": row.activity_id, "agreement_id": row.agreement_id, "requestor_id": row.requestor_id,
        "state": activity_state_name(row.state), "reason": row.reason, "image": row.image,
        "created": row.created.ToDatetime(tzinfo=timezone.utc).isoformat(), "cpu_seconds": row.cpu_seconds,
        "memory_bytes": row.memory_bytes, "storage_bytes": row.storage_bytes, "executor": row.executor,
        "network_id": row.network_id, "ip": row.ip, "amount_due": row.amount_due or "0",
        "amount_invoiced": row.amount_invoiced or "0", "amount_accepted": row.amount_accepted or "0",
        "amount_paid": row.amount_paid or "0", "amount_overdue": row.amount_overdue or "0",
    }) for row in rows]
