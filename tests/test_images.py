"""Images by Docker id, by tag, and by url of a `docker save` archive checked against its hash."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest

from exeunit.v1 import activity_pb2 as act
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE


@pytest.fixture
def tiny_archive(engine: docker.DockerClient, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A `docker save` archive of a one-file image that is not on the engine; yields (path, image id)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        payload = f"tiny image {uuid.uuid4()}\n".encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tag = f"exeunit-test-tiny:{uuid.uuid4().hex[:8]}"
    repository, version = tag.split(":")
    engine.api.import_image_from_data(layer.getvalue(), repository=repository, tag=version)
    image = engine.images.get(tag)
    archive = tmp_path / "tiny.tar"
    with open(archive, "wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    engine.images.remove(image.id, force=True)
    yield archive, image.id
    try:
        engine.images.remove(image.id, force=True)
    except docker.errors.ImageNotFound:
        pass


def image_present(engine: docker.DockerClient, image_id: str) -> bool:
    try:
        engine.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


async def test_image_by_docker_id(client: ContractClient, engine: docker.DockerClient) -> None:
    image_id = engine.images.get(BASE_IMAGE).id
    activity_id = await client.new_activity(hash=image_id)
    run = await client.run_batch(activity_id, [client.deploy(), client.start(), client.run("/bin/true")])
    assert run.succeeded


async def test_tag_pointing_at_another_image_than_the_hash_is_refused(client: ContractClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.propose(client.demand(BASE_IMAGE, hash="sha256:" + "0" * 64))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"image tag '{BASE_IMAGE}' is sha256:" in err.value.details()


async def test_archive_with_a_wrong_hash_is_refused_and_nothing_is_kept(
    client: ContractClient, engine: docker.DockerClient, tiny_archive: tuple[Path, str]
) -> None:
    archive, image_id = tiny_archive
    wrong = "sha256:" + "1" * 64
    activity_id = await client.new_activity(url=archive.as_uri(), hash=wrong)
    run = await client.run_batch(activity_id, [client.deploy()])
    assert not run.succeeded
    message = run.finished[0].message
    assert f"does not match the demanded hash {wrong}" in message
    assert image_id in message and "nothing was loaded" in message
    assert not image_present(engine, image_id)
    assert (await client.state(activity_id)).state == act.ACTIVITY_STATE_NEW


async def test_archive_by_file_url_and_image_id(client: ContractClient, engine: docker.DockerClient, tiny_archive) -> None:
    archive, image_id = tiny_archive
    activity_id = await client.new_activity(url=archive.as_uri(), hash=image_id)
    run = await client.run_batch(activity_id, [client.deploy()])
    assert run.succeeded, run.finished
    assert image_present(engine, image_id)
    await client.destroy(activity_id)


async def test_archive_by_http_url_and_file_hash(client: ContractClient, engine: docker.DockerClient, tiny_archive) -> None:
    archive, image_id = tiny_archive
    file_hash = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    handler = functools.partial(_QuietHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
        activity_id = await client.new_activity(url=url, hash=file_hash)
        run = await client.run_batch(activity_id, [client.deploy()])
        assert run.succeeded, run.finished
        assert image_present(engine, image_id)
        await client.destroy(activity_id)
    finally:
        server.shutdown()


async def test_unreachable_archive_url_fails_deploy_with_the_cause(client: ContractClient, tmp_path: Path) -> None:
    missing = (tmp_path / "missing.tar").as_uri()
    activity_id = await client.new_activity(url=missing, hash="sha256:" + "2" * 64)
    run = await client.run_batch(activity_id, [client.deploy()])
    assert not run.succeeded
    assert run.finished[0].message.startswith(f"cannot fetch image archive {missing}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
