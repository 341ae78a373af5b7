"""Images: by id or tag among those the operator offers, or brought by a requestor as a url to a
`docker save` archive, which is fenced, checked, sized, loaded without names, and owned."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest

from exeunit.domain.settings import FetchPolicy
from exeunit.domain.settings import ImagePolicy
from exeunit.v1.conventions import GIB
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons

MIB = 1 << 20


@pytest.fixture
def tiny_archive(engine: docker.DockerClient, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A `docker save` archive of a one-file image that is not on the engine, naming itself
    `exeunit-base:latest` (as a hostile requestor's archive would); yields (path, image id)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        payload = f"tiny image {uuid.uuid4()}\n".encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    repository, version = f"tiny-{uuid.uuid4().hex[:8]}", "1"
    engine.api.import_image_from_data(layer.getvalue(), repository=repository, tag=version)
    image = engine.images.get(f"{repository}:{version}")
    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    engine.images.remove(image.id, force=True)
    archive = tmp_path / "tiny.tar"
    _rename_images(saved, archive, BASE_IMAGE)
    yield archive, image.id
    try:
        engine.images.remove(image.id, force=True)
    except docker.errors.ImageNotFound:
        pass


def _rename_images(source: Path, target: Path, tag: str) -> None:
    """Rewrites an archive so that it claims `tag` for its image (manifest and repositories)."""
    repository, version = tag.split(":")
    with tarfile.open(source) as src, tarfile.open(target, "w") as out:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                manifest = json.load(data)  # type: ignore[arg-type]
                for entry in manifest:
                    entry["RepoTags"] = [tag]
                data, member.size = _json_member(manifest, member)
            elif member.name == "repositories":
                layer_id = next(iter(next(iter(json.load(data).values())).values()))  # type: ignore[arg-type]
                data, member.size = _json_member({repository: {version: layer_id}}, member)
            out.addfile(member, data)


def _json_member(value: object, member: tarfile.TarInfo) -> tuple[io.BytesIO, int]:
    raw = json.dumps(value).encode()
    return io.BytesIO(raw), len(raw)


def image_present(engine: docker.DockerClient, image_id: str) -> bool:
    try:
        engine.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def fetching_policy(tmp_path: Path, **fetch: object) -> ImagePolicy:
    """A policy that fetches file:// urls beneath tmp_path and http from this machine's loopback."""
    fetch.setdefault("file_root", str(tmp_path))
    fetch.setdefault("allow_private_hosts", True)
    return ImagePolicy(fetch=FetchPolicy(**fetch))  # type: ignore[arg-type]


async def deploy_message(client: ContractClient, keep: bool = False, **demand: object) -> tuple[str, str]:
    """(activity id, failure message or '') of deploying a new activity for the demand; its agreement
    is terminated afterwards unless `keep`."""
    activity_id = await client.new_activity(**demand)
    run = await client.run_batch(activity_id, [client.deploy()])
    if not keep:
        agreement_id = (await client.state(activity_id)).agreement_id
        await client.market.TerminateAgreement(mkt.TerminateAgreementRequest(agreement_id=agreement_id),
                                               metadata=client.metadata)
    return activity_id, "" if run.succeeded else run.finished[0].message


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


async def test_only_offered_images_are_listed_and_deployable(client: ContractClient, engine: docker.DockerClient) -> None:
    private = f"operator-private-{uuid.uuid4().hex[:8]}:1"
    engine.images.get(BASE_IMAGE).tag(*private.split(":"))
    try:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert BASE_IMAGE in offer.images and private not in offer.images
        assert all(name.startswith(("exeunit-", "sha256:")) for name in offer.images)
        refused = await client.propose(client.demand(private))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_IMAGE_UNAVAILABLE
        assert refused.refusal.message == f"image '{private}' is not offered by this provider and no url to fetch it was given"
    finally:
        engine.images.remove(private)


async def test_archive_by_file_url_loads_without_names_and_belongs_to_its_requestor(
    daemons: Daemons, engine: docker.DockerClient, tiny_archive: tuple[Path, str]
) -> None:
    archive, image_id = tiny_archive
    base_id = engine.images.get(BASE_IMAGE).id
    server = await daemons.start(images=fetching_policy(archive.parent))
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "owner") as owner, ContractClient(address, "other") as other:
        activity_id, failure = await deploy_message(owner, keep=True, url=archive.as_uri(), hash=image_id)
        assert failure == ""
        assert image_present(engine, image_id)
        # the archive claimed exeunit-base:latest: the tag did not move, and no tag was created
        assert engine.images.get(BASE_IMAGE).id == base_id
        assert engine.images.get(image_id).tags == []
        # not in anyone's offer; its owner may use it again by hash, nobody else can
        offer = (await other.market.GetOffer(mkt.GetOfferRequest(), metadata=other.metadata)).offer
        assert image_id not in offer.images
        refused = await other.propose(other.demand(hash=image_id))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_IMAGE_UNAVAILABLE
        again = await owner.propose(owner.demand(hash=image_id))
        assert again.HasField("agreement")
        # removed once the last agreement that loaded or used it ends
        first_agreement = (await owner.state(activity_id)).agreement_id
        for agreement_id in (first_agreement, again.agreement.agreement_id):
            await owner.market.TerminateAgreement(mkt.TerminateAgreementRequest(agreement_id=agreement_id),
                                                  metadata=owner.metadata)
        assert not image_present(engine, image_id)


async def test_archive_with_a_wrong_hash_is_refused_and_reveals_nothing(
    daemons: Daemons, engine: docker.DockerClient, tiny_archive: tuple[Path, str]
) -> None:
    archive, image_id = tiny_archive
    server = await daemons.start(images=fetching_policy(archive.parent))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        wrong = "sha256:" + "1" * 64
        activity_id, failure = await deploy_message(client, keep=True, url=archive.as_uri(), hash=wrong)
        assert failure.startswith(f"the image archive does not match the demanded hash {wrong}")
        assert "nothing was loaded" in failure and image_id not in failure
        assert not image_present(engine, image_id)
        assert (await client.state(activity_id)).state == act.ACTIVITY_STATE_NEW


async def test_file_urls_reach_only_regular_files_beneath_the_image_dir(
    daemons: Daemons, tiny_archive: tuple[Path, str], tmp_path: Path
) -> None:
    archive, image_id = tiny_archive
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "zero.tar").symlink_to("/dev/zero")
    (allowed / "escape.tar").symlink_to(archive)
    strict = await daemons.start(name="strict")
    fenced = await daemons.start(name="fenced", images=fetching_policy(allowed))
    async with ContractClient(f"127.0.0.1:{strict.port}", "r") as client:
        _, failure = await deploy_message(client, url=archive.as_uri(), hash=image_id)
        assert failure == "this provider does not accept file:// image urls"
    async with ContractClient(f"127.0.0.1:{fenced.port}", "r") as client:
        refusal = "the file url does not name a readable regular file beneath this provider's image directory"
        for url in ("file:///etc/shadow", "file:///nonexistent/x.tar", archive.as_uri(),
                    (allowed / "zero.tar").as_uri(), (allowed / "escape.tar").as_uri(), allowed.as_uri()):
            _, failure = await deploy_message(client, url=url, hash=image_id)
            assert failure == refusal, url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Serving:
    """An HTTP server on loopback in a thread, for the duration of a `with`."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler] | functools.partial) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_http_urls_are_refused_for_loopback_and_private_hosts_without_saying_more(
    daemons: Daemons, tiny_archive: tuple[Path, str]
) -> None:
    archive, image_id = tiny_archive
    server = await daemons.start()
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        with _Serving(functools.partial(_QuietHandler, directory=str(archive.parent))) as base:
            closed_port = "http://127.0.0.1:1/x.tar"
            for url in (f"{base}/{archive.name}", closed_port, "http://10.0.0.1/x.tar", "http://169.254.169.254/x",
                        "http://[::1]/x.tar", "http://localhost/x.tar", "http://224.0.0.1/x.tar"):
                _, failure = await deploy_message(client, url=url, hash=image_id)
                assert "is not public (loopback, private, link-local and multicast addresses are refused)" in failure, url


async def test_archive_by_http_url_and_file_hash(daemons: Daemons, engine: docker.DockerClient, tiny_archive) -> None:
    archive, image_id = tiny_archive
    file_hash = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    server = await daemons.start(images=fetching_policy(archive.parent))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        with _Serving(functools.partial(_QuietHandler, directory=str(archive.parent))) as base:
            _, failure = await deploy_message(client, keep=True, url=f"{base}/{archive.name}", hash=file_hash)
            assert failure == ""
            assert image_present(engine, image_id)


def _gzip_bomb(tmp_path: Path, unpacked: int) -> tuple[Path, str]:
    """A small archive whose one gzip layer unpacks to `unpacked` bytes; yields (path, image id)."""
    layer = gzip.compress(b"\0" * unpacked, compresslevel=9)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": None, "Layers": ["layer.tar.gz"]}]).encode()
    path = tmp_path / "bomb.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("manifest.json", manifest), ("config.json", config), ("layer.tar.gz", layer)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, image_id


async def test_archives_and_unpacked_images_larger_than_the_agreement_storage_are_refused(
    daemons: Daemons, engine: docker.DockerClient, tiny_archive, tmp_path: Path
) -> None:
    bomb, bomb_id = _gzip_bomb(tmp_path, 256 * MIB)
    assert bomb.stat().st_size < MIB
    server = await daemons.start(images=fetching_policy(tmp_path))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        _, failure = await deploy_message(client, url=bomb.as_uri(), hash=bomb_id, min_storage_bytes=64 * MIB)
        assert failure == (f"the image unpacks to more than {64 * MIB} bytes, the most this agreement's storage and "
                           "the provider (--max-image-gib) allow; nothing was loaded")
        assert not image_present(engine, bomb_id)
        archive, image_id = tiny_archive
        _, failure = await deploy_message(client, url=archive.as_uri(), hash=image_id, min_storage_bytes=4096)
        assert failure.startswith("the image archive is larger than 4096 bytes") and "(--max-image-gib)" in failure


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers 200 and then sends one byte every 0.2 s, for ever (or nothing at all for /silent)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                if self.path != "/silent":
                    self.wfile.write(b"x")
                    self.wfile.flush()
                time.sleep(0.2)  # slow on purpose: the workload is a source that trickles (or is silent)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_fetches_that_stall_or_never_end_are_cut_and_destroy_cancels_at_once(daemons: Daemons) -> None:
    policy = ImagePolicy(fetch=FetchPolicy(allow_private_hosts=True, idle_seconds=1.0, deadline_seconds=3.0))
    server = await daemons.start(images=policy)
    image_id = "sha256:" + "3" * 64
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        with _Serving(_Trickle) as base:
            _, failure = await deploy_message(client, url=f"{base}/silent", hash=image_id)
            assert failure == "the image url sent nothing for 1s"
            _, failure = await deploy_message(client, url=f"{base}/trickle", hash=image_id)
            assert failure == "fetching the image archive took longer than 3s"
    server = await daemons.start(name="patient", images=ImagePolicy(fetch=FetchPolicy(allow_private_hosts=True)))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        with _Serving(_Trickle) as base:
            for wait_for_start in (True, False):  # destroyed while fetching, or before the fetch began
                activity_id = await client.new_activity(url=f"{base}/trickle", hash=image_id)
                batch_id = (await client.exec(activity_id, [client.deploy()])).batch_id
                if wait_for_start:
                    events = client.events(activity_id, batch_id)
                    assert (await anext(aiter(events))).WhichOneof("kind") == "started"
                started = time.monotonic()
                status = await client.destroy(activity_id)
                assert status.state == act.ACTIVITY_STATE_TERMINATED
                assert time.monotonic() - started < 10, "destroy waited for the fetch"
                result = await client.get_batch(activity_id, batch_id)
                assert result.results[0].message in (
                    "the image fetch was cancelled", "command 0 (deploy) cannot run: the activity is Terminated"
                ), result.results[0].message


def test_default_offer_patterns_match_what_build_py_builds() -> None:
    built = [f"exeunit-{d.name}:latest" for d in (Path(__file__).parent.parent / "images").iterdir() if d.is_dir()]
    assert built and all(ImagePolicy().offers_tag(tag) for tag in built)
    assert not ImagePolicy().offers_tag("postgres:16")
    assert os.path.isfile(Path(__file__).parent.parent / "images" / "build.py")


async def test_no_image_urls_refuses_url_demands(daemons: Daemons) -> None:
    server = await daemons.start(images=ImagePolicy(fetch=FetchPolicy(enabled=False)))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert not offer.accepts_image_urls
        refused = await client.propose(client.demand(url="http://example.invalid/x.tar", hash="sha256:" + "4" * 64,
                                                     min_storage_bytes=GIB))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_IMAGE_UNAVAILABLE
        assert "this provider does not fetch image urls" in refused.refusal.message
