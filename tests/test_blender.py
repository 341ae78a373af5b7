"""yapapi's blender example (tests/yapapi_style/blender.py) on the stand-in of its image
(images/blender: Debian's blender behind /golem/entrypoints/run-blender.sh), against provider
daemons in processes of their own as goth's nodes are, with the checks goth's test_run_blender
makes on the script's output; the frames it downloads are read back as PNGs of the asked size.
The scene is the image's own (/golem/scenes/cubes.blend, made when the image is built)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from exeunit.runtime.docker.labels import LABEL_PROVIDER
from tests.daemon_process import Daemon
from tests.test_yapapi_examples import RunningScript
from tests.test_yapapi_style import assert_all_invoices_accepted, expect_in_order

IMAGE = "exeunit-blender:latest"
SCENE = "/golem/scenes/cubes.blend"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # blender 3 compresses .blend files with zstd
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, the filtered scanlines) of a PNG, every chunk's CRC checked and the image
    data inflated to exactly the size its header implies (8 or 16 bits, not interlaced)."""
    assert data.startswith(PNG_SIGNATURE), data[:16]
    position, chunks = len(PNG_SIGNATURE), []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in the {kind!r} chunk"
        chunks.append((kind, body))
        position += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [kind for kind, _ in chunks]
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth in (8, 16) and interlace == 0 and colour in CHANNELS, chunks[0][1]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * CHANNELS[colour] * depth // 8), (width, height, len(raw))
    return width, height, raw


def a_picture(raw: bytes) -> bool:
    """Not one flat colour: a scene with cubes, a floor and a sky rendered to many values."""
    return len(set(raw)) > 32


@pytest.fixture
def image(engine: docker.DockerClient) -> str:
    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{IMAGE} is missing; run python images/build.py")
    return IMAGE


@pytest.fixture
def scene(engine: docker.DockerClient, image: str, tmp_path: Path) -> Path:
    """The image's scene, copied out of a container made (not started) from the image."""
    container = engine.containers.create(image, ["true"], network_disabled=True)
    try:
        archive, _ = container.get_archive(SCENE)
        with tarfile.open(fileobj=io.BytesIO(b"".join(archive))) as tar:
            blend = tar.extractfile(tar.getmembers()[0]).read()
    finally:
        container.remove(force=True, v=True)  # its image declares VOLUMEs: theirs go with it
    assert blend.startswith(ZSTD_MAGIC) or blend.startswith(b"BLENDER"), blend[:8]  # saved compressed
    path = tmp_path / "cubes.blend"
    path.write_bytes(blend)
    return path


@pytest.fixture
def providers(engine: docker.DockerClient) -> Iterator[list[Daemon]]:
    """Two providers as goth's nodes: subnet goth, one CPU thread each; afterwards stopped, and
    no container of theirs left behind."""
    daemons = [Daemon("--name", f"provider-{n}", "--subnet", "goth", "--max-cpu-threads", "1") for n in (1, 2)]
    try:
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()
            shutil.rmtree(daemon.state_dir, ignore_errors=True)
            left = engine.containers.list(all=True, filters={"label": f"{LABEL_PROVIDER}={daemon.provider_id}"})
            assert not left, f"containers left behind by {daemon.provider_id}: {left}"


def run_blender(tmp_path: Path, scene: Path, daemons: list[Daemon], frames: list[int], *options: str,
                timeout: float) -> list[str]:
    environment = {**os.environ, "GOLEM_PROVIDERS": ",".join(f"127.0.0.1:{d.port}" for d in daemons)}
    script = RunningScript("blender.py", tmp_path, "--subnet-tag", "goth", "--min-cpu-threads", "1",
                           "--scene", str(scene), "--frames", ",".join(map(str, frames)), *options,
                           "--log-file", str(tmp_path / "blender.log"), env=environment)
    script.finish(timeout=timeout)
    return script.lines


def goth_checks(lines: list[str], frames: list[int]) -> None:
    """goth's test_run_blender: proposals from both providers, an agreement proposed and
    confirmed, every task started and finished by a provider, the engine shut down; no errors,
    every invoice accepted."""
    expect_in_order(lines, r"Received proposals from 2 ", r"Agreement proposed ", r"Agreement confirmed ",
                    r"Golem engine has shut down")
    for frame in frames:
        expect_in_order(lines, rf"Task started on provider '[^']+', task data: {frame}$",
                        rf"Task finished by provider '[^']+', task data: {frame}$")
        expect_in_order(lines, rf"Task computed: .*result: output_{frame}\.png", r"Golem engine has shut down")
    assert any(re.search(rf"{len(frames)} tasks computed, total time: ", line) for line in lines), "\n".join(lines)
    assert not [line for line in lines if "ERROR" in line], "\n".join(lines)
    assert_all_invoices_accepted(lines)


def test_blender_renders_each_frame_on_a_provider_and_downloads_it(tmp_path: Path, scene: Path,
                                                                   providers: list[Daemon]) -> None:
    frames = [0, 50]
    lines = run_blender(tmp_path, scene, providers, frames, "--resolution", "80x60", "--samples", "4", timeout=240)
    goth_checks(lines, frames)
    pictures = {}
    for frame in frames:
        width, height, raw = read_png((tmp_path / f"output_{frame}.png").read_bytes())
        assert (width, height) == (80, 60) and a_picture(raw)
        pictures[frame] = raw
    assert pictures[0] != pictures[50]  # the cubes turned and rose in between


def test_the_entrypoint_renders_crops_and_formats_and_refuses_bad_params(engine: docker.DockerClient,
                                                                         image: str) -> None:
    """What run-blender.sh does with params.json beyond the example's: two crops of a frame, each
    its own file of the crop's size, a JPEG; a missing scene fails, naming it."""
    params = {"scene_file": SCENE, "resolution": [60, 40], "samples": 2, "frames": [20], "output_format": "PNG",
              "crops": [{"outfilebasename": "left", "borders_x": [0.0, 0.5], "borders_y": [0.0, 1.0]},
                        {"outfilebasename": "top", "borders_x": [0.0, 1.0], "borders_y": [0.5, 1.0]}]}
    jpeg = {**params, "output_format": "JPEG", "crops": None, "frames": [3]}
    missing = {**params, "scene_file": "/golem/resource/nothing.blend"}
    command = (f"echo '{json.dumps(params)}' > /golem/work/params.json && /golem/entrypoints/run-blender.sh"
               f" && echo '{json.dumps(jpeg)}' > /golem/work/params.json && /golem/entrypoints/run-blender.sh"
               f" && echo '{json.dumps(missing)}' > /golem/work/params.json; /golem/entrypoints/run-blender.sh;"
               f" echo exit=$?")
    container = engine.containers.run(image, ["sh", "-c", command], detach=True, network_mode="none",
                                      nano_cpus=1_000_000_000, mem_limit="512m", cap_drop=["ALL"])
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0
        # Each stream on its own: the engine's log does not keep stdout's and stderr's lines in
        # the order they were written (the complaint once came after the `echo exit=2`).
        said = container.logs(stdout=True, stderr=False).decode()
        complained = container.logs(stdout=False, stderr=True).decode()
        archive, _ = container.get_archive("/golem/output")
        with tarfile.open(fileobj=io.BytesIO(b"".join(archive))) as tar:
            files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    finally:
        container.remove(force=True, v=True)  # its image declares VOLUMEs: theirs go with it
    assert sorted(files) == ["left0020.png", "out0003.jpg", "top0020.png"], said
    assert read_png(files["left0020.png"])[:2] == (30, 40) and read_png(files["top0020.png"])[:2] == (60, 20)
    assert files["out0003.jpg"].startswith(b"\xff\xd8\xff"), said
    assert "the scene /golem/resource/nothing.blend is not there" in complained, complained
    assert said.rstrip().endswith("exit=2"), said


@pytest.mark.slow
def test_blender_example_as_published_six_frames_at_400x300(tmp_path: Path, scene: Path,
                                                             providers: list[Daemon]) -> None:
    """The example's own frames (0, 10, ... 50), resolution and samples, as goth runs it."""
    frames = list(range(0, 60, 10))
    lines = run_blender(tmp_path, scene, providers, frames, "--show-usage", timeout=600)
    goth_checks(lines, frames)
    for frame in frames:
        width, height, raw = read_png((tmp_path / f"output_{frame}.png").read_bytes())
        assert (width, height) == (400, 300) and a_picture(raw)
    assert any(" USAGE: " in line for line in lines) and any("  COST: " in line for line in lines)
