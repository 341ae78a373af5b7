"""The borders of the code's layout, kept by a test (docs/layout.md, "The borders").

Walks every import of both packages (those under `if TYPE_CHECKING:` and inside functions too,
`importlib.import_module("x")` and `__import__("x")` as well, and a run of the Docker CLI as a use of
Docker; see tests/layout_rules.py) and fails on:

- an import circle;
- a dependency that points the wrong way between the daemon's layers (errors and exeunit.v1 <
  domain < runtime, persistence < services < api < app, __main__, testing);
- an implementation (exeunit.runtime.docker, .agent, .overlay, .bridges, exeunit.persistence)
  imported by anything but exeunit.app or itself: the rest see the protocols;
- gRPC, grpc_*, protobuf or generated contract code (exeunit.v1.*_pb2*) below exeunit.api (in
  errors, domain, runtime, persistence, services or the contract's hand-written modules); of
  exeunit.v1 these see only conventions (persistence and exeunit.v1 itself identity and
  private_files too);
- a daemon module importing the requestor;
- Docker (the SDK, requests, or the docker CLI) outside exeunit.runtime.docker;
- gRPC, protobuf or the contract (bar its conventions) in the requestor outside requestor.client;
- a requestor module reaching into the daemon other than through the contract or the embedded
  provider's entry point, and `import requestor` loading any of the daemon;
- exeunit.v1.conventions importing anything;
- a module past the size a reader can hold.

Each border is checked on the tree as it is and, by a mutation test, on the tree with one
offending line added to one module, where the rule must report exactly that line: a rule that
cannot fail would pass whatever the code does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.layout_rules import (
    CONVENTIONS, DOCKER_CLI, DYNAMIC, MAX_MODULE_LINES, REQUESTOR_TO_DAEMON, Import, circles, conventions_imports,
    daemon_imports_of_the_requestor, daemon_loaded_by, describe, docker_outside_its_runtime, graph_of, imports_of,
    long_modules, read_tree, requestor_into_the_daemon, requestor_transport_outside_its_client, transport_below_api,
    unwired_implementations, upward_imports,
)

Tree = tuple[dict[str, str], frozenset[str]]
Rule = Callable[[list[Import]], list[Import]]


@pytest.fixture(scope="module")
def tree() -> Tree:
    return read_tree()


@pytest.fixture(scope="module")
def graph(tree: Tree) -> list[Import]:
    return graph_of(*tree)


# The tree as it is -------------------------------------------------------------------------------

def test_no_import_circles(graph: list[Import]) -> None:
    found = circles(graph)
    assert not found, "import circles (break them with a module both sides can import):\n" + "\n".join(
        "  " + " -> ".join(circle) for circle in found)


def test_the_contracts_conventions_import_nothing(graph: list[Import]) -> None:
    """Both sides import them, the requestor outside its client too: no protobuf, no daemon."""
    assert not (wrong := conventions_imports(graph)), describe(wrong)


def test_daemon_dependencies_point_down(graph: list[Import]) -> None:
    assert not (wrong := upward_imports(graph)), "imports from a higher layer (api/app -> services -> " \
        "domain, runtime and persistence below services):\n" + describe(wrong)


def test_implementations_are_picked_by_the_app_only(graph: list[Import]) -> None:
    assert not (wrong := unwired_implementations(graph)), "implementations are chosen by exeunit.app only; " \
        "others use exeunit.runtime.protocols and the domain's Store, NetworkPlumbing, NetworkOverlay:\n" \
        + describe(wrong)


def test_grpc_and_generated_code_stay_in_the_api(graph: list[Import]) -> None:
    """The gRPC layer is a thin skin (exeunit.api) converting messages to domain values; below it
    the daemon could run behind another transport, and a service never holds a protobuf message."""
    assert not (wrong := transport_below_api(graph)), "gRPC, protobuf and exeunit.v1's generated code " \
        "belong in exeunit.api (and exeunit.app's client); below it only exeunit.v1.conventions " \
        "(persistence: identity, private_files):\n" + describe(wrong)


def test_the_daemon_never_imports_the_requestor(graph: list[Import]) -> None:
    """The requestor embeds the daemon (requestor.embedded -> exeunit.app.embedded), never the
    reverse, or either would load the other and a circle would span the packages. Nothing in the
    daemon, exeunit.testing and exeunit.app.embedded included, imports it today."""
    assert not (wrong := daemon_imports_of_the_requestor(graph)), describe(wrong)


def test_docker_is_reached_only_by_the_docker_runtime(graph: list[Import]) -> None:
    assert not (wrong := docker_outside_its_runtime(graph)), \
        "the Docker SDK and CLI belong in exeunit.runtime.docker:\n" + describe(wrong)


def test_grpc_in_the_requestor_only_in_its_client(graph: list[Import]) -> None:
    assert not (wrong := requestor_transport_outside_its_client(graph)), \
        "gRPC, protobuf and the contract belong in requestor.client:\n" + describe(wrong)


def test_the_requestor_reaches_the_daemon_only_through_the_contract_and_the_embedded_entry(
        graph: list[Import]) -> None:
    assert not (wrong := requestor_into_the_daemon(graph)), \
        f"requestor modules import the daemon only as {REQUESTOR_TO_DAEMON!r}:\n" + describe(wrong)


def test_importing_the_requestor_loads_no_daemon() -> None:
    """The import graph sees only this tree; this sees what Python actually loads."""
    loaded = daemon_loaded_by(["requestor", "requestor.services", "requestor.payload.vm"])
    assert loaded == [], f"import requestor loaded: {loaded}"


def test_no_module_is_past_the_size_a_reader_holds(tree: Tree) -> None:
    assert not (long := long_modules(tree[0])), f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"


# Each border catches its mutation ------------------------------------------------------------------

def mutated(tree: Tree, graph: list[Import], module: str, code: str) -> tuple[list[Import], int]:
    """The graph with `code` appended to `module` (only that module parsed again), and the line of
    the code's last line, where the offence is."""
    sources, known = tree
    source = sources[module].rstrip("\n") + "\n" + code.strip("\n") + "\n"
    is_package = any(name.startswith(module + ".") for name in known)
    return [e for e in graph if e.source != module] + imports_of(module, source, set(known), is_package), \
        source.count("\n")


MUTATIONS = [  # (rule, module, offending code, what the rule must report it as: (target, how))
    (conventions_imports, CONVENTIONS, "import grpc", ("grpc", "import")),
    (upward_imports, "exeunit.domain.records", "from exeunit.services.provider import Provider",
     ("exeunit.services.provider", "import")),
    (upward_imports, "exeunit.runtime.files", "if TYPE_CHECKING:\n    from exeunit.api import server",
     ("exeunit.api.server", "import")),
    (unwired_implementations, "exeunit.services.networks", "from exeunit.runtime.overlay.process import AgentProcess",
     ("exeunit.runtime.overlay.process", "import")),
    (unwired_implementations, "exeunit.services.activity", "import exeunit.runtime.overlay",
     ("exeunit.runtime.overlay", "import")),
    (unwired_implementations, "exeunit.services.networks", "from exeunit.runtime.bridges import BridgePlumbing",
     ("exeunit.runtime.bridges", "import")),
    (unwired_implementations, "exeunit.runtime.docker.runtime", "from exeunit.runtime.agent import executor",
     ("exeunit.runtime.agent.executor", "import")),
    (unwired_implementations, "exeunit.api.servicers", "from exeunit.persistence.store import FileStore",
     ("exeunit.persistence.store", "import")),
    (transport_below_api, "exeunit.services.provider", "import grpc", ("grpc", "import")),
    (transport_below_api, "exeunit.services.activity", "from google.protobuf import message",
     ("google.protobuf", "import")),
    (transport_below_api, "exeunit.runtime.storage", "from grpc_health.v1 import health", ("grpc_health.v1", "import")),
    (transport_below_api, "exeunit.persistence.store", "def f():\n    import grpc.aio", ("grpc.aio", "import")),
    (transport_below_api, "exeunit.domain.market", "from exeunit.v1 import activity_pb2",
     ("exeunit.v1.activity_pb2", "import")),
    (transport_below_api, "exeunit.domain.market", "import exeunit.v1.market_pb2_grpc",
     ("exeunit.v1.market_pb2_grpc", "import")),
    (transport_below_api, "exeunit.services.networks", "from exeunit.v1.network_pb2 import Member",
     ("exeunit.v1.network_pb2", "import")),
    (transport_below_api, "exeunit.domain.settings", "from exeunit.v1 import identity",
     ("exeunit.v1.identity", "import")),
    (transport_below_api, "exeunit.v1.identity", "import google.protobuf.message",
     ("google.protobuf.message", "import")),
    (transport_below_api, "exeunit.services.provider", 'importlib.import_module("grpc")', ("grpc", DYNAMIC)),
    (daemon_imports_of_the_requestor, "exeunit.services.provider", "import requestor", ("requestor", "import")),
    (daemon_imports_of_the_requestor, "exeunit.app.embedded", "def f():\n    from requestor.golem import Golem",
     ("requestor.golem", "import")),
    (daemon_imports_of_the_requestor, "exeunit.testing.providers", "from requestor import Golem",
     ("requestor", "import")),
    (docker_outside_its_runtime, "exeunit.services.images", "import docker", ("docker", "import")),
    (docker_outside_its_runtime, "exeunit.services.images", 'importlib.import_module("docker")', ("docker", DYNAMIC)),
    (docker_outside_its_runtime, "exeunit.services.images", 'x = __import__("docker.errors")',
     ("docker.errors", DYNAMIC)),
    (docker_outside_its_runtime, "exeunit.services.images", 'subprocess.run(["docker", "ps"])', ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.runtime.storage", 'subprocess.run(["/usr/bin/docker", "rm", "-f", cid])',
     ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.services.images", 'os.system(f"docker rm -f {cid}")', ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.services.images", 'os.popen("sudo docker ps")', ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.services.activity",
     'async def f():\n    await asyncio.create_subprocess_exec("docker", "rm", cid)', ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.services.activity",
     'from subprocess import check_output as sh\nsh("docker ps -q", shell=True)', ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.runtime.bridges", 'argv = ["docker", "network", "ls"]',
     ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "exeunit.runtime.storage", '_run("docker", "volume", "rm", name)',
     ("docker", DOCKER_CLI)),
    (docker_outside_its_runtime, "requestor.golem", "import requests", ("requests", "import")),
    (requestor_transport_outside_its_client, "requestor.golem", "import grpc", ("grpc", "import")),
    (requestor_transport_outside_its_client, "requestor.ctx", "from exeunit.v1 import activity_pb2",
     ("exeunit.v1.activity_pb2", "import")),
    (requestor_transport_outside_its_client, "requestor.engine", 'importlib.import_module("google.protobuf")',
     ("google.protobuf", DYNAMIC)),
    (requestor_into_the_daemon, "requestor.golem", "from exeunit.domain.market import Offer",
     ("exeunit.domain.market", "import")),
    (requestor_into_the_daemon, "requestor.client.provider", "from exeunit.app.embedded import LocalProvider",
     ("exeunit.app.embedded", "import")),
]


@pytest.mark.parametrize(("rule", "module", "code", "expected"), MUTATIONS,
                         ids=[f"{m[0].__name__}:{m[1]}:{m[2].splitlines()[-1].strip()}" for m in MUTATIONS])
def test_each_border_catches_its_mutation(tree: Tree, graph: list[Import], rule: Rule, module: str, code: str,
                                          expected: tuple[str, str]) -> None:
    assert rule(graph) == []
    changed, line = mutated(tree, graph, module, code)
    assert rule(changed) == [Import(module, expected[0], line, expected[1])]


@pytest.mark.parametrize(("module", "code"), [
    ("exeunit.runtime.docker.runtime", 'subprocess.run(["docker", "info"])'),
    ("exeunit.runtime.docker.runtime", 'importlib.import_module("docker")'),
    ("exeunit.app.assembly", "from exeunit.runtime.overlay.agent import Agent"),
    ("exeunit.persistence.keys", "from exeunit.v1 import identity"),
    ("exeunit.api.convert", "from exeunit.v1 import transfer_pb2"),
    ("requestor.client.convert", "from exeunit.v1 import transfer_pb2"),
    ("exeunit.services.images", 'logging.getLogger("docker")'),
    ("exeunit.services.images", 'subprocess.run(["ip", "link", "add", "docker-vm0"])'),
])
def test_what_the_borders_allow_stays_allowed(tree: Tree, graph: list[Import], module: str, code: str) -> None:
    """The same kinds of lines where they belong, or not what they look like, break nothing."""
    changed, _ = mutated(tree, graph, module, code)
    rules = (conventions_imports, upward_imports, unwired_implementations, transport_below_api,
             daemon_imports_of_the_requestor, docker_outside_its_runtime, requestor_transport_outside_its_client,
             requestor_into_the_daemon)
    assert {rule.__name__: rule(changed) for rule in rules} == {rule.__name__: [] for rule in rules}


def test_circles_are_caught_through_type_checking_imports(tree: Tree, graph: list[Import]) -> None:
    """exeunit.domain.batch imports the clock; the clock naming a batch type back is a circle even
    if only a type checker follows it: neither module can be read (or checked) before the other."""
    changed, _ = mutated(tree, graph, "exeunit.domain.clock",
                         "from typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from exeunit.domain.batch import Batch")
    assert circles(graph) == []
    assert circles(changed) == [["exeunit.domain.batch", "exeunit.domain.clock", "exeunit.domain.batch"]]


def test_a_circle_through_a_relative_import_in_a_package_is_caught() -> None:
    sources = {"p": "from . import b", "p.b": "def f():\n    import p\n"}
    assert circles(graph_of(sources)) == [["p", "p.b", "p"]]


def test_the_size_border_catches_a_long_module(tree: Tree) -> None:
    sources = dict(tree[0])
    sources["exeunit.services.pacing"] = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert long_modules(sources) == {"exeunit.services.pacing": MAX_MODULE_LINES + 1}


def test_the_load_probe_catches_a_requestor_that_loads_the_daemon(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, text in {"requestor/__init__.py": "import exeunit.services.leak\n", "exeunit/__init__.py": "",
                       "exeunit/services/__init__.py": "", "exeunit/services/leak.py": "",
                       "exeunit/v1/__init__.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert daemon_loaded_by(["requestor"], tmp_path) == ["exeunit.services", "exeunit.services.leak"]
