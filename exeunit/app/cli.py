"""`exeunit`: the provider daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import psutil

from exeunit import __version__, errors
from exeunit.app import config, logs
from exeunit.app import ps as listing
from exeunit.services.activity import ActivityLimits
from exeunit.runtime.docker.runtime import DockerRuntime
from exeunit.runtime.fetch import FetchPolicy
from exeunit.persistence.home import Identity, ProviderHome
from exeunit.services.images import DEFAULT_OFFERED_IMAGES, ImagePolicy
from exeunit.domain.market import (
    CUSTOM_COUNTER, GIB, RUNTIME_NAME, TEST_COUNTERS_RUNTIME, LinearPricing, ProviderSettings, Resources,
)
from exeunit.services.provider import Provider
from exeunit.runtime.storage import DirectoryStorage, LoopStorage
from exeunit.app.metrics import MetricsServer
from exeunit.api.server import check_listen_address, serve_until_signalled
from exeunit.persistence.store import StateStore

DEFAULT_HOMES = Path("/var/lib/exeunit")  # a provider's home is DEFAULT_HOMES/NAME unless --state-dir
STATE_FILE = "state.sqlite3"  # in the home: what a restarted daemon recovers (exeunit.persistence.store)
ADMIN_SOCKET = "admin.sock"  # in the home: the operator's socket (exeunit ps)

log = logging.getLogger("exeunit")

DESCRIPTION = """\
ExeUnit provider daemon: offers this host's capacity to requestors over gRPC and runs each
activity as one hardened Docker container standing in for a Golem VM.
"""

SERVE_EPILOG = """\
examples:
  exeunit serve --name provider-a --subnet public
  exeunit serve --listen 127.0.0.1:50052 --name cheap --price-duration-sec 0.0001
  exeunit serve --listen 0.0.0.0:50051 --auth-token-file /etc/exeunit/token

Requestors identify themselves with the 'x-requestor-id' call metadata. Listening on a
non-loopback address needs --auth-token-file (or --insecure-allow-remote, to accept anyone).
SIGTERM or Ctrl-C terminates every activity and removes its container before exiting.
"""


class OneLineErrors(argparse.ArgumentParser):
    """Says what is wrong in one line (not a screenful of usage) and where the rest is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="exeunit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"exeunit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the provider daemon",
        description="Run the provider daemon until SIGTERM or Ctrl-C.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ident = serve.add_argument_group("identity and network")
    ident.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT", type=listen_address,
                       help="address to serve gRPC on (default: %(default)s; port 0 picks a free one)")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="a TOML file of settings: the long flag names as keys (top level or under [serve]); "
                            "EXEUNIT_<FLAG_NAME> variables win over it, and flags over both (repeatable flags "
                            "add to the file's lists). Default: $EXEUNIT_CONFIG, else none")
    ident.add_argument("--metrics-listen", type=listen_address, metavar="HOST:PORT",
                       help="serve Prometheus metrics (activities and agreements by state, commands, bytes moved, "
                            "refused calls; no requestor ids) on http://HOST:PORT/metrics (default: off)")
    ident.add_argument("--name", default=socket.gethostname(), help="provider name shown in the offer (default: host name)")
    ident.add_argument("--subnet", default="public", help="subnet tag; only demands for it match (default: %(default)s)")
    ident.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="the provider's home: its identity, its lock (one daemon per directory) and its "
                            "activities' storage (default: /var/lib/exeunit/NAME)")
    ident.add_argument("--provider-id", default="",
                       help="provider id for a new --state-dir (default: a random one, kept in the directory)")
    ident.add_argument("--auth-token-file", type=Path, metavar="FILE",
                       help="file holding a shared secret callers must send as 'authorization: Bearer <secret>'")
    ident.add_argument("--keep-activities-on-shutdown", action="store_true",
                       help="on SIGTERM, leave activities running for the next daemon on this --state-dir to take "
                            "up (to upgrade the daemon under running services); without it they end")
    ident.add_argument("--insecure-allow-remote", action="store_true",
                       help="allow a non-loopback --listen without a token (anyone reaching the port can run containers)")

    cap = serve.add_argument_group("capacity offered (defaults: measured on this host)")
    cap.add_argument("--max-cpu-threads", type=positive(int), metavar="N", help="cap on cpu threads offered")
    cap.add_argument("--max-memory-gib", type=positive(float), metavar="GIB", help="cap on memory offered")
    cap.add_argument("--max-storage-gib", type=positive(float), metavar="GIB", help="cap on storage offered")
    cap.add_argument("--cpu-overcommit", type=positive(float), default=1.0, metavar="FACTOR",
                     help="offer FACTOR times the cpu threads (each container stays limited to its own "
                          "threads); for hosts of mostly idle services (default: %(default)s)")
    cap.add_argument("--default-memory-gib", type=positive(float), default=0.5, metavar="GIB",
                     help="memory reserved for a demand that asks for none (default: %(default)s)")
    cap.add_argument("--default-storage-gib", type=positive(float), default=2.0, metavar="GIB",
                     help="storage reserved for a demand that asks for none (default: %(default)s)")
    cap.add_argument("--test-counters-runtime", action="store_true",
                     help="also offer Golem's test runtime `test-counters` (the base image; `sleep MS` is "
                          f"waited out by the daemon and counted in {CUSTOM_COUNTER}), for yapapi's "
                          "custom-usage-counter example")
    cap.add_argument("--capability", action="append", default=[], metavar="NAME",
                     help="advertise a runtime capability (repeatable)")

    images = serve.add_argument_group("images (what requestors may run)")
    images.add_argument("--offer-image", action="append", default=[], metavar="PATTERN",
                        help="offer images whose 'repository:tag' matches PATTERN (fnmatch; repeatable); "
                             f"{', '.join(DEFAULT_OFFERED_IMAGES)} (what images/build.py builds) is always offered")
    images.add_argument("--no-image-urls", action="store_true",
                        help="refuse demands that bring their own image as a url to a `docker save` archive")
    images.add_argument("--image-dir", metavar="DIR",
                        help="accept file:// image urls, only for regular files beneath DIR (default: refuse them)")
    images.add_argument("--allow-private-image-hosts", action="store_true",
                        help="let http(s) image urls reach loopback, private and link-local addresses "
                             "(default: only public addresses, checked after every redirect)")
    images.add_argument("--max-image-gib", type=positive(float), default=4.0, metavar="GIB",
                        help="largest archive, and largest unpacked image, fetched for a requestor; the "
                             "agreement's storage caps it too (default: %(default)s)")

    price = serve.add_argument_group("linear pricing (cost = start + cpu_sec * cpu + duration_sec * duration)")
    price.add_argument("--price-start", type=non_negative, default=0.0, metavar="AMOUNT", help="start fee (default: %(default)s)")
    price.add_argument("--price-cpu-sec", type=non_negative, default=0.0001, metavar="AMOUNT",
                       help="per cpu second (default: %(default)s)")
    price.add_argument("--price-duration-sec", type=non_negative, default=0.00002, metavar="AMOUNT",
                       help="per second of activity duration (default: %(default)s)")
    price.add_argument("--price-per-unit", action="append", default=[], type=unit_price, metavar="COUNTER=AMOUNT",
                       help="price of one unit of another usage counter, e.g. golem.usage.custom.counter=0.001 "
                            "(repeatable)")
    price.add_argument("--currency", default="GLM", help="currency name shown in the offer (default: %(default)s)")

    terms = serve.add_argument_group("agreement terms (capacity held by an agreement comes back)")
    terms.add_argument("--max-agreement-hours", type=positive(float), default=24.0, metavar="HOURS",
                       help="refuse demands whose expiration is further away than this (default: %(default)s)")
    terms.add_argument("--agreement-idle-seconds", type=positive(float), default=300.0, metavar="SECONDS",
                       help="end an agreement that has had no live activity for this long (default: %(default)s)")
    terms.add_argument("--forget-ended-after", type=positive(float), default=900.0, metavar="SECONDS",
                       help="ended agreements and activities answer status calls this long, then are forgotten "
                            "(default: %(default)s)")

    store = serve.add_argument_group("storage (each activity's volumes: a filesystem of its agreement's size)")
    store.add_argument("--storage-dir", type=Path, metavar="DIR",
                       help="where activities' filesystems live (in DIR/PROVIDER_ID); the offered storage is what "
                            "is free here (default: STATE_DIR/storage)")
    store.add_argument("--unenforced-storage", action="store_true",
                       help="where loop-mounting is impossible (no root, no loop devices), keep volumes in plain "
                            "directories with NO size limit instead of refusing to start")

    limits = serve.add_argument_group("per-activity limits")
    limits.add_argument("--pids-limit", type=positive(int), default=512, metavar="N",
                        help="max processes in one container (default: %(default)s)")
    limits.add_argument("--transfers-per-activity", type=positive(int), default=4, metavar="N",
                        help="uploads and downloads one activity may have in flight; more are refused (default: %(default)s)")
    limits.add_argument("--transfers-per-requestor", type=positive(int), default=16, metavar="N",
                        help="uploads and downloads one requestor may have in flight (default: %(default)s)")
    limits.add_argument("--transfer-idle-seconds", type=positive(float), default=60.0, metavar="SECONDS",
                        help="cut a transfer whose client sends or reads nothing for this long (default: %(default)s)")
    limits.add_argument("--tunnels-per-activity", type=positive(int), default=64, metavar="N",
                        help="TCP connections into one activity through Tunnel at once (default: %(default)s)")
    limits.add_argument("--networks-per-requestor", type=positive(int), default=8, metavar="N",
                        help="private networks (Golem's VPN) one requestor may have on this provider at once; "
                             "each lives while the requestor has an agreement here (default: %(default)s)")
    limits.add_argument("--batches-kept", type=positive(int), default=256, metavar="N",
                        help="finished batches kept per activity for GetBatch and replay, in memory and in the "
                             "state directory; older ones are forgotten (default: %(default)s)")
    limits.add_argument("--result-output-cap-kib", type=positive(int), default=1024, metavar="KIB",
                        help="stdout/stderr kept per command for its result; the stream has all (default: %(default)s)")
    limits.add_argument("--replay-window-mib", type=positive(int), default=32, metavar="MIB",
                        help="output retained per batch for clients that reconnect (default: %(default)s)")

    ps = commands.add_parser(
        "ps", help="list the activities a daemon on this host runs (every requestor's)",
        description="Lists a daemon's activities through its admin socket (STATE_DIR/admin.sock, which only "
                    "the daemon's user can open): requestor, state, image, age and usage of each.",
    )
    ps.add_argument("--state-dir", type=Path, metavar="DIR", help="the daemon's home (default: /var/lib/exeunit/NAME)")
    ps.add_argument("--name", default=socket.gethostname(), help="the daemon's --name, to find its home")
    ps.add_argument("--json", action="store_true", help="one JSON object per activity instead of a table")
    serve.add_argument("--log-format", default="logfmt", choices=logs.FORMATS,
                       help="one event per line as logfmt (key=value, quoted where needed) or as JSON objects; "
                            "times are RFC 3339 UTC (default: %(default)s)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log verbosity (default: %(default)s)")
    return parser


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of `kind` greater than zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def non_negative(text: str) -> float:
    """An argparse type: a number, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def unit_price(text: str) -> tuple[str, float]:
    """An argparse type: COUNTER=AMOUNT, the amount 0 or more."""
    name, equals, amount = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not COUNTER=AMOUNT (e.g. {CUSTOM_COUNTER}=0.001)")
    return name.strip(), non_negative(amount)


def listen_address(text: str) -> str:
    """An argparse type: HOST:PORT (IPv6 as [ADDR]:PORT), port 0-65535 (0 picks a free one)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:50051, or [::1]:50051)")
    if not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    if host.startswith("[") != host.endswith("]"):
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address goes in brackets, as [::1]:50051")
    return text


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def provider_settings(args: argparse.Namespace, identity: Identity, storage_dir: Path) -> ProviderSettings:
    measured = Resources(
        cpu_threads=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        storage_bytes=psutil.disk_usage(_existing(str(storage_dir))).free,
    )
    capacity = Resources(
        cpu_threads=int(min(measured.cpu_threads, args.max_cpu_threads or measured.cpu_threads) * args.cpu_overcommit),
        memory_bytes=min(measured.memory_bytes, int((args.max_memory_gib or 1e9) * GIB)),
        storage_bytes=min(measured.storage_bytes, int((args.max_storage_gib or 1e9) * GIB)),
    )
    return ProviderSettings(
        provider_id=identity.provider_id,
        home_id=identity.home_id,
        name=args.name,
        subnet_tag=args.subnet,
        pricing=LinearPricing(args.price_start, args.price_cpu_sec, args.price_duration_sec, args.currency,
                              dict(args.price_per_unit)),
        runtimes=(RUNTIME_NAME, TEST_COUNTERS_RUNTIME) if args.test_counters_runtime else (RUNTIME_NAME,),
        capacity=capacity,
        default_allotment=Resources(1, int(args.default_memory_gib * GIB), int(args.default_storage_gib * GIB)),
        capabilities=tuple(args.capability),
        images=ImagePolicy(
            offered=(*DEFAULT_OFFERED_IMAGES, *args.offer_image),
            fetch=FetchPolicy(
                enabled=not args.no_image_urls,
                file_root=args.image_dir,
                allow_private_hosts=args.allow_private_image_hosts,
                max_bytes=int(args.max_image_gib * GIB),
            ),
        ),
        max_agreement_seconds=args.max_agreement_hours * 3600,
        agreement_idle_seconds=args.agreement_idle_seconds,
        ended_retention_seconds=args.forget_ended_after,
    )


def _existing(path: str) -> str:
    """The path, or the nearest directory above it that exists (whose filesystem it will be on)."""
    candidate = Path(path)
    while not candidate.exists():
        candidate = candidate.parent
    return str(candidate)


def storage_dir(args: argparse.Namespace, home: ProviderHome) -> Path:
    """Where this provider's activity filesystems go: under its home, or its own directory in the
    operator's --storage-dir."""
    return args.storage_dir / home.identity.provider_id if args.storage_dir else home.path / "storage"


def activity_storage(args: argparse.Namespace, base: Path, runtime: DockerRuntime) -> LoopStorage:
    """Loop-mounted storage, or plain directories when the operator accepts no size limit; owned
    by whoever root in a container is on this host."""
    owner = runtime.container_root_owner()
    why_not = LoopStorage.available()
    if why_not is None:
        return LoopStorage(base, *owner)
    if not args.unenforced_storage:
        raise errors.FailedPrecondition(
            f"cannot enforce activities' storage: {why_not}. Run as root on a host with loop devices, or pass "
            "--unenforced-storage to run with volumes of unlimited size"
        )
    log.warning("event=storage_unenforced reason=%r", why_not)
    return DirectoryStorage(base, *owner)


def serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    if args.cpu_overcommit < 1:  # positive() took care of the rest
        print("exeunit: --cpu-overcommit must be at least 1", file=sys.stderr)
        return 2
    token = None
    if args.auth_token_file:
        try:
            token = args.auth_token_file.read_text().strip()
        except OSError as exc:
            print(f"exeunit: cannot read --auth-token-file: {exc}", file=sys.stderr)
            return 2
        if not token:
            print(f"exeunit: {args.auth_token_file} is empty; put a secret in it", file=sys.stderr)
            return 2
    if not is_loopback(args.listen) and token is None and not args.insecure_allow_remote:
        print(
            f"exeunit: refusing to listen on {args.listen} without a token: anyone reaching it could run "
            "containers. Pass --auth-token-file FILE, or --insecure-allow-remote if you mean it.",
            file=sys.stderr,
        )
        return 2
    home = None
    try:
        check_listen_address(args.listen)
        if args.metrics_listen:
            check_listen_address(args.metrics_listen)
        home = ProviderHome.open(args.state_dir or DEFAULT_HOMES / args.name, args.provider_id)  # before anything else
        runtime = DockerRuntime()
        base = storage_dir(args, home)
        settings = provider_settings(args, home.identity, base)
        storage = activity_storage(args, base, runtime)
        limits = ActivityLimits(
            pids_limit=args.pids_limit,
            result_output_cap=args.result_output_cap_kib * 1024,
            batches_kept=args.batches_kept,
            tunnels_per_activity=args.tunnels_per_activity,
            networks_per_requestor=args.networks_per_requestor,
            replay_window_bytes=args.replay_window_mib << 20,
            transfers_per_activity=args.transfers_per_activity,
            transfers_per_requestor=args.transfers_per_requestor,
            transfer_idle_seconds=args.transfer_idle_seconds,
        )
        state = StateStore(home.path / STATE_FILE)
        provider = Provider(settings, runtime, limits, storage, state)
        exporter = None
        if args.metrics_listen:
            host, _, port = args.metrics_listen.rpartition(":")
            exporter = MetricsServer(provider, host, int(port))
            log.info("event=metrics_listening address=%s port=%d", args.metrics_listen, exporter.port)
        try:
            asyncio.run(serve_until_signalled(provider, args.listen, token, args.keep_activities_on_shutdown,
                                              home.path / ADMIN_SOCKET))
        finally:
            state.close()
            if exporter is not None:
                exporter.close()
    except errors.ExeUnitError as exc:
        print(f"exeunit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"exeunit: {exc}", file=sys.stderr)
        return 1
    finally:
        if home is not None:
            home.close()
    return 0


def ps(args: argparse.Namespace) -> int:
    """Prints the daemon's activities, as its admin socket lists them."""
    path = (args.state_dir or DEFAULT_HOMES / args.name) / ADMIN_SOCKET
    if not path.exists():
        print(f"exeunit ps: no daemon's admin socket at {path}; is `exeunit serve` running with that "
              "--state-dir (or --name)?", file=sys.stderr)
        return 1
    try:
        rows = asyncio.run(listing.list_activities(path))
    except listing.Unreachable as exc:
        print(f"exeunit ps: {exc}", file=sys.stderr)
        return 1
    print("\n".join(listing.as_json(rows) if args.json else listing.as_table(rows)))
    return 0


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]  # type: ignore[no-any-return]


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None,
               environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """The command line, over the environment's EXEUNIT_* settings, over the --config file's.
    ConfigError for a wrong setting in the file or the environment."""
    first, _ = parser.parse_known_args(argv)
    if first.command == "serve":
        serve_parser = _subcommand(parser, "serve")
        config_file = first.config or (Path(environ[config.CONFIG_ENV]) if environ.get(config.CONFIG_ENV) else None)
        serve_parser.set_defaults(**config.defaults_from(serve_parser, config_file, environ))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except config.ConfigError as exc:
        print(f"exeunit serve: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(args)
    if args.command == "ps":
        return ps(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
