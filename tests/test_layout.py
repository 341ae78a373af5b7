"""The borders of the code's layout, kept by a test (README, "Layout").

Walks every import of both packages (those under `if TYPE_CHECKING:` and inside functions too)
and fails on an import circle, on a dependency that points the wrong way between the daemon's
layers, on Docker outside the Docker runtime, on gRPC or protobuf in the requestor outside its
client package, on a requestor module reaching into the daemon other than through the contract
or the embedded provider's entry point, and on a module past the size a reader can hold.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exeunit", "requestor")
CONTRACT = "exeunit.v1"
CONVENTIONS = "exeunit.v1.conventions"  # the contract's hand-written constants: both sides import it
MAX_MODULE_LINES = 450

# The daemon's layers, lowest first: a module imports only from its own layer or lower ones.
# `exeunit.errors` is the one exception root every layer raises.
DAEMON_LAYERS = (
    ("exeunit.errors", "exeunit.v1"),
    ("exeunit.domain",),
    ("exeunit.runtime", "exeunit.persistence"),
    ("exeunit.services",),
    ("exeunit.api",),
    ("exeunit.app", "exeunit.__main__", "exeunit.testing"),
)
# Implementations behind the runtime's protocols and the domain's Store: only the app picks them.
RUNTIME_IMPLEMENTATIONS = ("exeunit.runtime.docker", "exeunit.runtime.agent", "exeunit.persistence")
DOCKER_MODULES = ("docker", "requests")
GRPC_MODULES = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", CONTRACT)
REQUESTOR_CLIENT = "requestor.client"
# What a requestor module may import of the daemon's package, by where it is imported from.
REQUESTOR_TO_DAEMON = {
    "requestor": (CONVENTIONS,),
    REQUESTOR_CLIENT: (CONTRACT,),
    "requestor.embedded": ("exeunit.app.embedded",),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported (a submodule where `from package import name` names one)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            if not (within(name, CONTRACT) and "_pb2" in name):  # generated code aside
                found[name] = path
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                yield Import(name, submodule if submodule in known else module, node.lineno)


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = own_modules()
    known = set(modules)
    return [edge for name, path in modules.items() for edge in imports_of(name, path, known)]


def describe(edges: list[Import]) -> str:
    return "\n".join(f"  {e.source} imports {e.target} (line {e.line})" for e in edges)


def test_no_import_circles(graph: list[Import]) -> None:
    known = set(own_modules())
    edges: dict[str, set[str]] = {name: set() for name in known}
    for edge in graph:
        if edge.target in known and edge.target != edge.source:
            edges[edge.source].add(edge.target)
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(known):
        if name not in state:
            visit(name)
    assert not circles, "import circles (break them with a module both sides can import):\n" + "\n".join(
        "  " + " -> ".join(circle) for circle in circles
    )


def test_the_contracts_conventions_import_nothing(graph: list[Import]) -> None:
    """Both sides import them, the requestor outside its client too: no protobuf, no daemon."""
    assert [e.target for e in graph if e.source == CONVENTIONS] == ["__future__"]


def layer_of(name: str) -> int | None:
    for rank, prefixes in enumerate(DAEMON_LAYERS):
        if any(within(name, prefix) for prefix in prefixes):
            return rank
    return None


def test_daemon_dependencies_point_down(graph: list[Import]) -> None:
    upward = [
        e for e in graph
        if within(e.source, "exeunit") and within(e.target, "exeunit")
        and (source := layer_of(e.source)) is not None and (target := layer_of(e.target)) is not None
        and target > source
    ]
    assert not upward, "imports from a higher layer (api/app -> services -> domain, runtime and persistence " \
        "below services):\n" + describe(upward)
    unwired = [
        e for e in graph
        if any(within(e.target, impl) for impl in RUNTIME_IMPLEMENTATIONS)
        and not within(e.source, "exeunit.app")
        and not any(within(e.source, impl) for impl in RUNTIME_IMPLEMENTATIONS)
    ]
    assert not unwired, "implementations are chosen by exeunit.app only; others use " \
        "exeunit.runtime.protocols and exeunit.domain.records.Store:\n" + describe(unwired)


def test_docker_is_imported_only_by_the_docker_runtime(graph: list[Import]) -> None:
    wrong = [e for e in graph if any(within(e.target, m) for m in DOCKER_MODULES)
             and not within(e.source, "exeunit.runtime.docker")]
    assert not wrong, "the Docker SDK belongs in exeunit.runtime.docker:\n" + describe(wrong)


def test_grpc_in_the_requestor_only_in_its_client(graph: list[Import]) -> None:
    wrong = [e for e in graph if within(e.source, "requestor") and not within(e.source, REQUESTOR_CLIENT)
             and any(within(e.target, m) for m in GRPC_MODULES) and e.target != CONVENTIONS]
    assert not wrong, f"gRPC and protobuf belong in {REQUESTOR_CLIENT}:\n" + describe(wrong)


def test_the_requestor_reaches_the_daemon_only_through_the_contract_and_the_embedded_entry(graph: list[Import]) -> None:
    def allowed(edge: Import) -> bool:
        return any(within(edge.source, where) and any(within(edge.target, t) for t in targets)
                   for where, targets in REQUESTOR_TO_DAEMON.items())

    wrong = [e for e in graph if within(e.source, "requestor") and within(e.target, "exeunit") and not allowed(e)]
    assert not wrong, "requestor modules import the daemon only as " + repr(REQUESTOR_TO_DAEMON) + ":\n" + describe(wrong)


def test_importing_the_requestor_loads_no_daemon() -> None:
    probe = (
        "import sys, requestor, requestor.services, requestor.payload.vm\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'prometheus_client', 'psutil') "
        "or (m.startswith('exeunit.') and not m.startswith('exeunit.v1')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == [], f"import requestor loaded: {loaded.stdout}"


def test_no_module_is_past_the_size_a_reader_holds() -> None:
    long = {name: lines for name, path in own_modules().items()
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"
