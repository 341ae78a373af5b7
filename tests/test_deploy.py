"""deploy/: the systemd unit, the example settings and the daemon's Dockerfile are real: they
parse, load and build, and settings come from the file, the environment and flags in that order."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from exeunit.app import cli, config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def parsed(argv: list[str], environ: dict[str, str] | None = None):
    return cli.parse_args(cli.build_parser(), argv, environ or {})


def test_the_systemd_unit_starts_the_daemon_with_the_example_settings() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "exeunit.service")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 60
    command = shlex.split(service["ExecStart"])
    assert command[:2] == ["/usr/local/bin/exeunit", "serve"]
    config_path = Path(command[command.index("--config") + 1])
    # The unit's flags, with the example file standing in for /etc/exeunit/exeunit.toml:
    args = parsed([*command[1:command.index("--config")], "--config", str(DEPLOY / "exeunit.toml")])
    assert config_path == Path("/etc/exeunit/exeunit.toml")
    assert (args.name, args.listen, args.max_memory_gib, args.offer_image) == (
        "provider-a", "127.0.0.1:50051", 16.0, ["exeunit-*"])


def test_settings_come_from_the_file_then_the_environment_then_flags(tmp_path: Path) -> None:
    settings = tmp_path / "exeunit.toml"
    settings.write_text('name = "from-file"\nsubnet = "file-subnet"\nmax_cpu_threads = 3\n'
                        'no-image-urls = true\ncapability = ["gpu"]\n')
    args = parsed(["serve", "--config", str(settings), "--subnet", "flag-subnet"],
                  {"EXEUNIT_NAME": "from-env", "EXEUNIT_PRICE_CPU_SEC": "0.5"})
    assert (args.name, args.subnet, args.max_cpu_threads, args.no_image_urls, args.capability,
            args.price_cpu_sec) == ("from-env", "flag-subnet", 3, True, ["gpu"], 0.5)
    args = parsed(["serve"], {"EXEUNIT_CONFIG": str(settings), "EXEUNIT_NO_IMAGE_URLS": "off",
                              "EXEUNIT_OFFER_IMAGE": "web-*,db-*"})
    assert (args.name, args.no_image_urls, args.offer_image) == ("from-file", False, ["web-*", "db-*"])


@pytest.mark.parametrize(("content", "environ", "says"), [
    ("max-memory-gib = -1\n", {}, "max-memory-gib: must be greater than 0"),
    ("bogus = 1\n", {}, "unknown setting 'bogus'"),
    ("listen = \n", {}, "is not valid TOML"),
    ("", {"EXEUNIT_LOG_FORMAT": "xml"}, "EXEUNIT_LOG_FORMAT: 'xml' is not one of logfmt, json"),
    ("", {"EXEUNIT_KEEP_ACTIVITIES_ON_SHUTDOWN": "maybe"}, "is not true or false"),
])
def test_a_wrong_setting_names_where_it_is(tmp_path: Path, content: str, environ: dict[str, str], says: str) -> None:
    settings = tmp_path / "exeunit.toml"
    settings.write_text(content)
    with pytest.raises(config.ConfigError, match=says.replace("(", r"\(")):
        parsed(["serve", "--config", str(settings)], environ)
    done = subprocess.run([sys.executable, "-m", "exeunit", "serve", "--config", str(settings)],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **environ})
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1


def run_in(engine, image: str, command: list[str]) -> str:
    """Runs a container of `image` to its end; its output. Removed with its anonymous volumes (the
    image declares one), which `containers.run(remove=True)` would leave behind."""
    container = engine.containers.run(image, command, detach=True, network_mode="none")
    try:
        container.wait(timeout=60)
        return container.logs().decode()
    finally:
        container.remove(force=True, v=True)


def test_the_daemon_image_builds_without_a_registry_and_runs(engine) -> None:
    tag = f"exeunit-daemon-test-{uuid.uuid4().hex[:8]}:latest"
    built = subprocess.run([sys.executable, str(DEPLOY / "build_image.py"), "--tag", tag], capture_output=True,
                           text=True, timeout=600)
    try:
        assert built.returncode == 0, built.stdout + built.stderr
        assert run_in(engine, tag, ["--version"]).startswith("exeunit ")
        usage = run_in(engine, tag, ["serve", "--help"])
        assert "--metrics-listen" in usage and "--config" in usage
    finally:
        engine.images.remove(tag, force=True)
