#!/usr/bin/env python3
"""Builds exeunit-daemon:latest from deploy/Dockerfile, with no registry and no network.

The build context gets the Python packages the daemon imports, copied from this host's
installation (scripts/setup.sh installed them): found by importing the daemon and keeping the
modules that live in site-packages. The base image's python3 must be the same minor version.

    python deploy/build_image.py [--tag exeunit-daemon:latest] [--base IMAGE]
"""

from __future__ import annotations

import argparse
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OPTIONAL_IMPORTS = ["charset_normalizer", "chardet"]  # what requests looks for when it needs it


def daemon_packages() -> list[Path]:
    """Top-level packages and modules the daemon's import pulls in from site-packages."""
    probe = ("import sys, exeunit.app.cli, exeunit.app.metrics; "
             "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))")
    names = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           cwd=REPO).stdout.split()
    names += OPTIONAL_IMPORTS
    roots = [Path(p) for p in site.getsitepackages()]
    found = []
    for name in names:
        for root in roots:
            # a package, a module, or an extension module at the top (cffi's _cffi_backend, for cryptography)
            for candidate in (root / name, root / f"{name}.py", *root.glob(f"{name}.cpython-*.so")):
                if candidate.exists():
                    found.append(candidate)
        if (REPO / name).is_dir() and name == "exeunit":
            found.append(REPO / name)
    for root in roots:  # mypyc-compiled packages (charset_normalizer) keep a helper module at the top
        found.extend(root.glob("*__mypyc*.so"))
    return sorted(set(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="exeunit-daemon:latest")
    parser.add_argument("--base", default="exeunit-debian:bookworm", help="base image (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="exeunit-daemon-image-") as scratch:
        context = Path(scratch)
        shutil.copy(HERE / "Dockerfile", context / "Dockerfile")
        target = context / "site"
        target.mkdir()
        for package in daemon_packages():
            if package.is_dir():
                shutil.copytree(package, target / package.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
            else:
                shutil.copy(package, target / package.name)
        print(f"[daemon image] building {args.tag} on {args.base}...", flush=True)
        client = docker.from_env()
        for part in client.api.build(path=str(context), tag=args.tag, buildargs={"BASE": args.base}, rm=True,
                                     network_mode="none", decode=True):
            if "error" in part:
                sys.exit(f"[daemon image] build failed: {part['error'].strip()}")
        print(f"[daemon image] built {args.tag}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
