"""Suspend and resume as yapapi's webapp_suspend_resume example does it (issue 19), across two
processes and over TLS to a provider on a simulated host: the first process serializes and
suspends the web app and its database and stops; the provider keeps them; a second process with
the same identity takes them up and the data written before is there. Another identity cannot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from exeunit.testing.hosts import SimulatedLan
from tests.test_yapapi_examples import RunningScript, free_port, post, until_it_answers


def activities_of(provider) -> list[dict]:
    listed = subprocess.run([sys.executable, "-m", "exeunit", "ps", "--json", "--state-dir", str(provider.home)],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_webapp_suspended_by_one_process_is_resumed_by_another(simulated_lan: SimulatedLan, provider_daemons,
                                                                tmp_path: Path) -> None:
    provider = provider_daemons(simulated_lan.add_host("p1"))
    env = {**os.environ, "GOLEM_PROVIDERS": provider.pinned_address}
    state_file, port = tmp_path / "suspended.json", free_port()
    url = f"http://127.0.0.1:{port}/"

    first = RunningScript("webapp_suspend_resume.py", tmp_path, "--port", str(port), "--state-file", str(state_file),
                          "--log-file", str(tmp_path / "first.log"), env=env, stdin=subprocess.PIPE)
    first.wait_for(r"Local HTTP server listening on")
    until_it_answers(url)
    message = f"written before the suspension {time.time_ns()}"
    assert post(url, urllib.parse.urlencode({"message": message}).encode(), "application/x-www-form-urlencoded") == 200
    assert first.process.stdin is not None
    first.process.stdin.write("\n")
    first.process.stdin.flush()
    first.wait_for(r"suspended; resume with")
    first.finish()
    network, db, web = json.loads(state_file.read_text())
    assert set(network) >= {"_network_id", "ip", "gateway", "owner_id", "owner_ip", "state", "nodes"}
    assert [i["state"] for i in db + web] == ["running", "running"]
    assert set(db[0]) >= {"params", "activity_id", "agreement_id", "state", "network_node"}
    assert web[0]["params"] == {"db_address": db[0]["network_node"]["ip"], "db_port": 4001}
    kept = {a["activity_id"]: a for a in activities_of(provider)}  # nobody is connected: the provider keeps them
    assert set(kept) == {db[0]["activity_id"], web[0]["activity_id"]}
    assert all(a["state"] == "Ready" for a in kept.values()), kept

    # another identity, with the same file, takes nothing up and ends nothing
    stranger = RunningScript("webapp_suspend_resume.py", tmp_path, "--resume", "--port", str(free_port()),
                             "--state-file", str(state_file), "--log-file", str(tmp_path / "stranger.log"),
                             env={**env, "GOLEM_IDENTITY": str(tmp_path / "stranger-key.pem")})
    stranger.wait_for(r"event=resume_failed .*PERMISSION_DENIED", timeout=60)
    stranger.process.send_signal(signal.SIGINT)
    stranger.process.wait(60)
    assert {a["activity_id"] for a in activities_of(provider) if a["state"] == "Ready"} == set(kept)

    second = RunningScript("webapp_suspend_resume.py", tmp_path, "--resume", "--port", str(port),
                           "--state-file", str(state_file), "--log-file", str(tmp_path / "second.log"), env=env)
    second.wait_for(r"Local HTTP server listening on")
    until_it_answers(url)
    page = urllib.request.urlopen(url, timeout=20).read().decode()
    assert f"<li>{message}</li>" in page, page  # the same database instance, with what it held
    again = f"written after the resumption {time.time_ns()}"
    assert post(url, urllib.parse.urlencode({"message": again}).encode(), "application/x-www-form-urlencoded") == 200
    assert f"<li>{again}</li>" in urllib.request.urlopen(url, timeout=20).read().decode()
    second.process.send_signal(signal.SIGINT)
    second.finish()
    resumed = {m.group(1) for line in second.lines if (m := re.search(r"<(\w+) running on .*> resumed$", line))}
    assert resumed == {"HttpService", "DbService"}, "\n".join(second.lines)  # yapapi's line, not "commissioned"
    assert not [line for line in second.lines if line.endswith("> commissioned")], "\n".join(second.lines)
    assert not [a for a in activities_of(provider) if not a["state"].startswith("Terminated")], "the resumed run ended its instances"
