"""The examples a user runs, run as a user runs them (embedded provider, real containers)."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

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
    assert all(b"Matplotlib" in p.read_bytes()[:200] for p in plots)  # drawn by matplotlib: axes, labels, title
    assert "running -> stopping" in done.stderr and "stopping -> terminated" in done.stderr


def test_hello_world_runs_two_instances(engine) -> None:
    done = run_example("hello_world.py", "--duration", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("local-provider [")]
    assert len({line.split("]")[0] for line in lines}) == 2  # both instances reported a date
    assert "all instances terminated" in done.stdout


class RunningExample:
    """An example started as a user starts it, read line by line until it says where it listens."""

    def __init__(self, name: str, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", str(REPO / "examples" / name), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.output: list[str] = []

    def wait_for_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("http://localhost:"):
                return line.strip()
        self.process.kill()
        raise AssertionError("the example never said where it listens:\n" + "".join(self.output)
                             + (self.process.stderr.read() if self.process.stderr else ""))

    def interrupt(self) -> tuple[str, str]:
        """Ctrl-C, as a user stops it; returns the rest of its stdout and its stderr."""
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, "".join(self.output) + out + err
        return "".join(self.output) + out, err


def test_http_proxy_example_serves_each_instance_through_one_local_port(engine) -> None:
    example = RunningExample("http_proxy.py", "--port", "0", "--num-instances", "2")
    url = example.wait_for_url()
    pages = set()
    for _ in range(4):
        with urllib.request.urlopen(url, timeout=10) as response:
            pages.add(response.read().decode())
    assert len(pages) == 2, pages  # round robin over both instances
    assert all(page.startswith("Hello from inside Golem!") and "at 192.168.0." in page for page in pages)
    out, err = example.interrupt()
    assert "HTTP server stopped" in out and "network removed" in out
    assert sum(int(line.split(" served ")[1].split()[0]) for line in out.splitlines() if " served " in line) == 4


def test_webapp_example_keeps_messages_in_its_database_instance(engine) -> None:
    example = RunningExample("webapp.py", "--port", "0")
    url = example.wait_for_url()
    for message in ("first", "second <b>"):
        data = urllib.parse.urlencode({"message": message}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/", data), timeout=10) as response:
            assert response.status == 200  # after the redirect to /
    with urllib.request.urlopen(url + "/", timeout=10) as response:
        page = response.read().decode()
    assert "<li>second &lt;b&gt;</li><li>first</li>" in page  # newest first
    # One keep-alive connection through the proxy: a page, then a chunked response, then a page.
    connection = http.client.HTTPConnection(urllib.parse.urlparse(url).netloc, timeout=10)
    connection.request("GET", "/")
    assert connection.getresponse().read().count(b"<li>") == 2
    first_socket = connection.sock
    connection.request("GET", "/messages")
    streamed = connection.getresponse()
    assert streamed.getheader("Transfer-Encoding") == "chunked"
    assert streamed.read().decode().splitlines() == ["1: first", "2: second <b>"]
    connection.request("GET", "/")
    assert connection.getresponse().status == 200
    assert connection.sock is first_socket, "the proxy kept the connection alive"
    connection.close()
    out, err = example.interrupt()
    assert "DB instance started at 192.168.0.2" in out and "network removed" in out


def test_without_a_docker_engine_the_script_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "examples" / "hello_world.py"), "--duration", "1"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "Start dockerd" in done.stderr and "GOLEM_PROVIDERS" in done.stderr


def test_a_script_whose_only_provider_is_unreachable_fails() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        done = subprocess.run([sys.executable, str(REPO / "examples" / "hello_world.py"), "--duration", "1"],
                              capture_output=True, text=True, timeout=60, cwd=REPO,
                              env={**os.environ, "GOLEM_PROVIDERS": f"127.0.0.1:{port}"})
    assert done.returncode == 1
    assert "2 of 2 instances failed: no provider can run" in done.stderr and "unreachable" in done.stderr
    assert done.stderr.count("no provider can run") == 3  # once per instance in the summary, once at the end
    assert "all instances terminated" not in done.stdout


@pytest.mark.parametrize("ctrl_c", ["default", "ignored"])
def test_sigterm_to_an_embedded_provider_script_removes_its_containers(engine, ctrl_c: str) -> None:
    """Also when the script was started with SIGINT ignored, as a non-interactive shell starts its
    background jobs (a clean-clone run started that way once timed out here, the instances printing
    on): then no Ctrl-C handler of asyncio.run's is there to turn SIGTERM into, and the embedded
    provider cancels the script's task itself."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ctrl_c == "ignored" else None
    waited, duration = 90, "120"
    process = subprocess.Popen([sys.executable, "-u", str(REPO / "examples" / "hello_world.py"), "--duration", duration],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               preexec_fn=ignore)
    assert process.stdout is not None
    provider_id, seen = "", []
    for line in process.stdout:
        seen.append(line)
        found = re.search(r"Agreement proposed to provider 'local-provider' \((0x[0-9a-f]{40})\)", line)
        provider_id = provider_id or (found.group(1) if found else "")
        if line.startswith("local-provider ["):  # an instance reported: its container runs
            break
    assert provider_id, "".join(seen)
    label = {"label": f"io.exeunit.provider={provider_id}"}
    assert engine.containers.list(filters=label)
    process.send_signal(signal.SIGTERM)
    try:  # leaving Golem is bounded by its shutdown_timeout (60 s); past that and some slack, it hangs
        rest, _ = process.communicate(timeout=waited)
    except subprocess.TimeoutExpired:
        try:
            rest, _ = process.communicate(timeout=120)  # its duration ends it, and it cleans up
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
        raise AssertionError(f"the script did not end {waited} s after SIGTERM:\n" + "".join(seen) + rest[-6000:]) from None
    assert process.returncode == 0 and "interrupted" in rest, "".join(seen) + rest
    assert engine.containers.list(all=True, filters=label) == []
