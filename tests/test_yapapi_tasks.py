"""yapapi's task examples (hello-world, scan, market-strategy) and goth's task scenarios
(agreement termination, async task generation, concurrent executors, power outage), as scripts
in yapapi's style (tests/yapapi_style/) on stand-ins of their images, against provider daemons
in processes of their own (`exeunit serve`, each with room for one activity at a time, as a goth
node), with the checks goth makes on their output."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from exeunit.runtime.docker.labels import LABEL_PROVIDER
from tests.daemon_process import Daemon
from tests.test_yapapi_examples import RunningScript
from tests.test_yapapi_style import assert_all_invoices_accepted, expect_in_order

QUIET_WINDOW = 5.0  # seconds the scan is watched for a task it must not start (goth watches 30)


def serve(name: str, subnet: str, state_dir: Path | None = None) -> Daemon:
    """A provider as goth's nodes are: its name, its subnet, one activity at a time."""
    return Daemon("--name", name, "--subnet", subnet, "--max-cpu-threads", "1", state_dir=state_dir)


@contextmanager
def providers(engine: docker.DockerClient, count: int, subnet: str = "goth") -> Iterator[list[Daemon]]:
    """provider-1 ... provider-N; stopped afterwards (a killed one is started again on its home
    first, so that it removes what it left), and no container of theirs left behind."""
    daemons = [serve(f"provider-{n}", subnet) for n in range(1, count + 1)]
    try:
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.process.poll() is not None and daemon.process.returncode < 0:  # killed
                serve(f"{daemon.provider_id}-again", subnet, state_dir=daemon.state_dir).stop()
            daemon.stop()
            shutil.rmtree(daemon.state_dir, ignore_errors=True)
            left = engine.containers.list(all=True, filters={"label": f"{LABEL_PROVIDER}={daemon.provider_id}"})
            assert not left, f"containers left behind by {daemon.provider_id}: {left}"


def environment(daemons: list[Daemon]) -> dict[str, str]:
    return {**os.environ, "GOLEM_PROVIDERS": ",".join(f"127.0.0.1:{d.port}" for d in daemons)}


class TaskScript(RunningScript):
    def ended(self, timeout: float = 120.0) -> None:
        """The script ended with 0, its output read to the end; tracebacks allowed (the reprs of
        events about failures carry theirs, as yapapi's `log_event_repr` prints them)."""
        code = self.process.wait(timeout)
        while (line := self._new.get()) is not None:
            self.lines.append(line)
        assert code == 0, "\n".join(self.lines)

    def quiet_for(self, seconds: float, pattern: str) -> None:
        """No line matches `pattern` for `seconds` (the script still running)."""
        try:
            line = self.wait_for(pattern, timeout=seconds)
        except AssertionError as quiet:
            if "no line matched" in str(quiet):
                return
            raise
        raise AssertionError(f"{line.group(0)!r} within {seconds:g}s:\n" + "\n".join(self.lines))


def no_errors(lines: list[str]) -> None:
    """goth's assert_no_errors."""
    assert not [line for line in lines if "ERROR" in line], "\n".join(lines)


def test_hello_world_computes_its_task_on_the_stand_in_of_its_image(tmp_path: Path, engine) -> None:
    with providers(engine, 1, subnet="public") as daemons:
        script = RunningScript("hello.py", tmp_path, env=environment(daemons))
        script.finish()
    expect_in_order(script.lines, r"Task started on provider 'provider-1', task data: None",
                    r"^\w{3} \w{3} +\d+ \d\d:\d\d:\d\d UTC \d{4}$",  # what `date` printed
                    r"Job finished in ", r"Provider 'provider-1' computed 1 task$", r"Golem engine has shut down")
    expect_in_order(script.lines, r"Task started on provider 'provider-1'", r"Task finished by provider 'provider-1'")
    assert "Task finished by provider" in (tmp_path / "hello.log").read_text()
    no_errors(script.lines)
    assert_all_invoices_accepted(script.lines)


def test_hello_world_image_has_the_volume_and_workdir_of_its_dockerfile(engine) -> None:
    config = engine.images.get("exeunit-hello-world:latest").attrs["Config"]
    assert config["WorkingDir"] == "/golem/work" and set(config["Volumes"]) == {"/golem/input"}


def test_scan_computes_one_task_per_provider_and_waits_for_more(tmp_path: Path, engine) -> None:
    """goth's test_run_scan: two providers, three tasks: each provider scans once, the third
    task waits (no provider left that the strategy accepts) until Ctrl-C."""
    with providers(engine, 2) as daemons:
        script = TaskScript("scan.py", tmp_path, "--subnet-tag", "goth", "--scan-size", "3",
                            "--log-file", str(tmp_path / "scan.log"), env=environment(daemons))
        finished = [script.wait_for(r"Task finished by provider 'provider-(\d)', task data: (\d)", timeout=120)
                    for _ in range(2)]
        assert {m.group(1) for m in finished} == {"1", "2"} and {m.group(2) for m in finished} == {"0", "1"}
        script.quiet_for(QUIET_WINDOW, r"Task (started|finished)|Job (failed|finished)")  # no third task anywhere
        script.process.send_signal(signal.SIGINT)
        script.wait_for(r"All jobs have finished", timeout=20)
        script.finish()
    no_errors(script.lines)
    assert_all_invoices_accepted(script.lines)


def test_market_strategy_tries_each_new_provider_then_the_fastest(tmp_path: Path, engine) -> None:
    with providers(engine, 2, subnet="public") as daemons:
        ids = {d.provider_id: f"provider-{n}" for n, d in enumerate(daemons, 1)}
        script = RunningScript("market_strategy.py", tmp_path, "--log-file", str(tmp_path / "market.log"),
                               env=environment(daemons))
        runs = [script.wait_for(r"^TASK EXECUTED (\S+) (\S+) ([\d.]+)$", timeout=120) for _ in range(3)]
        script.process.send_signal(signal.SIGINT)
        script.finish()
    (first, _, first_time), (second, _, second_time), (third, third_id, _) = (m.groups() for m in runs)
    assert {first, second} == set(ids.values()), "\n".join(script.lines)  # every new provider tried
    found = {m.group(1) for line in script.lines if (m := re.search(r"Found new provider: (\S+), default score 100", line))}
    assert found == set(ids)
    expect_in_order(script.lines, "TASK EXECUTED", "TASK EXECUTED", r"Scored known provider: 0x[0-9a-f]+: [\d.]+ \(1 runs")
    if float(first_time) != float(second_time):  # then the fastest so far is taken
        assert third == (first if float(first_time) < float(second_time) else second), "\n".join(script.lines)
    assert ids[third_id] == third
    no_errors(script.lines)


def test_agreement_termination(tmp_path: Path, engine) -> None:
    """goth's test_agreement_termination: a worker failing with CommandExecutionError ends its
    agreement ("Cancelled"), no task starts on it after that, all six tasks are computed."""
    with providers(engine, 2) as daemons:
        script = TaskScript("agreement_termination.py", tmp_path, env=environment(daemons))
        failed = script.wait_for(r"^WorkerFinished\(.*CommandExecutionError.*Agreement\(id=([0-9a-f]+)", timeout=120)
        agreement = failed.group(1)
        ended = script.wait_for(rf"^(TaskStarted\(.*Agreement\(id={agreement}|AgreementTerminated\(.*Agreement\("
                                rf"id={agreement}.*'golem.requestor.code': 'Cancelled')", timeout=20)
        assert ended.group(0).startswith("AgreementTerminated"), f"a task started on agreement {agreement}"
        script.wait_for(r"^ShutdownFinished", timeout=120)
        script.ended()
    accepted = {m.group(1) for line in script.lines if (m := re.match(r"TaskAccepted\(.*task=Task\(id=([0-9]+)", line))}
    assert accepted == {"1", "2", "3", "4", "5", "6"}, "\n".join(script.lines)
    after_failure = script.lines[script.lines.index(failed.string):]
    assert not [line for line in after_failure if re.match(rf"TaskStarted\(.*Agreement\(id={agreement}", line)]
    assert "All tasks computed" in script.lines


def test_async_task_generation(tmp_path: Path, engine) -> None:
    """goth's test_async_task_generation, on a single provider: results feed the input."""
    with providers(engine, 1) as daemons:
        script = RunningScript("async_task_generation.py", tmp_path, env=environment(daemons))
        script.wait_for(r"task result: 3", timeout=60)
        for _ in range(3):
            script.wait_for(r"task result: 2", timeout=10)
        for _ in range(6):
            script.wait_for(r"task result: 1", timeout=10)
        script.wait_for(r"all done!", timeout=10)
        script.finish()
    assert sum(line.startswith("task result:") for line in script.lines) == 10


def test_concurrent_executors(tmp_path: Path, engine) -> None:
    """goth's test_concurrent_executors: two jobs in a pipeline, each summary told apart by
    its job id; ALEF's first activity fails once."""
    with providers(engine, 2) as daemons:
        script = RunningScript("concurrent_executors.py", tmp_path, env=environment(daemons))
        script.wait_for(r".*ALEF.* Job finished", timeout=60)
        script.wait_for(r".*ALEF.* Negotiated 2 agreements", timeout=5)
        script.wait_for(r".*ALEF.* Provider .* computed 8 tasks", timeout=5)
        script.wait_for(r".*ALEF.* Activity failed 1 time", timeout=5)
        script.wait_for(r".*BET.* Job finished", timeout=60)
        script.wait_for(r".*BET.* Negotiated 1 agreement", timeout=5)
        script.wait_for(r".*BET.* Provider .* computed 8 tasks", timeout=5)
        script.wait_for(r".*All jobs have finished", timeout=20)
        script.finish()
    bet = sorted(m.group(1) for line in script.lines if (m := re.match(r"BET computed task: \d \d -> (.*)$", line)))
    assert bet == [f"{n} {n} {n} {n}" for n in "01234567"]


@pytest.fixture(scope="module")
def power_outage(tmp_path_factory: pytest.TempPathFactory, engine) -> tuple[RunningScript, Path]:
    """goth's test_power_outage, run once for the checks below: provider-1 is killed (SIGKILL,
    its containers left running) as soon as its first task starts."""
    tmp_path = tmp_path_factory.mktemp("power-outage")
    with providers(engine, 2) as daemons:
        script = RunningScript("power_outage.py", tmp_path, "--subnet-tag", "goth", "--min-cpu-threads", "1",
                               "--log-file", str(tmp_path / "power_outage.log"), env=environment(daemons))
        script.wait_for(r".*Received proposals from 2 ", timeout=20)
        script.wait_for(r".*Agreement proposed ", timeout=10)
        script.wait_for(r".*Agreement confirmed ", timeout=10)
        script.wait_for(r".*Task started on provider 'provider-1'.*", timeout=60)
        daemons[0].process.kill()
        daemons[0].process.wait()
        script.wait_for(r".*Terminated agreement with provider-1", timeout=60)
        script.wait_for(r".*Golem engine has shut down", timeout=180)
        script.finish()
    return script, tmp_path


def test_power_outage(power_outage: tuple[RunningScript, Path]) -> None:
    script, cwd = power_outage
    lines = script.lines
    frames = {"0", "10", "20", "30", "40", "50"}
    started = {m.group(1) for line in lines if (m := re.search(r"Task started on provider .* task data: (.+)$", line))}
    finished = {m.group(1) for line in lines if (m := re.search(r"Task finished by provider .* task data: (.+)$", line))}
    assert started == frames and finished == frames, "\n".join(lines)
    by_survivor = [line for line in lines if re.search(r"Task finished by provider 'provider-2'", line)]
    assert len(by_survivor) >= 5, "\n".join(lines)  # at most the one frame provider-1 may have finished
    assert "6 tasks computed" in "\n".join(lines)
    outputs = {path.name: path.read_text() for path in cwd.glob("output_*.png")}
    assert set(outputs) == {f"output_{frame}.png" for frame in frames}
    assert all(text.endswith("three cubes\n") for text in outputs.values()), outputs


def test_power_outage_leaves_the_lost_providers_agreement_unpaid(power_outage: tuple[RunningScript, Path]) -> None:
    lines = power_outage[0].lines
    expect_in_order(lines, r".*Unpaid agreements: ")
    assert not any("Accepted invoice from 'provider-1'" in line for line in lines)
