"""`exeunit serve` run as a user runs it: in its own process, with its log captured."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from exeunit.testing.providers import LISTENING

EXEUNIT = [sys.executable, "-m", "exeunit"]


class Daemon:
    """`exeunit serve` in a subprocess; learns its port from the `event=listening` log line. Its
    home is a new temporary directory (removed by `stop`) unless `state_dir` names one."""

    def __init__(self, *args: str, state_dir: Path | None = None) -> None:
        self.own_home = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="exeunit-test-home-"))
        self.process = subprocess.Popen(
            [*EXEUNIT, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(self.state_dir), *args],
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.port = 0
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if match := LISTENING.search(line):  # logfmt or JSON
                self.port = int(match.group(1))
                break
        assert self.port, "".join(self.lines)
        self.provider_id = json.loads((self.state_dir / "identity.json").read_text())["provider_id"]
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; kills it if it does not exit within a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.own_home:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.process.returncode
