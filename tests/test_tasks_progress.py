"""The progress line of a task job (requestor/executor/progress.py): the renderer on a fake
terminal, and one job run with stderr a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from requestor import Task
from requestor.executor import progress
from requestor.executor.progress import CLEAR_LINE, Progress
from tests.conftest import Daemons
from tests.test_tasks import Recorder, echo_worker, golem_for, payload, start_providers


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_known_total_shows_done_of_total_the_rate_and_the_eta_then_is_cleared() -> None:
    stream, clock = FakeTerminal(), Clock()
    line = Progress(stream, "[Job 1]", total=40, clock=clock)
    clock.now += 8.0
    line.show(12)
    assert stream.getvalue() == f"{CLEAR_LINE}[Job 1] 12/40 tasks done, 1.50/s, ETA 0:19\r"
    line.show(12)
    assert stream.getvalue().count("tasks done") == 1, "the same line is not drawn again"
    clock.now += 4000.0
    line.show(39)
    assert stream.getvalue().endswith(f"{CLEAR_LINE}[Job 1] 39/40 tasks done, 0.01/s, ETA 1:43\r")
    assert progress._clock_time(3725.4) == "1:02:05"
    line.show(40)
    assert stream.getvalue().endswith("[Job 1] 40/40 tasks done, 0.01/s\r"), "no ETA once all is done"
    line.clear()
    assert stream.getvalue().endswith(CLEAR_LINE)
    line.clear()
    assert stream.getvalue().count(CLEAR_LINE) == 4, "three lines drawn, cleared once"


def test_an_unknown_total_counts_what_is_done_without_an_eta() -> None:
    clock = Clock()
    line = Progress(FakeTerminal(), "[Job 2]", total=None, clock=clock)
    assert line.text(0) == "[Job 2] 0 tasks done, 0.00/s"
    clock.now += 2.0
    assert line.text(5) == "[Job 2] 5 tasks done, 2.50/s"


def test_the_line_is_wanted_on_a_terminal_only_and_not_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert progress.wanted(FakeTerminal()) and not progress.wanted(io.StringIO())
    for off in ("0", "false", "off"):
        monkeypatch.setenv(progress.PROGRESS_ENV, off)
        assert not progress.wanted(FakeTerminal())
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.wanted(FakeTerminal())


async def test_a_job_on_a_terminal_draws_its_progress_and_clears_it(daemons: Daemons,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    addresses = await start_providers(daemons, 1)
    async with golem_for(addresses, Recorder()) as golem:
        data = [Task(data=f"word{n}") for n in range(3)]
        done = [t async for t in golem.execute_tasks(echo_worker, data, payload=await payload())]
    assert len(done) == 3
    drawn = [part for part in terminal.getvalue().split(CLEAR_LINE) if part]
    assert drawn[0].startswith("[Job ") and " 0/3 tasks done, " in drawn[0], drawn
    assert " 3/3 tasks done, " in drawn[-1], drawn
    assert terminal.getvalue().endswith(CLEAR_LINE), "cleared at the job's end"
