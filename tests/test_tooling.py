"""The README's commands leave the checkout as they found it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def test_helpers_asked_for_help_write_nothing() -> None:
    before = tree_state()
    for script in ("scripts/gen_proto.py", "bench/run.py", "images/build.py", "examples/simple_service.py",
                   "examples/http_proxy.py", "examples/webapp.py"):
        done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr)
    assert tree_state() == before


def test_outputs_go_outside_the_checkout_by_default() -> None:
    for script, option in (("bench/run.py", "--output"), ("examples/simple_service.py", "--plots-dir")):
        text = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=60).stdout
        found = re.search(rf"^  {option} [A-Z_]+\s.*?\(default: ([^;)]+)", text, re.S | re.M)
        assert found, text
        default = Path(re.sub(r"\s+", "", found.group(1)))  # help text wraps long paths at hyphens
        assert default.is_absolute() and REPO not in default.parents, (script, default)
