"""The examples a user runs, run as a user runs them (embedded provider, real containers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args],
                          capture_output=True, text=True, timeout=240, cwd=REPO)


def test_tutorial_service_gathers_observations_and_downloads_plots(tmp_path: Path, engine) -> None:
    done = run_example("simple_service.py", "--duration", "7", "--interval", "2", "--plots-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "observations; mean" in done.stdout
    plots = list(tmp_path.glob("plot_*.png"))
    assert plots and all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in plots)
    assert "running -> stopping" in done.stderr and "stopping -> terminated" in done.stderr


def test_hello_world_runs_two_instances(engine) -> None:
    done = run_example("hello_world.py", "--duration", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("local-provider [")]
    assert len({line.split("]")[0] for line in lines}) == 2  # both instances reported a date
    assert "all instances terminated" in done.stdout
