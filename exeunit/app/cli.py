"""`exeunit`: the provider daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from exeunit import errors
from exeunit.api.announce import announced_addresses
from exeunit.api.server import check_listen_address, serve_until_signalled
from exeunit.app import config, logs
from exeunit.app import ps as listing
from exeunit.app.assembly import activity_storage, assemble, measured_capacity
from exeunit.app.metrics import MetricsServer
from exeunit.app.options import build_parser, is_loopback
from exeunit.domain.payments import PaymentPlatform, PaymentSettings
from exeunit.domain.resources import LinearPricing, Resources, capped
from exeunit.domain.settings import DEFAULT_OFFERED_IMAGES, ActivityLimits, FetchPolicy, ImagePolicy, ProviderSettings
from exeunit.persistence import keys
from exeunit.persistence.home import Identity, ProviderHome, read_identity
from exeunit.persistence.store import StateStore
from exeunit.runtime.docker import DockerRuntime
from exeunit.runtime.memory import limit_arenas
from exeunit.v1.buffers import keep_transfer_buffers
from exeunit.v1.conventions import DOCKER_VM_RUNTIME, GIB, TEST_COUNTERS_RUNTIME

DEFAULT_HOMES = Path("/var/lib/exeunit")  # a provider's home is DEFAULT_HOMES/NAME unless --state-dir
STATE_FILE = "state.sqlite3"  # in the home: what a restarted daemon recovers (exeunit.persistence.store)
ADMIN_SOCKET = "admin.sock"  # in the home: the operator's socket (exeunit ps)
JOURNAL_SLACK_MIB = 8  # beyond the replay window, a running batch's journal holds a segment and its results

log = logging.getLogger("exeunit")


def overlay_files(home: ProviderHome) -> tuple[str, str]:
    """(certificate, key) files the overlay authenticates this provider with; ("", "") for a home
    whose id predates keys (its peers could not tell it from its key: its networks stay here)."""
    key = keys.load_or_create(home.identity.key_file)
    if keys.provider_id_of(key.public_key()) != home.identity.provider_id:
        log.warning("event=overlay_off reason=%r", "this home's provider id is not derived from its key; networks "
                    "here cannot span providers")
        return "", ""
    certificate = home.path / keys.CERTIFICATE_FILE
    keys.tls_credentials(key, certificate)
    return str(certificate), str(home.identity.key_file)


def provider_settings(args: argparse.Namespace, identity: Identity, storage_dir: Path,
                      overlay: tuple[str, str] = ("", "")) -> ProviderSettings:
    measured = measured_capacity(storage_dir)
    capacity = Resources(
        cpu_threads=int(min(measured.cpu_threads, args.max_cpu_threads or measured.cpu_threads) * args.cpu_overcommit),
        memory_bytes=min(measured.memory_bytes, int((args.max_memory_gib or 1e9) * GIB)),
        storage_bytes=min(measured.storage_bytes, int((args.max_storage_gib or 1e9) * GIB)),
    )
    return ProviderSettings(
        overlay_listen=(args.overlay_listen or f"{args.listen.rpartition(':')[0]}:0") if overlay[0] else "",
        overlay_certificate_file=overlay[0],
        overlay_key_file=overlay[1],
        overlay_peer_ranges=args.overlay_peer_ranges,
        provider_id=identity.provider_id,
        home_id=identity.home_id,
        name=args.name,
        subnet_tag=args.subnet,
        pricing=LinearPricing(args.price_start, args.price_cpu_sec, args.price_duration_sec, args.currency,
                              dict(args.price_per_unit)),
        runtimes=(DOCKER_VM_RUNTIME, TEST_COUNTERS_RUNTIME) if args.test_counters_runtime else (DOCKER_VM_RUNTIME,),
        capacity=capacity,
        default_allotment=Resources(1, int(args.default_memory_gib * GIB), int(args.default_storage_gib * GIB)),
        activity_preset=capped(args.activity_preset, capacity),
        capabilities=tuple(args.capability),
        images=ImagePolicy(
            offered=(*DEFAULT_OFFERED_IMAGES, *args.offer_image),
            fetch=FetchPolicy(
                enabled=not args.no_image_urls,
                file_root=args.image_dir,
                allow_private_hosts=args.allow_private_image_hosts,
                max_bytes=int(args.max_image_gib * GIB),
            ),
            fetches_per_requestor=args.image_fetches_per_requestor,
        ),
        max_agreement_seconds=args.max_agreement_hours * 3600,
        agreement_idle_seconds=args.agreement_idle_seconds,
        ended_retention_seconds=args.forget_ended_after,
        payment=payment_settings(args),
    )


def payment_settings(args: argparse.Namespace) -> PaymentSettings:
    """The --payment-* flags; InvalidArgument naming what is missing for a platform."""
    platforms: tuple[PaymentPlatform, ...] = ()
    chain_flags = {"--payment-address": args.payment_address, "--payment-token-address": args.payment_token_address,
                   "--payment-chain-id": args.payment_chain_id, "--payment-rpc-url": args.payment_rpc_url}
    if args.payment_platform:
        missing = [flag for flag, value in chain_flags.items() if not value]
        if missing:
            raise errors.InvalidArgument(f"--payment-platform {args.payment_platform} needs {', '.join(missing)} too")
        platforms = (PaymentPlatform(args.payment_platform.lower(), int(args.payment_chain_id),
                                     args.payment_token_address, args.payment_address, args.payment_confirmations),)
    elif any(chain_flags.values()):
        raise errors.InvalidArgument("--payment-address, --payment-token-address, --payment-chain-id and "
                                     "--payment-rpc-url go with --payment-platform; give it, or none of them")
    return PaymentSettings(
        platforms=platforms, debit_note_interval_seconds=args.debit_note_interval,
        min_debit_note_interval_seconds=min(args.min_debit_note_interval, args.debit_note_interval),
        payment_timeout_seconds=args.payment_timeout,
        min_payment_timeout_seconds=min(args.min_payment_timeout, args.payment_timeout),
        accept_timeout_seconds=args.debit_note_accept_timeout,
    )


def activity_limits(args: argparse.Namespace) -> ActivityLimits:
    return ActivityLimits(
        pids_limit=args.pids_limit,
        result_output_cap=args.result_output_cap_kib * 1024,
        batches_kept=args.batches_kept,
        tunnels_per_activity=args.tunnels_per_activity,
        tunnels_per_requestor=args.tunnels_per_requestor,
        streams_per_requestor=args.streams_per_requestor,
        networks_per_requestor=args.networks_per_requestor,
        peers_per_network=args.peers_per_network,
        overlay_macs_per_network=args.overlay_macs_per_network,
        relay_queue_bytes=args.relay_queue_mib << 20,
        replay_window_bytes=args.replay_window_mib << 20,
        output_memory_bytes=args.output_memory_kib << 10,
        output_memory_per_requestor_bytes=args.output_memory_per_requestor_mib << 20,
        journal_bytes_per_activity=args.journal_mib_per_activity << 20,
        batches_queued=args.batches_queued,
        activities_per_agreement=args.activities_per_agreement,
        batch_ids_remembered=args.batch_ids_remembered,
        transfers_per_activity=args.transfers_per_activity,
        transfers_per_requestor=args.transfers_per_requestor,
        transfer_idle_seconds=args.transfer_idle_seconds,
    )


def storage_dir(args: argparse.Namespace, home: ProviderHome) -> Path:
    """Where this provider's activity filesystems go: under its home, or its own directory in the
    operator's --storage-dir."""
    return args.storage_dir / home.identity.provider_id if args.storage_dir else home.path / "storage"


def read_token(args: argparse.Namespace) -> str | None:
    """The --auth-token-file's secret; ValueError saying what is wrong with the file."""
    if not args.auth_token_file:
        return None
    try:
        token = args.auth_token_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --auth-token-file: {exc}") from None
    if not token:
        raise ValueError(f"{args.auth_token_file} is empty; put a secret in it")
    return token


def serve(args: argparse.Namespace) -> int:
    limit_arenas()  # before any thread of ours allocates
    keep_transfer_buffers()
    logs.configure(args.log_level, args.log_format)
    if args.cpu_overcommit < 1:  # positive() took care of the rest
        print("exeunit: --cpu-overcommit must be at least 1", file=sys.stderr)
        return 2
    if args.journal_mib_per_activity < args.replay_window_mib + JOURNAL_SLACK_MIB:
        print(f"exeunit: --journal-mib-per-activity must be at least --replay-window-mib + {JOURNAL_SLACK_MIB} "
              f"({args.replay_window_mib + JOURNAL_SLACK_MIB}): a running batch's journal holds that much",
              file=sys.stderr)
        return 2
    try:
        token = read_token(args)
    except ValueError as exc:
        print(f"exeunit: {exc}", file=sys.stderr)
        return 2
    announce = None
    if args.announce:
        try:
            announce = announced_addresses(args.listen.rpartition(":")[0])
        except ValueError as exc:
            print(f"exeunit: {exc}", file=sys.stderr)
            return 2
    if args.insecure_allow_remote:
        log.warning("event=flag_ignored flag=--insecure-allow-remote reason=%r",
                    "no longer needed: beyond loopback the daemon speaks TLS and callers prove their keys")
    home = None
    try:
        check_listen_address(args.listen)
        if args.metrics_listen:
            check_listen_address(args.metrics_listen)
        home = ProviderHome.open(home_path(args), args.provider_id)  # before anything else
        runtime = DockerRuntime()
        base = storage_dir(args, home)
        settings = provider_settings(args, home.identity, base, overlay_files(home))
        storage = activity_storage(
            base, runtime, args.unenforced_storage,
            "Run as root on a host with loop devices, or pass --unenforced-storage to run with volumes of unlimited size",
        )
        state = StateStore(home.path / STATE_FILE)
        provider = assemble(settings, activity_limits(args), storage, runtime, state, home.path / "journals",
                            keys.load_or_create(home.identity.key_file), args.payment_rpc_url)
        exporter = None
        if args.metrics_listen:
            host, _, port = args.metrics_listen.rpartition(":")
            exporter = MetricsServer(provider, host, int(port))
            log.info("event=metrics_listening address=%s port=%d", args.metrics_listen, exporter.port)
        try:
            tls = None
            if args.tls_on_loopback or not is_loopback(args.listen):
                tls = keys.tls_credentials(keys.load_or_create(home.identity.key_file),
                                           home.path / keys.CERTIFICATE_FILE)
            asyncio.run(serve_until_signalled(provider, args.listen, token, args.keep_activities_on_shutdown,
                                              home.path / ADMIN_SOCKET, tls, announce))
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


def home_path(args: argparse.Namespace) -> Path:
    """The daemon's home: --state-dir, or the default home of its --name."""
    return args.state_dir or DEFAULT_HOMES / args.name


def provider_id(args: argparse.Namespace) -> int:
    """Prints the home's provider id, making the home (and its key) when there is none."""
    path = home_path(args)
    try:
        identity = read_identity(path)
        if identity is None:
            home = ProviderHome.open(path)
            identity = home.identity
            home.close()
    except errors.ExeUnitError as exc:
        print(f"exeunit id: {exc}", file=sys.stderr)
        return 1
    print(identity.provider_id)
    return 0


def ps(args: argparse.Namespace) -> int:
    """Prints the daemon's activities, as its admin socket lists them."""
    path = home_path(args) / ADMIN_SOCKET
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
    if args.command == "id":
        return provider_id(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
