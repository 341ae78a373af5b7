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
import hashlib
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
# The tutorial's base also draws its plots with Debian's matplotlib (pip has no registry here).
PLOTS_BASE = "exeunit-debian-plots:bookworm"
# The stand-ins of yapapi's example images (nginx, sshd, Flask, python with GNU time) share one base
# of Debian's packages in place of the Alpine and python:slim images they start from.
SERVICES_BASE = "exeunit-debian-services:bookworm"
SERVICES_PACKAGES = [*BASE_PACKAGES, "python-is-python3", "python3-pip", "bash", "procps", "iproute2", "net-tools",
                     "nginx", "openssh-server", "inetutils-syslogd", "time"]
# The stand-in of yapapi's blender image renders with Debian's blender (3.4), installed without recommends.
BLENDER_BASE = "exeunit-debian-blender:bookworm"
# The stand-in of yapapi's yacat image cracks with Debian's hashcat on pocl, a CPU OpenCL runtime
# (and the OpenCL loader hashcat opens it through).
HASHCAT_BASE = "exeunit-debian-hashcat:bookworm"
DEBIAN_BASES = {DEBIAN_BASE: BASE_PACKAGES, PLOTS_BASE: [*BASE_PACKAGES, "python3-matplotlib"],
                SERVICES_BASE: SERVICES_PACKAGES, BLENDER_BASE: [*BASE_PACKAGES, "blender"],
                HASHCAT_BASE: [*BASE_PACKAGES, "hashcat", "pocl-opencl-icd", "ocl-icd-libopencl1"]}
# The Python of the Debian bases, for the wheels an image's requirements.txt asks for.
IMAGE_PYTHON = "3.11"
WHEEL_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# Dockerfiles in build order; each is tagged exeunit-<folder>:latest.
IMAGES = ["base", "simple-service", "webapp-db", "webapp-http", "webapp-fileupload", "http-proxy", "ssh",
          "hello-world", "market-strategy", "blender", "yacat"]


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


CONTEXT_LABEL = "io.exeunit.context"  # what an image was built from: a changed Dockerfile rebuilds it


def context_digest(name: str, base: str) -> str:
    """A digest of images/<name>/ (paths and contents) and the base it builds on."""
    digest = hashlib.sha256(base.encode())
    for path in sorted((HERE / name).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(HERE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def up_to_date(client: docker.DockerClient, tag: str, digest: str) -> bool:
    try:
        labels = client.images.get(tag).labels or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get(CONTEXT_LABEL) == digest


def has_packages(client: docker.DockerClient, tag: str, packages: list[str]) -> bool:
    """Whether the base `tag` exists with every one of `packages` installed (a base made before
    a package was added to its list is built again)."""
    try:
        client.containers.run(tag, ["dpkg-query", "--show", *packages], remove=True, network_mode="none")
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.ContainerError:
        return False


def build_debian_base(client: docker.DockerClient, tag_name: str = DEBIAN_BASE) -> None:
    """Debootstraps a Debian with DEBIAN_BASES[tag_name]'s packages and imports it as tag_name."""
    packages = DEBIAN_BASES[tag_name]
    if shutil.which("debootstrap") is None:
        sys.exit("[images] debootstrap is missing: apt-get install debootstrap (scripts/setup.sh does it)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="exeunit-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        say(f"debootstrap {SUITE} with {', '.join(packages)} from {mirror} (a minute or two)...")
        started = time.monotonic()
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(rootfs), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        say(f"debootstrap done in {time.monotonic() - started:.0f}s; importing as {tag_name}")
        repository, tag = tag_name.split(":")
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(rootfs, arcname=".")
            archive.seek(0)
            client.api.import_image_from_data(archive, repository=repository, tag=tag)
    say(f"built {tag_name}")


def download_wheels(requirements: Path, into: Path) -> None:
    """The wheels of `requirements` (and their dependencies) for the images' Python (Debian
    bookworm's 3.11 on x86-64), from the package index this machine's pip uses: the builds
    themselves run without a network."""
    into.mkdir()
    shutil.copy(requirements, into / "requirements.txt")
    platforms = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]
    say(f"downloading the wheels of {requirements.relative_to(HERE)}...")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--implementation", "cp", "--python-version", IMAGE_PYTHON,
                    *platforms, "--dest", str(into), "--requirement", str(requirements)], check=True)


def build_dockerfile(client: docker.DockerClient, name: str, base: str, digest: str) -> None:
    """Builds images/<name>/Dockerfile, printing each step as the engine reports it; a folder with
    a requirements.txt gets its wheels in wheels/ of the build context."""
    tag = f"exeunit-{name}:latest"
    say(f"building {tag} on {base}...")
    with tempfile.TemporaryDirectory(prefix=f"exeunit-build-{name}-") as scratch:
        context = HERE / name
        if (context / "requirements.txt").exists():
            context = Path(scratch) / name
            shutil.copytree(HERE / name, context)
            download_wheels(HERE / name / "requirements.txt", context / "wheels")
        said: list[str] = []
        for part in client.api.build(path=str(context), tag=tag, buildargs={"BASE": base}, rm=True,
                                     network_mode="none", decode=True, labels={CONTEXT_LABEL: digest}):
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

    if args.base == DEBIAN_BASE:
        for base in DEBIAN_BASES:
            if args.rebuild or not has_packages(client, base, DEBIAN_BASES[base]):
                replacing(base)
                build_debian_base(client, base)
    for name in IMAGES:
        tag = f"exeunit-{name}:latest"
        digest = context_digest(name, args.base)
        if args.rebuild or not up_to_date(client, tag, digest):
            replacing(tag)
            build_dockerfile(client, name, args.base, digest)
        else:
            say(f"{tag} is up to date (use --rebuild to build it again)")
    still_tagged = {image_id(client, f"exeunit-{name}:latest") for name in IMAGES} | {
        image_id(client, base) for base in DEBIAN_BASES}
    remove_replaced(client, [old for old in replaced if old not in still_tagged])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
