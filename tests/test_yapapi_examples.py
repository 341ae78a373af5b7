"""yapapi's example services on stand-ins of their own images (images/http-proxy, images/ssh: built
from Debian's packages after yapapi's Dockerfiles, nothing shaped for this provider), driven by
scripts in yapapi's style (tests/yapapi_style/) and checked from outside as their users would:
pages fetched through the local proxy, a real SSH login with the password the script printed."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import paramiko

SCRIPTS = Path(__file__).resolve().parent / "yapapi_style"
STARTING = 180.0  # seconds a script may take to bring its instances up


class RunningScript:
    """A script in its own process; its output lines as they come."""

    def __init__(self, name: str, cwd: Path, *args: str, **popen: object) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", str(SCRIPTS / name), *args], cwd=cwd,  # type: ignore[call-overload]
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = STARTING) -> re.Match[str]:
        """The first line from now on matching `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line matched {pattern!r} in {timeout:g}s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the script ended before a line matched {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def finish(self, timeout: float = 120.0) -> None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the script did not end:\n" + "\n".join(self.lines)) from None
        while (line := self._new.get()) is not None:
            self.lines.append(line)
        assert code == 0, "\n".join(self.lines)
        assert not [line for line in self.lines if "Traceback" in line or " ERROR " in line], "\n".join(self.lines)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_http_proxy_example_serves_the_page_each_instance_wrote_into_its_root(tmp_path: Path, engine) -> None:
    port = free_port()
    script = RunningScript("http_proxy.py", tmp_path, "--port", str(port), "--num-instances", "2",
                           "--running-time", "10", "--log-file", str(tmp_path / "http-proxy.log"))
    script.wait_for(r"Local HTTP server listening on")
    pages = [urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() for _ in range(6)]
    assert set(pages) == {b"Hello from inside Golem!\n... running on local-provider\n"}, pages
    script.wait_for(r"HTTP server stopped", timeout=60)
    script.finish()
    instances = [line for line in script.lines if line.startswith("[") and "running" in line]
    assert any(line.count("running") == 2 for line in instances), "\n".join(script.lines)


def test_ssh_example_takes_a_password_login_through_the_socket_proxy(tmp_path: Path, engine) -> None:
    script = RunningScript("ssh.py", tmp_path, "--num-instances", "2", "--log-file", str(tmp_path / "ssh.log"))
    logins = []
    for _ in range(2):
        where = script.wait_for(r"-p (\d+) root@([\d.]+)")
        password = script.wait_for(r"password: (\w+)").group(1)
        logins.append((where.group(2), int(where.group(1)), password))
    hostnames = set()
    for address, port, password in logins:
        with paramiko.SSHClient() as ssh:
            ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            ssh.connect(address, port=port, username="root", password=password, look_for_keys=False,
                        allow_agent=False, timeout=30)
            _, stdout, _ = ssh.exec_command("echo $((6 * 7)) as $(id -un) on $(hostname)")
            answer = stdout.read().decode().split()
            assert answer[:3] == ["42", "as", "root"], answer
            hostnames.add(answer[-1])
        with paramiko.SSHClient() as wrong:
            wrong.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                wrong.connect(address, port=port, username="root", password=password + "x", look_for_keys=False,
                              allow_agent=False, timeout=30)
            except paramiko.AuthenticationException:
                pass
            else:
                raise AssertionError("a wrong password was let in")
    assert len(hostnames) == 2  # two instances, each its own machine
    script.wait_for(r".*SshService running on .*SshService running on ", timeout=10)  # goth's test_run_ssh
    script.process.send_signal(signal.SIGINT)  # as a user's Ctrl-C
    script.wait_for(r".*SshService terminated on ", timeout=120)  # yapapi's "<...> decommissioned", as goth waits
    script.wait_for(r".*All jobs have finished", timeout=20)
    script.finish()
    commissioned = [line for line in script.lines if re.search(
        r"<SshService starting on \S+ \[ \S+ \] @ 192\.168\.0\.\d+> commissioned$", line)]
    decommissioned = [line for line in script.lines if re.search(
        r"<SshService terminated on \S+ \[ \S+ \] @ 192\.168\.0\.\d+> decommissioned$", line)]
    assert len(commissioned) == 2 and len(decommissioned) == 2, "\n".join(script.lines)


def until_it_answers(url: str, timeout: float = 30.0) -> None:
    """The examples start their web app in the background and announce the proxy at once, as
    yapapi's do: its first requests may find the app still starting (a user would reload)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=10).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=20) as response:  # follows the redirect back to /
        return response.status


def test_webapp_example_keeps_a_posted_message_in_its_database_instance(tmp_path: Path, engine) -> None:
    port = free_port()
    script = RunningScript("webapp.py", tmp_path, "--port", str(port), "--log-file", str(tmp_path / "webapp.log"))
    script.wait_for(r"DB instance started")
    script.wait_for(r"Local HTTP server listening on")
    url = f"http://127.0.0.1:{port}/"
    until_it_answers(url)
    message = f"hello from the test {time.time_ns()}"
    assert post(url, urllib.parse.urlencode({"message": message}).encode(), "application/x-www-form-urlencoded") == 200
    page = urllib.request.urlopen(url, timeout=20).read().decode()
    assert f"<li>{message}</li>" in page, page
    script.process.send_signal(signal.SIGINT)
    script.wait_for(r".*Service terminated.*", timeout=20)  # goth's test_run_webapp, after SIGINT
    script.wait_for(r".*All jobs have finished", timeout=20)
    script.finish()
    ended = {m.group(1) for line in script.lines if (m := re.search(r"<(\w+) terminated on .*> decommissioned$", line))}
    assert ended == {"HttpService", "DbService"}, "\n".join(script.lines)


def test_webapp_fileupload_example_gives_back_an_uploaded_file(tmp_path: Path, engine) -> None:
    port = free_port()
    script = RunningScript("webapp_fileupload.py", tmp_path, "--port", str(port),
                           "--log-file", str(tmp_path / "webapp_fileupload.log"))
    script.wait_for(r"Local HTTP server listening on")
    url = f"http://127.0.0.1:{port}/"
    until_it_answers(url)
    content = bytes(range(256)) * 64 + b"the end\n"
    boundary = "exeunit-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload test.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    assert post(url, body, f"multipart/form-data; boundary={boundary}") == 200
    page = urllib.request.urlopen(url, timeout=20).read().decode()
    assert "upload_test.bin" in page, page  # the name as the app made it safe
    assert urllib.request.urlopen(url + "images/upload_test.bin", timeout=20).read() == content
    script.process.send_signal(signal.SIGINT)
    script.finish()
