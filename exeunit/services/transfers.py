"""Moving bytes in and out of activities: file uploads and downloads into their volumes, and
TCP tunnels to their ports. Each is bounded (transfers per activity and per requestor, tunnels per
activity), cut when its activity ends, and cut when its client stands still too long."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from exeunit import errors
from exeunit.domain.settings import ActivityLimits
from exeunit.domain.states import ActivityState
from exeunit.runtime.files import Download, Pace, Upload, confine, download, existing_size
from exeunit.runtime.memory import release_memory
from exeunit.v1.conventions import DIGEST_SHA256
from exeunit.runtime.protocols import Runtime
from exeunit.runtime.storage import LoopStorage, VolumeDirs
from exeunit.runtime.threads import in_data_thread
from exeunit.services.activity import Activity
from exeunit.services.fairness import ConcurrencyQuota, IdleWatchdog, idle_timeout
from exeunit.services.pacing import Pacer

log = logging.getLogger(__name__)

# What a tunnel reads from the activity's port at a time, at most. It sets what a tunnel holds when
# its requestor does not read (measured: 2 MiB with 256 KiB, 1.2 with 128, 0.6 with 64) and its
# throughput (333, 273 and 218 MiB/s each way in bench/run.py's tunnel case): --tunnels-per-requestor
# bounds the memory instead.
TUNNEL_READ_BYTES = 256 << 10


@dataclass
class PortConnection:
    """A tunnel's connection to a port in an activity; its bytes go at the pace of the daemon."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pace: Pace
    cut_off: asyncio.Event = field(default_factory=asyncio.Event)  # set when the activity ended under it

    async def receive(self) -> bytes:
        """The next bytes from the port (b"" once it closed)."""
        data = await self.reader.read(TUNNEL_READ_BYTES)
        await self.pace(len(data))
        return data

    async def send(self, data: bytes) -> None:
        """Into the port, waiting while it does not read (flow control)."""
        await self.pace(len(data))
        self.writer.write(data)
        await self.writer.drain()

    @property
    def was_cut(self) -> bool:
        return self.cut_off.is_set()

    def cut(self) -> None:
        self.cut_off.set()
        self.writer.transport.abort()


class Transfers:
    """Uploads, downloads and tunnels of one provider's activities (found with `find`, which
    checks that the requestor owns the activity)."""

    def __init__(self, runtime: Runtime, storage: LoopStorage, limits: ActivityLimits,
                 find: Callable[[str, str], Activity], pacer: Pacer) -> None:
        self._runtime = runtime
        self._pacer = pacer
        self._storage = storage
        self._limits = limits
        self._find = find
        self._transfers_by_activity = ConcurrencyQuota(limits.transfers_per_activity, "transfers",
                                                       "--transfers-per-activity")
        self._transfers_by_requestor = ConcurrencyQuota(limits.transfers_per_requestor, "transfers",
                                                        "--transfers-per-requestor")
        self._tunnels_by_activity = ConcurrencyQuota(limits.tunnels_per_activity, "tunnels", "--tunnels-per-activity")
        self._tunnels_by_requestor = ConcurrencyQuota(limits.tunnels_per_requestor, "tunnels",
                                                      "--tunnels-per-requestor")

    # Tunnels

    @asynccontextmanager
    async def tunnel(self, requestor_id: str, activity_id: str, port: int) -> AsyncIterator[PortConnection]:
        """A TCP connection to `port` in the activity; cut (and marked so) when the activity ends."""
        if not 1 <= port <= 65535:
            raise errors.InvalidArgument(f"port {port} is not in 1-65535")
        activity = self._find(requestor_id, activity_id)
        if activity.state is not ActivityState.READY or not activity.container_id:
            raise errors.FailedPrecondition(
                f"a tunnel needs the activity Ready, but it is {activity.state.value}; deploy and start it first"
            )
        with (
            self._tunnels_by_activity.hold(activity_id, f"activity {activity_id}"),
            self._tunnels_by_requestor.hold(requestor_id, f"requestor {requestor_id!r}"),
        ):
            sock = await self._runtime.connect_to_port(activity.container_id, port)
            reader, writer = await asyncio.open_connection(sock=sock, limit=TUNNEL_READ_BYTES)
            connection = PortConnection(reader, writer, self._pacer.pace_for(requestor_id))
            log.info("event=tunnel_opened %s port=%d", activity.log_ids, port)
            try:
                with activity.transfer(connection.cut):  # the activity's end cuts it
                    yield connection
            finally:
                writer.transport.abort()

    # Transfers

    def _ready_volumes(self, activity: Activity, what: str) -> VolumeDirs:
        if activity.state is not ActivityState.READY or activity.volumes is None:
            raise errors.FailedPrecondition(
                f"{what} needs the activity Ready, but it is {activity.state.value}; deploy and start it first"
            )
        return activity.volumes

    @contextmanager
    def _transfer_slot(self, requestor_id: str, activity: Activity) -> Iterator[None]:
        """Counts a transfer against its activity's and its requestor's quotas. At its end the memory
        freed since is handed back (its buffers, kept free by glibc for the next chunk: exeunit.v1.buffers)."""
        try:
            with (
                self._transfers_by_activity.hold(activity.activity_id, f"activity {activity.activity_id}"),
                self._transfers_by_requestor.hold(requestor_id, f"requestor {requestor_id!r}"),
            ):
                yield
        finally:
            release_memory()  # at most once a second

    @asynccontextmanager
    async def upload(self, requestor_id: str, activity_id: str, path: str, size: int, mode: int,
                     algorithm: str = DIGEST_SHA256) -> AsyncIterator[Upload]:
        """An upload into the activity's container, cut short if the activity ends meanwhile or the
        client stops sending for the transfer idle time."""
        activity = self._find(requestor_id, activity_id)
        volumes = self._ready_volumes(activity, "upload")
        dest = confine(path, tuple(volumes.dirs))
        limit = activity.agreement.reserved.storage_bytes
        if size > limit:
            raise errors.ResourceExhausted(
                f"file of {size} bytes exceeds the agreement's storage of {limit} bytes; demand more storage"
            )
        if volumes.enforced:
            free = await asyncio.to_thread(volumes.free_bytes)
            if size > free:  # an upload replaces the file at its path: that space comes back
                free += await in_data_thread(existing_size, volumes.host_dir(dest.volume), dest)
            if size > free:
                raise errors.ResourceExhausted(
                    f"file of {size} bytes does not fit: the activity's storage has {free} bytes free"
                )
        idle = self._limits.transfer_idle_seconds
        with self._transfer_slot(requestor_id, activity):
            async with idle_timeout(idle, f"the upload to {dest.path}") as progress:
                upload = Upload(volumes.host_dir(dest.volume), dest, size, mode, self._storage.owner, algorithm)
                upload.on_progress = progress
                upload.pace = self._pacer.pace_for(requestor_id)
                await upload.begin()
                log.info("event=upload_started %s path=%s size=%d", activity.log_ids, dest.path, size)
                with activity.transfer(upload.cancel):
                    yield upload

    @asynccontextmanager
    async def download(self, requestor_id: str, activity_id: str, path: str,
                       algorithm: str = DIGEST_SHA256) -> AsyncIterator[Download]:
        """A download out of the activity's container, cut short if the activity ends meanwhile or
        the client stops reading for the transfer idle time."""
        activity = self._find(requestor_id, activity_id)
        volumes = self._ready_volumes(activity, "download")
        dest = confine(path, tuple(volumes.dirs))
        idle = self._limits.transfer_idle_seconds
        with self._transfer_slot(requestor_id, activity):
            log.info("event=download_started %s path=%s", activity.log_ids, dest.path)
            opened = await download(volumes.host_dir(dest.volume), dest, algorithm)
            # The handler waits in gRPC's write while a client does not read, where cancelling it
            # would leave the call hanging: the watchdog marks the download cut instead, the client
            # gets the reason when it reads on, and until it leaves it holds one descriptor and a
            # slot of its own requestor's quota.
            watchdog = IdleWatchdog(idle, lambda: opened.cut(
                errors.TimedOut(f"the download of {dest.path} stood still for {idle:g}s and was cut (--transfer-idle-seconds)")))
            opened.on_progress = watchdog.progress
            opened.pace = self._pacer.pace_for(requestor_id)
            ended = errors.FailedPrecondition(f"the download of {dest.path} was cut: the activity ended")
            try:
                with activity.transfer(lambda: opened.cut(ended)):
                    yield opened
            finally:
                watchdog.close()
                opened.close()
