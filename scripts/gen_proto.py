"""Regenerate the Python code of the gRPC contract from proto/.

Usage: python scripts/gen_proto.py [OUTPUT_ROOT]

Writes exeunit/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py under OUTPUT_ROOT (the repository root by
default). The staleness test runs this into a temporary folder and compares, so run it after
every change to proto/ and commit the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grpc_tools import protoc

import grpc_tools

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"


def generate(output_root: Path) -> list[Path]:
    """Compile every .proto under proto/ into output_root; returns the generated files."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    output_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return sorted((output_root / "exeunit" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="The staleness test runs this into a temporary folder and compares.")
    parser.add_argument("output_root", nargs="?", type=Path, default=REPO,
                        help="where exeunit/v1/ is written (default: the repository root)")
    for path in generate(parser.parse_args().output_root):
        print(path)
