"""Builds the images the tests and examples run, with no container registry.

    python images/build.py            # build what is missing
    python images/build.py --rebuild  # build everything again

First a Debian base made from Debian's packages: debootstrap into a folder (with the mirror from
the apt sources), then `docker import`. Then each images/<name>/Dockerfile on top of it, tagged
exeunit-<name>:latest. `--base IMAGE` builds the Dockerfiles on another base instead (where a
registry is reachable, for example debian:bookworm-slim with python3 installed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

HERE = Path(__file__).resolve().parent
DEBIAN_BASE = "exeunit-debian:bookworm"
SUITE = "bookworm"
BASE_PACKAGES = ["python3"]
# Dockerfiles in build order; each is tagged exeunit-<folder>:latest.
IMAGES = ["base", "simple-service", "webapp-db", "webapp-http"]


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (classic or deb822 sources)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"^\s*URIs:\s*(\S+)", text, re.M):
            if "security" not in match.group(1):
                return match.group(1)
        for match in re.finditer(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


def has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_debian_base(client: docker.DockerClient) -> None:
    if shutil.which("debootstrap") is None:
        sys.exit("[images] debootstrap is missing: apt-get install debootstrap (scripts/setup.sh does it)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="exeunit-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        say(f"debootstrap {SUITE} from {mirror} (about a minute)...")
        started = time.monotonic()
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        say(f"debootstrap done in {time.monotonic() - started:.0f}s; importing as {DEBIAN_BASE}")
        repository, tag = DEBIAN_BASE.split(":")
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(rootfs, arcname=".")
            archive.seek(0)
            client.api.import_image_from_data(archive, repository=repository, tag=tag)
    say(f"built {DEBIAN_BASE}")


def build_dockerfile(client: docker.DockerClient, name: str, base: str) -> None:
    """Builds images/<name>/Dockerfile, printing each step as the engine reports it."""
    tag = f"exeunit-{name}:latest"
    say(f"building {tag} on {base}...")
    said: list[str] = []
    for part in client.api.build(path=str(HERE / name), tag=tag, buildargs={"BASE": base}, rm=True,
                                 network_mode="none", decode=True):
        if "error" in part:
            sys.exit(f"[images] building {tag} failed: {part['error'].strip()}\n{''.join(said)}")
        line = str(part.get("stream", ""))
        said.append(line)
        if line.startswith("Step "):
            say(f"  {line.strip()}")
    say(f"built {tag}")


def image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def remove_replaced(client: docker.DockerClient, replaced: list[str]) -> None:
    """Removes the images a rebuild took the tags from (newest first: children before their
    base), unless something still uses them; a rebuild leaves no dangling image behind."""
    for old in reversed(replaced):
        try:
            client.images.remove(old, noprune=False)
            say(f"removed the replaced image {old[7:19]}")
        except docker.errors.APIError as exc:
            say(f"kept the replaced image {old[7:19]}: {exc.explanation or exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="rebuild images that already exist")
    parser.add_argument("--base", default=DEBIAN_BASE, help="base image for the Dockerfiles (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        sys.exit(f"[images] cannot reach the Docker engine ({exc}); run scripts/setup.sh, which starts dockerd")
    replaced: list[str] = []

    def replacing(tag: str) -> None:
        old = image_id(client, tag)
        if old is not None and old not in replaced:
            replaced.append(old)

    if args.base == DEBIAN_BASE and (args.rebuild or not has_image(client, DEBIAN_BASE)):
        replacing(DEBIAN_BASE)
        build_debian_base(client)
    for name in IMAGES:
        tag = f"exeunit-{name}:latest"
        if args.rebuild or not has_image(client, tag):
            replacing(tag)
            build_dockerfile(client, name, args.base)
        else:
            say(f"{tag} is present (use --rebuild to build it again)")
    still_tagged = {image_id(client, f"exeunit-{name}:latest") for name in IMAGES} | {image_id(client, DEBIAN_BASE)}
    remove_replaced(client, [old for old in replaced if old not in still_tagged])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
