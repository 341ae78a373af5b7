"""Secrets at rest (issue 25): the provider's home and the requestor's config directory are 0700,
and what they hold 0600, whoever made them; keys are made without following a link planted where
they go (exeunit.v1.private_files)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from exeunit.app.cli import main as exeunit_main
from exeunit.v1.identity import load_or_create_key, node_id_of
from requestor.client.connect import KnownProviders, ProviderIdentityError
from requestor.client.identity import RequestorIdentity
from requestor.errors import RequestorError
from tests.daemon_process import Daemon

HOME_FILES = ("lock", "identity.json", "provider-key.pem", "provider-cert.pem",
              "state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm")
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_home_made_by_someone_else_is_made_private_with_all_it_holds(engine, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)  # made by hand, or by a daemon before issue 25
    daemon = Daemon("--tls-on-loopback", state_dir=home)  # TLS: the certificate is in the home too
    try:
        assert mode(home) == 0o700
        assert {name: mode(home / name) for name in HOME_FILES} == dict.fromkeys(HOME_FILES, 0o600)
        assert any("event=home_made_private" in line and "mode_was=755" in line for line in daemon.lines)
    finally:
        assert daemon.stop() == 0, "".join(daemon.lines[-30:])
    home.chmod(0o755)
    for name in HOME_FILES:
        if (home / name).exists():  # the log files go with a clean stop
            (home / name).chmod(0o644)
    again = Daemon("--tls-on-loopback", state_dir=home)
    try:
        assert again.provider_id == daemon.provider_id
        assert mode(home) == 0o700
        assert {name: mode(home / name) for name in HOME_FILES} == dict.fromkeys(HOME_FILES, 0o600)
        assert any("event=home_file_made_private" in line and "provider-key.pem" in line for line in again.lines)
    finally:
        assert again.stop() == 0, "".join(again.lines[-30:])


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """`exeunit ARGV` run by an unprivileged user (a forked child that drops root): exit code, stderr."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        code = 99
        with os.fdopen(write, "w") as err, contextlib.redirect_stderr(err):
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                code = exeunit_main(argv)
            except BaseException as exc:  # noqa: BLE001 - the child must not return into pytest
                print(repr(exc), file=err)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as out:
        printed = out.read()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), printed


def test_a_home_that_cannot_be_made_private_is_refused_naming_the_fix() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to make a home another user cannot change")
    base = Path(tempfile.mkdtemp(prefix="exeunit-test-foreign-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        home.mkdir(mode=0o755)
        home.chmod(0o755)  # root's, open to all: not the daemon's user's to change
        code, printed = _as_nobody(["id", "--state-dir", str(home)])
        assert code == 1, printed
        assert f"cannot use {home} as the state directory: {home} is open to other users (mode 755)" in printed
        assert f"`chmod 700 {home}` as its owner" in printed
        assert not (home / "provider-key.pem").exists()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_keys_are_never_written_through_a_link_planted_where_they_go(tmp_path: Path) -> None:
    planted = tmp_path / "attacker"
    planted.mkdir()
    # where the key goes: a link to a file the attacker would read
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "key.pem").symlink_to(planted / "stolen.pem")
    with pytest.raises(RequestorError, match="is a link to nothing; remove it"):
        RequestorIdentity.load(tmp_path / "me" / "key.pem")
    assert not (planted / "stolen.pem").exists()
    # where the key was written on its way (the name before issue 25): not followed either
    bait = planted / "bait.pem"
    bait.write_text("")
    bait.chmod(0o666)
    (tmp_path / "you").mkdir()
    (tmp_path / "you" / "key.pem.partial").symlink_to(bait)
    made = RequestorIdentity.load(tmp_path / "you" / "key.pem")
    assert bait.read_text() == "" and not (tmp_path / "you" / "key.pem").is_symlink()
    assert mode(tmp_path / "you" / "key.pem") == 0o600
    assert RequestorIdentity.load(tmp_path / "you" / "key.pem").requestor_id == made.requestor_id
    # the provider's: the daemon refuses to start on it
    home = tmp_path / "home"
    home.mkdir()
    (home / "provider-key.pem").symlink_to(planted / "provider-stolen.pem")
    done = subprocess.run([sys.executable, "-m", "exeunit", "id", "--state-dir", str(home)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "provider-key.pem is a link to nothing; remove it" in done.stderr, done.stderr
    assert not (planted / "provider-stolen.pem").exists()


def test_processes_making_a_key_at_once_all_use_the_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    ids: list[str] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        ids.append(node_id_of(load_or_create_key(path).public_key()))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(ids) == {node_id_of(load_or_create_key(path).public_key())}
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temporary file left


def test_the_requestors_config_directory_and_files_are_made_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("GOLEM_IDENTITY", raising=False)
    monkeypatch.delenv("GOLEM_KNOWN_PROVIDERS", raising=False)
    config = tmp_path / "golem"
    config.mkdir(mode=0o755)
    config.chmod(0o755)
    RequestorIdentity.ephemeral()  # a key kept nowhere touches nothing
    assert mode(config) == 0o755
    first = RequestorIdentity.load()
    assert mode(config) == 0o700 and mode(config / "requestor-key.pem") == 0o600
    (config / "requestor-key.pem").chmod(0o644)
    assert RequestorIdentity.load().requestor_id == first.requestor_id
    assert mode(config / "requestor-key.pem") == 0o600

    known = KnownProviders()
    assert known.path == config / "known-providers"
    known.path.write_text(f"10.0.0.5:50051 0x{'ab' * 20}\n")
    known.path.chmod(0o644)
    config.chmod(0o755)
    known.remember("10.0.0.6:50051", "0x" + "cd" * 20)
    assert mode(config) == 0o700 and mode(known.path) == 0o600
    assert known.lookup("10.0.0.6:50051") == "0x" + "cd" * 20

    known.path.rename(tmp_path / "elsewhere")
    known.path.symlink_to(tmp_path / "elsewhere")  # a link is not written through
    with pytest.raises(ProviderIdentityError, match="a link, which is not followed: set GOLEM_KNOWN_PROVIDERS"):
        known.remember("10.0.0.7:50051", "0x" + "ef" * 20)
    assert "10.0.0.7" not in (tmp_path / "elsewhere").read_text()
