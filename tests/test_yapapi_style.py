"""Scripts in yapapi's style (tests/yapapi_style/, written for this library after yapapi's
examples and integration scenarios: only the import renamed and local images named), run as
their authors run them, with the output checks yapapi's own integration tests make."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "yapapi_style"


def run_script(name: str, cwd: Path, *args: str) -> list[str]:
    """Runs the script to its end; its stdout and stderr lines, interleaved as printed."""
    done = subprocess.run([sys.executable, "-u", str(SCRIPTS / name), *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    return lines


def expect_in_order(lines: list[str], *patterns: str) -> None:
    """Each pattern matches a line after the line the previous one matched (goth's wait_for_pattern)."""
    position = 0
    for pattern in patterns:
        for index in range(position, len(lines)):
            if re.search(pattern, lines[index]):
                position = index + 1
                break
        else:
            raise AssertionError(f"no line matches {pattern!r} after line {position}:\n" + "\n".join(lines))


def assert_no_errors(lines: list[str]) -> None:
    assert not [line for line in lines if "ERROR" in line], "\n".join(lines)


def assert_all_invoices_accepted(lines: list[str]) -> None:
    confirmed = [m.group(1) for line in lines if (m := re.search("Agreement confirmed by provider '([^']*)'", line))]
    accepted = [m.group(1) for line in lines if (m := re.search("Accepted invoice from '([^']*)'", line))]
    assert confirmed and sorted(confirmed) == sorted(accepted), "\n".join(lines)


def test_hello_world(tmp_path: Path, engine) -> None:
    lines = run_script("hello_service.py", tmp_path)
    assert any(re.search(r"Instance 0 is running on local-provider", line) for line in lines), "\n".join(lines)
    assert any(re.search(r"\d\d:\d\d:\d\d", line) and "UTC" in line for line in lines)  # a date read back
    assert (tmp_path / "hello.log").stat().st_size > 0
    assert_no_errors(lines)


def test_simple_service(tmp_path: Path, engine) -> None:
    lines = run_script("simple_service.py", tmp_path, "--running-time", "4", "--show-usage",
                       "--log-file", str(tmp_path / "simple.log"))
    expect_in_order(lines, r"<SimpleService starting on \S+ \[ \S+ \]> commissioned$",
                    r"<SimpleService terminated on \S+ \[ \S+ \]> decommissioned$", ".*All jobs have finished")
    expect_in_order(lines, r"Starting Cluster 1: 1x\[Service: SimpleService", "All instances started",
                    "instances:.*running", "instances:.*running", r"Stopping Cluster 1: 1x\[Service: SimpleService",
                    ".*All jobs have finished")
    assert any("golem.usage.duration_sec" in line for line in lines) and any(" COST: " in line for line in lines)
    plots = [m.group(1) for line in lines if (m := re.search(r"downloading plot: /golem/out/\S+ to (\S+\.png)", line))]
    assert plots and all((tmp_path / plot).read_bytes().startswith(b"\x89PNG") for plot in plots), "\n".join(lines)
    assert_no_errors(lines)
    assert_all_invoices_accepted(lines)


def test_instance_restart(tmp_path: Path, engine) -> None:
    lines = run_script("instance_restart.py", tmp_path)
    expect_in_order(lines, "STARTING 1$", ".*CommandExecutionError", "STARTING 2$", "RUNNING 2$",
                    ".*CommandExecutionError", "STOPPING 2$", "STARTING 3$", "Cluster stopped$")
    name = "FirstInstanceFailsToStart"  # yapapi's runner lines, with the instance's repr
    expect_in_order(lines, rf"<{name} starting on \S+ \[ \S+ \]> commissioned$", "STARTING 1$",
                    rf"<{name} terminated on \S+ \[ \S+ \]> decommissioned$",
                    rf"Restarting service <{name} terminated on \S+ \[ \S+ \]>$",
                    rf"<{name} starting on .*> commissioned$", "STARTING 2$", "STOPPING 2$",
                    rf"<{name} terminated on .*> decommissioned$", "STARTING 3$",
                    rf"<{name} terminated on .*> decommissioned$", "Cluster stopped$")
    assert not any(re.search("STARTING 4", line) for line in lines)
    assert_all_invoices_accepted(lines)


def test_custom_usage_counter(tmp_path: Path, engine) -> None:
    lines = run_script("custom_usage_counter.py", tmp_path, "--running-time", "3",
                       "--log-file", str(tmp_path / "counters.log"))
    readings = [line for line in lines if line.startswith("total cost so far: ")]
    assert readings, "\n".join(lines)
    counted = [float(re.search(r"'golem.usage.custom.counter': ([0-9.]+)", line).group(1)) for line in readings]
    assert counted == sorted(counted) and counted[0] == 1.0  # one `sleep 1000` (milliseconds) per reading
    assert "golem.usage.duration_sec" in readings[0]
    expect_in_order(lines, "running on 'local-provider'", "total cost so far", "stopped on 'local-provider'",
                    "All services were successfully terminated", ".*All jobs have finished")
    running = {m.groups() for line in lines if (m := re.search("service ([0-9a-f-]+) running on '([^']*)'", line))}
    stopped = {m.groups() for line in lines if (m := re.search("service ([0-9a-f-]+) stopped on '([^']*)'", line))}
    assert running and running == stopped  # yapapi's assert_correct_startup_and_shutdown (its regex stops at the dashes of an id)
    assert_no_errors(lines)
    assert_all_invoices_accepted(lines)
