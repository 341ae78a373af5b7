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


# Requestors: an id derived from a key the requestor holds, proven on every call.

def test_a_requestor_identity_is_made_once_and_kept(tmp_path: Path, monkeypatch) -> None:
    from requestor.client.identity import RequestorIdentity

    monkeypatch.setenv("GOLEM_IDENTITY", str(tmp_path / "me" / "key.pem"))
    first = RequestorIdentity.load()
    assert stat.S_IMODE((tmp_path / "me" / "key.pem").stat().st_mode) == 0o600
    assert RequestorIdentity.load().requestor_id == first.requestor_id  # the same file, the same requestor
    assert RequestorIdentity.load(tmp_path / "other.pem").requestor_id != first.requestor_id
    assert re.fullmatch(r"0x[0-9a-f]{40}", first.requestor_id)


async def test_a_proof_holds_for_one_call_to_one_provider_of_one_method_now(daemons) -> None:
    import time

    import grpc

    from exeunit.v1 import activity_pb2 as act
    from exeunit.v1 import identity as wire
    from requestor.client.identity import RequestorIdentity
    from tests.client import identity_named

    server = await daemons.start()
    me = identity_named("prover")
    async with ContractClient(f"127.0.0.1:{server.port}", None) as raw:  # no proof added: we make our own
        async def list_with(metadata) -> grpc.StatusCode:
            try:
                await raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        method = "/exeunit.v1.Activity/ListActivities"
        epoch, body = raw.boot_epoch, act.ListActivitiesRequest().SerializeToString()
        proof = me.proof(raw.provider_id, epoch, method, body)
        assert await list_with(proof) is grpc.StatusCode.OK
        assert await list_with(proof) is grpc.StatusCode.UNAUTHENTICATED  # replayed
        assert await list_with(me.proof(raw.provider_id, epoch, "/exeunit.v1.Activity/GetActivityState", body)) \
            is grpc.StatusCode.UNAUTHENTICATED  # signed for another method
        assert await list_with(me.proof("0x" + "00" * 20, epoch, method, body)) \
            is grpc.StatusCode.UNAUTHENTICATED  # another provider
        # a signature by another key over the same message, with my key: refused
        forged = dict(me.proof(raw.provider_id, epoch, method, body))
        forged[wire.SIGNATURE_METADATA] = dict(RequestorIdentity.ephemeral().proof(raw.provider_id, epoch, method, body))[
            wire.SIGNATURE_METADATA]
        assert await list_with(tuple(forged.items())) is grpc.StatusCode.UNAUTHENTICATED
        # a proof made too far from the provider's clock: refused, saying what to fix
        stale = dict(me.proof(raw.provider_id, epoch, method, body))
        stale[wire.TIME_METADATA] = str(int((time.time() - 3600) * 1000))
        try:
            await raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=tuple(stale.items()))
            raise AssertionError("a stale proof was accepted")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAUTHENTICATED and "set this host's clock right" in exc.details()


async def test_a_second_proof_in_one_call_is_refused(daemons) -> None:
    """A caller's own valid proof, followed by another requestor's recent nonce: refused outright
    (the daemon must never pair one proof's verification with another's nonce)."""
    import grpc

    from exeunit.v1 import activity_pb2 as act
    from exeunit.v1 import identity as wire
    from tests.client import identity_named

    server = await daemons.start()
    async with ContractClient(f"127.0.0.1:{server.port}", None) as raw:
        method = "/exeunit.v1.Activity/ListActivities"
        epoch, body = raw.boot_epoch, act.ListActivitiesRequest().SerializeToString()
        victims = dict(identity_named("victim-of-nonces").proof(raw.provider_id, epoch, method, body))
        await raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=tuple(victims.items()))
        mine = identity_named("nonce-thief").proof(raw.provider_id, epoch, method, body)
        try:
            await raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=(
                *mine, (wire.NONCE_METADATA, victims[wire.NONCE_METADATA])))
            raise AssertionError("a call with two nonces was answered")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAUTHENTICATED and "given twice" in exc.details()
