"""Provider daemons on simulated hosts (exeunit.testing.hosts): `exeunit serve` started on a host,
reachable at the host's address, killed and restarted on cue, with its home kept across restarts
(as a crashed daemon's would be)."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from exeunit.testing.hosts import SimulatedHost

LISTENING = re.compile(r'event"?[=:] ?"?listening\b.*\bport"?[=:] ?"?(\d+)')  # logfmt or JSON
PROVIDER_ID = re.compile(r'\bprovider"?[=:] ?"?(0x[0-9a-f]{40})')


class DaemonFailed(RuntimeError):
    """The daemon did not come up; carries what it printed."""


class ProviderDaemon:
    """`exeunit serve` on `host`, with a home in a temporary directory (and its key: the daemon's
    provider id, `provider_id`, and `pinned_address` for a requestor that checks it); with
    `token=True`, a token of its own too (`token`); on `port`, or a free one; `extra_args` go to
    `exeunit serve` as they are."""

    def __init__(self, host: SimulatedHost, *extra_args: str, name: str = "", token: bool = False,
                 port: int = 0) -> None:
        self.host = host
        self.name = name or f"provider-{host.name}"
        self.token = secrets.token_hex(16) if token else None
        self._dir = Path(tempfile.mkdtemp(prefix=f"exeunit-sim-{host.name}-"))
        if self.token is not None:
            (self._dir / "token").write_text(self.token)
        self.home = self._dir / "home"
        self.provider_id = ""
        self.extra_args = extra_args
        self.port = port  # 0: a free one, kept across restarts
        self.log: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.start()

    @property
    def address(self) -> str:
        """host:port, for a requestor."""
        return f"{self.host.address}:{self.port}"

    @property
    def pinned_address(self) -> str:
        """host:port#PROVIDER_ID: a requestor given this checks it talks to this daemon."""
        return f"{self.address}#{self.provider_id}"

    def start(self) -> None:
        """Starts the daemon (on the port it had, after a restart) and waits until it listens."""
        argv = [sys.executable, "-m", "exeunit", "serve", "--listen", f"{self.host.address}:{self.port}",
                "--state-dir", str(self.home), "--name", self.name, *self.extra_args]
        if self.token is not None:
            argv += ["--auth-token-file", str(self._dir / "token")]
        self.process = self.host.spawn(argv, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            if match := LISTENING.search(line):
                self.port = int(match.group(1))
                if found := PROVIDER_ID.search(line):
                    self.provider_id = found.group(1)
                break
        else:
            self.process.wait()
            raise DaemonFailed(f"exeunit serve on {self.host.name} did not start:\n" + "\n".join(self.log[-30:]))
        threading.Thread(target=self._keep_reading, args=(self.process,), daemon=True).start()

    def _keep_reading(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line.rstrip("\n"))

    def kill(self) -> None:
        """SIGKILL, as a crash: containers and the home stay for the next start to take up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: the daemon removes its containers and ends; returns its exit code. A daemon
        that was killed is started once more first, so that it removes what it left; its
        temporary directory (home and token) goes too."""
        try:
            if self.process is not None and self.process.poll() is not None and self.process.returncode < 0:
                self.start()  # killed: take up its containers, to remove them
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return int(self.process.returncode) if self.process is not None else 0
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
