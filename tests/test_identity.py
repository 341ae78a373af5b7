"""A provider's id is derived from a key its home holds (exeunit.persistence.keys): `exeunit id`
prints it, it stays the same across starts, anyone can recompute it from the public key, and
nobody can choose one."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from exeunit.v1 import market_pb2 as mkt
from tests.client import ContractClient
from tests.daemon_process import Daemon

EXEUNIT = [sys.executable, "-m", "exeunit"]


def exeunit_id(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXEUNIT, "id", "--state-dir", str(home)], capture_output=True, text=True, timeout=60)


def test_the_provider_id_is_derived_from_the_homes_key_and_stays(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = exeunit_id(home)
    assert first.returncode == 0, first.stderr
    provider_id = first.stdout.strip()
    assert re.fullmatch(r"0x[0-9a-f]{40}", provider_id)
    assert exeunit_id(home).stdout.strip() == provider_id
    key_file = home / "provider-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = serialization.load_pem_private_key(key_file.read_bytes(), password=None).public_key()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert provider_id == "0x" + hashlib.sha256(spki).hexdigest()[:40]  # recomputable by anyone
    assert exeunit_id(tmp_path / "other").stdout.strip() != provider_id  # another home, another key


def test_a_provider_id_cannot_be_chosen(tmp_path: Path) -> None:
    done = subprocess.run([*EXEUNIT, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "home"),
                           "--provider-id", "0x" + "ab" * 20], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot be chosen: a provider's id is derived from its key" in done.stderr, done.stderr


async def test_the_daemon_offers_under_its_keys_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    provider_id = exeunit_id(home).stdout.strip()
    daemon = Daemon(state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
            offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
            assert offer.provider_id == provider_id == daemon.provider_id
    finally:
        daemon.stop()


def test_a_damaged_key_stops_the_daemon_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "provider-key.pem").write_text("not a key\n")
    done = subprocess.run([*EXEUNIT, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(home)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "provider-key.pem is not a usable private key" in done.stderr and "move it aside" in done.stderr
