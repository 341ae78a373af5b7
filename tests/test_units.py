"""Unit tests of pure logic: command sequencing, matching and capacity, path confinement, the event log."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from exeunit import errors
from exeunit.domain.commands import Deploy, Run, Start, Terminate, check_sequence, validate
from exeunit.domain.event_log import EventLog
from exeunit.runtime.docker.frames import STDERR, STDOUT, FrameDecoder
from exeunit.domain.market import Demand, ImageRef, Market, Refusal, RefusalReason
from exeunit.v1.conventions import GIB
from exeunit.domain.resources import LinearPricing, Resources
from exeunit.domain.states import ActivityState
from exeunit.runtime.files import confine
from tests.conftest import settings_for

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
VOLUMES = ("/golem/input", "/golem/output", "/golem/work")


def demand(**fields: object) -> Demand:
    values: dict[str, object] = dict(
        image=ImageRef(tag="img:1"), min_memory_bytes=0, min_storage_bytes=0, min_cpu_threads=0,
        capabilities=(), subnet_tag="public", expiration=NOW + timedelta(minutes=5),
    )
    values.update(fields)
    return Demand(**values)  # type: ignore[arg-type]


class TestCommands:
    def test_a_full_script_is_valid_from_new(self) -> None:
        check_sequence([Deploy(), Start(), Run("/bin/true"), Terminate()], ActivityState.NEW)

    @pytest.mark.parametrize(
        ("commands", "state", "message"),
        [
            ([Run("/bin/true")], ActivityState.NEW, "command 0 (run) needs the activity Ready, but it would be New"),
            ([Deploy(), Deploy()], ActivityState.NEW, "command 1 (deploy) needs the activity New, but it would be Deployed"),
            ([Start()], ActivityState.READY, "command 0 (start) needs the activity Deployed, but it would be Ready"),
            ([Terminate(), Terminate()], ActivityState.READY, "command 1 (terminate) cannot run: the activity is Terminated"),
        ],
    )
    def test_out_of_order_commands_name_the_state(self, commands, state, message) -> None:
        with pytest.raises(errors.FailedPrecondition, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_sequence(commands, state)

    def test_shape_checks(self) -> None:
        with pytest.raises(errors.InvalidArgument, match="at least one command"):
            validate([])
        with pytest.raises(errors.InvalidArgument, match="entry_point is empty"):
            validate([Run("")])
        with pytest.raises(errors.InvalidArgument, match="NUL"):
            validate([Run("/bin/echo", ("a\x00b",))])
        with pytest.raises(errors.InvalidArgument, match="workdir cannot contain NUL"):
            validate([Run("/bin/echo", workdir="/golem\x00")])


class TestMarket:
    def test_matching_demand_reserves_capacity_until_terminated(self) -> None:
        market = Market(settings_for("m", capacity=Resources(2, 2 * GIB, 10 * GIB)))
        agreement = market.propose("r", demand(min_memory_bytes=GIB), image_available=True, now=NOW)
        assert not isinstance(agreement, Refusal)
        assert market.free() == Resources(1, GIB, 8 * GIB)
        with pytest.raises(errors.ResourceExhausted, match="no free capacity"):
            market.propose("r", demand(min_memory_bytes=GIB + 1), image_available=True, now=NOW)
        assert market.mark_terminated(agreement, "Requested", "")
        assert not market.mark_terminated(agreement, "Other", "")
        assert market.free() == Resources(2, 2 * GIB, 10 * GIB)

    def test_an_agreement_gets_the_preset_where_its_demand_asks_less_and_what_it_asks_above(self) -> None:
        preset = Resources(1, 2 * GIB, 4 * GIB)
        market = Market(settings_for("m", capacity=Resources(4, 5 * GIB, 20 * GIB), activity_preset=preset))
        small = market.propose("r", demand(min_memory_bytes=GIB // 2, min_storage_bytes=2 * GIB), True, NOW)
        assert not isinstance(small, Refusal) and small.reserved == preset  # yacat's 0.5 GiB gets 2
        big = market.propose("r", demand(min_memory_bytes=3 * GIB, min_cpu_threads=2), True, NOW)
        assert not isinstance(big, Refusal) and big.reserved == Resources(2, 3 * GIB, 4 * GIB)
        assert market.free() == Resources(1, 0, 12 * GIB)  # both are held against the capacity
        with pytest.raises(errors.ResourceExhausted, match="would take 1 cpu threads, 2.00 GiB memory, .*activity preset"):
            market.propose("r", demand(min_memory_bytes=GIB // 2), True, NOW)  # free 0 < the preset's 2 GiB

    def test_the_preset_flag_and_its_default(self) -> None:
        from exeunit.app.options import activity_preset, build_parser
        from exeunit.domain.settings import DEFAULT_ACTIVITY_PRESET
        assert build_parser().parse_args(["serve"]).activity_preset == DEFAULT_ACTIVITY_PRESET
        assert activity_preset("memory-gib=1.5") == Resources(1, 3 * GIB // 2, 4 * GIB)
        assert activity_preset("cpu=2, storage-gib=8") == Resources(2, 2 * GIB, 8 * GIB)
        assert activity_preset("none") == Resources(0, 0, 0)
        for wrong in ("mem=1", "cpu=0", "memory-gib=x", "cpu"):
            with pytest.raises(Exception):
                activity_preset(wrong)

    @pytest.mark.parametrize(
        ("fields", "present", "reason"),
        [
            ({"subnet_tag": "other"}, True, RefusalReason.SUBNET_MISMATCH),
            ({"min_cpu_threads": 64}, True, RefusalReason.INSUFFICIENT_RESOURCES),
            ({"capabilities": ("inet",)}, True, RefusalReason.MISSING_CAPABILITY),
            ({}, False, RefusalReason.IMAGE_UNAVAILABLE),
        ],
    )
    def test_refusals(self, fields, present, reason) -> None:
        outcome = Market(settings_for("m")).propose("r", demand(**fields), image_available=present, now=NOW)
        assert isinstance(outcome, Refusal) and outcome.reason is reason

    def test_url_images_need_no_local_copy(self) -> None:
        image = ImageRef(hash="sha256:" + "a" * 64, url="http://127.0.0.1/x.tar")
        outcome = Market(settings_for("m")).propose("r", demand(image=image), image_available=False, now=NOW)
        assert not isinstance(outcome, Refusal)

    def test_linear_pricing(self) -> None:
        assert LinearPricing(1.0, 0.5, 0.25).cost(cpu_seconds=4, duration_seconds=8) == 1.0 + 2.0 + 2.0


class TestConfine:
    def test_paths_inside_volumes(self) -> None:
        dest = confine("/golem/work/a/b.txt", VOLUMES)
        assert (dest.volume, dest.relative) == ("/golem/work", "a/b.txt")
        assert confine("/golem/input//x", VOLUMES).relative == "x"

    @pytest.mark.parametrize(
        ("path", "error", "fragment"),
        [
            ("/golem/work/../etc", errors.InvalidArgument, "contains '..'"),
            ("golem/work/x", errors.InvalidArgument, "must be absolute"),
            ("/etc/passwd", errors.FailedPrecondition, "is not under a volume"),
            ("/golem/workshop/x", errors.FailedPrecondition, "is not under a volume"),
            ("/golem/work", errors.InvalidArgument, "volume's root directory"),
        ],
    )
    def test_escapes_are_refused(self, path, error, fragment) -> None:
        with pytest.raises(error, match=fragment):
            confine(path, VOLUMES)

    def test_an_image_without_volumes_says_so(self) -> None:
        with pytest.raises(errors.FailedPrecondition, match="the image declares no VOLUME"):
            confine("/data/x", ())


class TestEventLog:
    @staticmethod
    def make_log(window: int = 100, grace: float = 60.0) -> EventLog[bytes]:
        return EventLog(window, len, grace)

    async def test_replay_from_any_retained_sequence(self) -> None:
        log = self.make_log()
        for i in range(5):
            await log.append(lambda seq, i=i: b"%d" % i)
        await log.close()
        assert [e async for e in log.read(2)] == [b"2", b"3", b"4"]
        assert [e async for e in log.read(0)] == [b"0", b"1", b"2", b"3", b"4"]

    async def test_an_attached_reader_holds_back_the_producer(self) -> None:
        log = self.make_log(window=10)
        reader = log.read(0)
        await log.append(lambda seq: b"x" * 8)
        assert await anext(reader) == b"x" * 8  # attached, cursor now past event 0 only once it asks again
        blocked = asyncio.ensure_future(log.append(lambda seq: b"y" * 8))
        await asyncio.sleep(0)
        assert not blocked.done()
        assert await anext(reader) == b"y" * 8  # reading on lets the producer through
        await blocked
        await log.close()
        assert [e async for e in reader] == []

    async def test_without_readers_old_events_go_after_the_grace_period(self) -> None:
        log = self.make_log(window=10, grace=0)
        for _ in range(3):
            await log.append(lambda seq: b"z" * 8)
        with pytest.raises(errors.OutOfRange, match="events before 2 are no longer retained .*--replay-window-mib"):
            async for _ in log.read(0):
                pass

    async def test_a_terminated_activity_stops_holding_the_producer(self) -> None:
        log = self.make_log(window=10)
        reader = log.read(0)
        await log.append(lambda seq: b"x" * 8)
        assert await anext(reader) == b"x" * 8
        blocked = asyncio.ensure_future(log.append(lambda seq: b"y" * 8))
        await asyncio.sleep(0)
        assert not blocked.done()
        await log.stop_holding()
        await blocked  # went through although the reader never read on
        await reader.aclose()


class TestFrameDecoder:
    @staticmethod
    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    def test_runs_of_one_stream_are_merged_and_streams_kept_apart(self) -> None:
        wire = self.frame(1, b"a") + self.frame(1, b"b") + self.frame(2, b"err") + self.frame(1, b"c")
        runs = [(stream, b"".join(parts)) for stream, parts in FrameDecoder().feed(wire)]
        assert runs == [(STDOUT, b"ab"), (STDERR, b"err"), (STDOUT, b"c")]

    def test_frames_split_anywhere_across_reads(self) -> None:
        wire = self.frame(1, b"hello") + self.frame(2, b"") + self.frame(2, b"world")
        for cut in range(1, len(wire)):
            decoder = FrameDecoder()
            runs = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
            out = b"".join(b"".join(p) for s, p in runs if s == STDOUT)
            err = b"".join(b"".join(p) for s, p in runs if s == STDERR)
            assert (out, err) == (b"hello", b"world"), cut



def test_daemon_log_lines_are_logfmt_with_quoting_or_json() -> None:
    import json as json_module
    import logging
    import shlex

    from exeunit.app.logs import EventFormatter

    def line(style: str, template: str, *args: object) -> str:
        record = logging.LogRecord("exeunit.services.activity", logging.WARNING, __file__, 1, template, args, None)
        record.created = 1800000000.25
        return EventFormatter(style).format(record)

    text = line("logfmt", "event=command_failed %s index=%d message=%r", "agreement=a1 activity=b2", 3,
                'exit code 2 "and" more')
    assert text.startswith("time=2027-01-15T08:00:00.250Z level=warning logger=exeunit.services.activity event=command_failed ")
    pairs = dict(piece.split("=", 1) for piece in shlex.split(text))  # logfmt quoting reads like shell's
    assert pairs["message"] == 'exit code 2 "and" more' and pairs["index"] == "3" and pairs["activity"] == "b2"
    assert line("logfmt", "event=x reason=%s", "") .endswith('reason=""')
    record = json_module.loads(line("json", "event=command_failed index=%d message=%r", 3, "a b"))
    assert record == {"time": "2027-01-15T08:00:00.250Z", "level": "warning", "logger": "exeunit.services.activity",
                      "event": "command_failed", "index": "3", "message": "a b"}
    assert json_module.loads(line("json", "Starting new connection (%d): %s", 1, "x"))["msg"] == "Starting new connection (1): x"
