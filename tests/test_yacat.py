"""yapapi's yacat (tests/yapapi_style/yacat.py) on the stand-in of its image, with goth's checks
of test_run_yacat; and what makes it run: an activity gets the provider's activity preset (2 GiB
by default), not the 0.5 GiB the script asks for, in which hashcat on pocl is killed."""

from __future__ import annotations

import math
from pathlib import Path

import docker

from exeunit.domain.resources import Resources
from exeunit.runtime.docker.labels import LABEL_ACTIVITY
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1.conventions import GIB
from tests.client import ContractClient
from tests.conftest import Daemons
from tests.test_yapapi_style import assert_all_invoices_accepted, expect_in_order
from tests.test_yapapi_tasks import TaskScript, environment, no_errors, providers

YACAT_IMAGE = "exeunit-yacat:latest"
KEYSPACE = 95  # goth's: the mask ?a?a is 95 printable characters (hashcat counts the first position's)
PROVIDERS = 2
CHUNK = math.ceil(KEYSPACE / PROVIDERS)
HASH = "$P$5ZDzPE45CigTC6EY4cXbyJSLj/pGee0"  # phpass of "yo", goth's
KEYSPACE_COMMAND = "hashcat --keyspace -a 3 -m 400 '?a?a'; echo rc=$?"
PRESET = Resources(cpu_threads=1, memory_bytes=2 * GIB, storage_bytes=4 * GIB)


def test_yacat_finds_the_password_on_two_providers(tmp_path: Path, engine: docker.DockerClient) -> None:
    """goth's test_run_yacat: the keyspace job, then one chunk per provider; the password found.
    The providers run with `exeunit serve`'s default preset."""
    with providers(engine, PROVIDERS) as daemons:
        script = TaskScript("yacat.py", tmp_path, "--mask", "?a?a", "--hash", HASH, "--subnet-tag", "goth",
                            "--chunk-size", str(CHUNK), "--max-workers", str(PROVIDERS),
                            "--log-file", str(tmp_path / "yacat.log"), env=environment(daemons))
        script.wait_for(r"Received proposals", timeout=30)
        script.wait_for(rf"The keyspace size is {KEYSPACE}\b", timeout=120)
        script.wait_for(r"Password found: yo\b", timeout=120)
        script.wait_for(r"Golem engine has shut down", timeout=60)
        script.ended()
    for task in ("compute_keyspace", "0", str(CHUNK)):  # goth's assert_tasks_processed
        expect_in_order(script.lines, rf"Task started on provider '[^']+', task data: {task}$",
                        rf"Task finished by provider '[^']+', task data: {task}$")
    no_errors(script.lines)
    assert_all_invoices_accepted(script.lines)


async def keyspace_in_a_half_gib_demand(client: ContractClient, engine: docker.DockerClient) -> tuple[mkt.Agreement, dict, bytes]:
    """The agreement and container of yacat's demand (0.5 GiB, 2 GiB of storage), and what
    hashcat said in it."""
    response = await client.propose(client.demand(YACAT_IMAGE, min_memory_bytes=GIB // 2, min_storage_bytes=2 * GIB))
    assert response.WhichOneof("outcome") == "agreement", response
    agreement_id = response.agreement.agreement_id
    created = await client.activity.CreateActivity(act.CreateActivityRequest(agreement_id=agreement_id),
                                                   metadata=client.metadata)
    run = await client.run_batch(created.activity_id, [client.deploy(), client.start(), client.sh(KEYSPACE_COMMAND)])
    container, = engine.containers.list(filters={"label": f"{LABEL_ACTIVITY}={created.activity_id}"})
    return response.agreement, container.attrs["HostConfig"], run.stdout()


async def test_an_activity_gets_the_preset_and_hashcat_runs_in_it(daemons: Daemons, engine: docker.DockerClient) -> None:
    server = await daemons.start(activity_preset=PRESET,
                                 capacity=Resources(cpu_threads=2, memory_bytes=8 * GIB, storage_bytes=20 * GIB))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert (offer.activity_cpu_threads, offer.activity_memory_bytes, offer.activity_storage_bytes) == (
            1, 2 * GIB, 4 * GIB)
        agreement, host, said = await keyspace_in_a_half_gib_demand(client, engine)
        assert (agreement.cpu_threads, agreement.memory_bytes, agreement.storage_bytes) == (1, 2 * GIB, 4 * GIB)
        assert host["Memory"] == 2 * GIB and host["NanoCpus"] == 10**9
        assert said == f"{KEYSPACE}\nrc=0\n".encode()
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert (offer.cpu_threads, offer.memory_bytes, offer.storage_bytes) == (1, 6 * GIB, 16 * GIB)  # held


async def test_without_a_preset_the_container_gets_the_demands_half_gib_and_hashcat_is_killed(
    client: ContractClient, engine: docker.DockerClient,
) -> None:
    """The issue's report: sized to the demand's minimum, hashcat with pocl is killed (137)."""
    agreement, host, said = await keyspace_in_a_half_gib_demand(client, engine)
    assert agreement.memory_bytes == GIB // 2 and host["Memory"] == GIB // 2
    assert said.endswith(b"rc=137\n"), said
