"""`exeunit`'s command line: its commands, flags and their help, and the flags' value types.

Flags are grouped as `exeunit serve --help` shows them; each group is one function here.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from exeunit import __version__
from exeunit.app import logs
from exeunit.domain.resources import Resources
from exeunit.domain.settings import DEFAULT_ACTIVITY_PRESET, DEFAULT_OFFERED_IMAGES
from exeunit.v1.conventions import CUSTOM_COUNTER, GIB, is_chain_address

DESCRIPTION = """\
ExeUnit provider daemon: offers this host's capacity to requestors over gRPC and runs each
activity as one hardened Docker container standing in for a Golem VM.
"""

SERVE_EPILOG = """\
examples:
  exeunit serve --name provider-a --subnet public
  exeunit serve --listen 127.0.0.1:50052 --name cheap --price-duration-sec 0.0001
  exeunit serve --listen 0.0.0.0:50051 --auth-token-file /etc/exeunit/token

Beyond loopback the daemon speaks TLS only, as the key in its home (`exeunit id` prints the
provider id requestors pin). Requestors prove who they are with their own keys on every call; a
token (--auth-token-file) is an extra gate for private providers, not needed for strangers.
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
    _identity_options(serve)
    _capacity_options(serve)
    _image_options(serve)
    _pricing_options(serve)
    _payment_options(serve)
    _agreement_options(serve)
    _storage_options(serve)
    _limit_options(serve)
    ps = commands.add_parser(
        "ps", help="list the activities a daemon on this host runs (every requestor's)",
        description="Lists a daemon's activities through its admin socket (STATE_DIR/admin.sock, which only "
                    "the daemon's user can open): requestor, state, image, age and usage of each.",
    )
    _home_arguments(ps)
    ps.add_argument("--json", action="store_true", help="one JSON object per activity instead of a table")
    ident = commands.add_parser(
        "id", help="print the provider id (made with the home's key on first use)",
        description="Prints the provider id of a daemon's home: derived from the provider's key "
                    "(STATE_DIR/provider-key.pem), which is made, with the home, when there is none yet.",
    )
    _home_arguments(ident)
    serve.add_argument("--log-format", default="logfmt", choices=logs.FORMATS,
                       help="one event per line as logfmt (key=value, quoted where needed) or as JSON objects; "
                            "times are RFC 3339 UTC (default: %(default)s)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log verbosity (default: %(default)s)")
    return parser


def _home_arguments(command: argparse.ArgumentParser) -> None:
    """How a command that reads a daemon's home finds it: as `serve` was told, or by its name."""
    command.add_argument("--state-dir", type=Path, metavar="DIR", help="the daemon's home (default: /var/lib/exeunit/NAME)")
    command.add_argument("--name", default=socket.gethostname(), help="the daemon's --name, to find its home")


def _identity_options(serve: argparse.ArgumentParser) -> None:
    """Who the provider is, where it listens, who may call it."""
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
                       help="the provider id this daemon must have: refuses to start on a home with another one "
                            "(ids are derived from the home's key; `exeunit id` prints it)")
    ident.add_argument("--auth-token-file", type=Path, metavar="FILE",
                       help="file holding a shared secret callers must send as 'authorization: Bearer <secret>'")
    ident.add_argument("--keep-activities-on-shutdown", action="store_true",
                       help="on SIGTERM, leave activities running for the next daemon on this --state-dir to take "
                            "up (to upgrade the daemon under running services); without it they end")
    ident.add_argument("--tls-on-loopback", action="store_true",
                       help="speak TLS on a loopback --listen too (beyond loopback it always does)")
    ident.add_argument("--overlay-listen", type=listen_address, metavar="HOST:PORT",
                       help="where the other providers of a requestor's network that spans several reach this "
                            "one's part of it (TLS 1.3 links authenticated by provider key; the offer says the "
                            "port). Default: --listen's host, a free port")
    ident.add_argument("--overlay-peer-ranges", type=cidr_list, default="", metavar="CIDR[,CIDR...]",
                       help="the only address ranges this provider's overlay dials peers in (say, your LAN's); "
                            "default: any address but loopback, link-local, multicast and this host's own")
    ident.add_argument("--announce", action="store_true",
                       help="publish this provider on the LAN with DNS-SD over mDNS (_exeunit._tcp), with its id, so "
                            "requestors find it with GOLEM_PROVIDERS=mdns")
    ident.add_argument("--insecure-allow-remote", action="store_true", help=argparse.SUPPRESS)  # before TLS


def _capacity_options(serve: argparse.ArgumentParser) -> None:
    """What the provider offers and runs."""
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
    cap.add_argument("--activity-preset", type=activity_preset, default="cpu=1,memory-gib=2,storage-gib=4",
                     metavar="cpu=N,memory-gib=GIB,storage-gib=GIB",
                     help="what every agreement's activities get at least, each field capped by the capacity "
                          "(a demand asking more gets what it asks): their containers' cpu threads, memory "
                          "limit and storage quota, reserved from the capacity and stated in the offer, as "
                          "a Golem provider's preset; fields left out keep their default; `none`: only the "
                          "demand's minimums (default: cpu=1,memory-gib=2,storage-gib=4)")
    cap.add_argument("--test-counters-runtime", action="store_true",
                     help="also offer Golem's test runtime `test-counters` (the base image; `sleep MS` is "
                          f"waited out by the daemon and counted in {CUSTOM_COUNTER}), for yapapi's "
                          "custom-usage-counter example")
    cap.add_argument("--capability", action="append", default=[], metavar="NAME",
                     help="advertise a runtime capability (repeatable)")


def _image_options(serve: argparse.ArgumentParser) -> None:
    """Which images requestors may run, and how urls are fetched."""
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
    images.add_argument("--image-fetches-per-requestor", type=positive(int), default=2, metavar="N",
                        help="image urls one requestor may have fetched and loaded at once; more are refused "
                             "(default: %(default)s)")
    images.add_argument("--max-image-gib", type=positive(float), default=4.0, metavar="GIB",
                        help="largest archive, and largest unpacked image, fetched for a requestor; the "
                             "agreement's storage caps it too (default: %(default)s)")


def _pricing_options(serve: argparse.ArgumentParser) -> None:
    """What an activity costs."""
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


def _payment_options(serve: argparse.ArgumentParser) -> None:
    """How the provider is paid: where (a chain and token), and the deadlines it offers."""
    pay = serve.add_argument_group(
        "payment (debit notes and invoices are always issued; with a platform they are paid on its chain)")
    pay.add_argument("--payment-platform", default="", metavar="NAME",
                     help="the platform paid on, as Golem names them: erc20-<network>-<token>, e.g. "
                          "erc20-polygon-glm; needs the four flags below (default: none, documents are only "
                          "accounted)")
    pay.add_argument("--payment-address", default="", type=chain_address, metavar="0xADDRESS",
                     help="this provider's address on that chain, where payments go")
    pay.add_argument("--payment-token-address", default="", type=chain_address, metavar="0xADDRESS",
                     help="the token's ERC-20 contract on that chain")
    pay.add_argument("--payment-chain-id", default=0, type=positive(int), metavar="N",
                     help="the chain's id (137 Polygon, 17000 Holesky); the endpoint must serve it")
    pay.add_argument("--payment-rpc-url", default="", metavar="URL",
                     help="the chain's JSON-RPC endpoint, where this provider reads payments itself")
    pay.add_argument("--payment-confirmations", default=1, type=positive(int), metavar="N",
                     help="blocks on top of a payment's before it counts (default: %(default)s)")
    pay.add_argument("--debit-note-interval", default=120.0, type=positive(float), metavar="SECONDS",
                     help="a debit note this often while an agreement runs (default: %(default)s)")
    pay.add_argument("--min-debit-note-interval", default=10.0, type=positive(float), metavar="SECONDS",
                     help="the shortest interval a demand may ask for (default: %(default)s)")
    pay.add_argument("--payment-timeout", default=120.0, type=positive(float), metavar="SECONDS",
                     help="mid-agreement payments: a payable debit note is due this long after it is issued; "
                          "offered, used when a demand asks for it (default: %(default)s)")
    pay.add_argument("--min-payment-timeout", default=30.0, type=positive(float), metavar="SECONDS",
                     help="the shortest payment timeout a demand may ask for (default: %(default)s)")
    pay.add_argument("--debit-note-accept-timeout", default=240.0, type=positive(float), metavar="SECONDS",
                     help="a debit note not accepted within this ends its agreement, DebitNotesDeadline "
                          "(default: %(default)s)")


def chain_address(text: str) -> str:
    if text and not is_chain_address(text):  # "": the flag's default, none given
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: 0x and 40 hex digits")
    return text


def _agreement_options(serve: argparse.ArgumentParser) -> None:
    """How long agreements live."""
    terms = serve.add_argument_group("agreement terms (capacity held by an agreement comes back)")
    terms.add_argument("--max-agreement-hours", type=positive(float), default=24.0, metavar="HOURS",
                       help="refuse demands whose expiration is further away than this (default: %(default)s)")
    terms.add_argument("--agreement-idle-seconds", type=positive(float), default=300.0, metavar="SECONDS",
                       help="end an agreement that has had no live activity for this long (default: %(default)s)")
    terms.add_argument("--forget-ended-after", type=positive(float), default=900.0, metavar="SECONDS",
                       help="ended agreements and activities answer status calls this long, then are forgotten "
                            "(default: %(default)s)")


def _storage_options(serve: argparse.ArgumentParser) -> None:
    """Where activities' volumes live."""
    store = serve.add_argument_group("storage (each activity's volumes: a filesystem of its agreement's size)")
    store.add_argument("--storage-dir", type=Path, metavar="DIR",
                       help="where activities' filesystems live (in DIR/PROVIDER_ID); the offered storage is what "
                            "is free here (default: STATE_DIR/storage)")
    store.add_argument("--unenforced-storage", action="store_true",
                       help="where loop-mounting is impossible (no root, no loop devices) or the engine's storage "
                            "driver is not overlay2, keep volumes in plain directories and writable roots in the "
                            "engine's own place, with NO size limit, instead of refusing to start")


def _limit_options(serve: argparse.ArgumentParser) -> None:
    """What one activity and one requestor may hold."""
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
    limits.add_argument("--tunnels-per-requestor", type=positive(int), default=16, metavar="N",
                        help="TCP connections into all of one requestor's activities at once; each holds up to "
                             "about 2 MiB while its requestor does not read (default: %(default)s)")
    limits.add_argument("--streams-per-requestor", type=positive(int), default=256, metavar="N",
                        help="batch event streams and activity watches one requestor has open at once "
                             "(default: %(default)s)")
    limits.add_argument("--networks-per-requestor", type=positive(int), default=8, metavar="N",
                        help="private networks (Golem's VPN) one requestor may have on this provider at once; "
                             "each lives while the requestor has an agreement here (default: %(default)s)")
    limits.add_argument("--peers-per-network", type=positive(int), default=64, metavar="N",
                        help="other providers one network spanning providers may name (default: %(default)s)")
    limits.add_argument("--overlay-macs-per-network", type=positive(int), default=4096, metavar="N",
                        help="MAC addresses the overlay learns per spanning network; past it, frames to a new "
                             "address go to every peer of the network (default: %(default)s)")
    limits.add_argument("--relay-queue-mib", type=positive(int), default=64, metavar="MIB",
                        help="relayed bytes waiting for one requestor's RelayFrames stream; past it a relayed "
                             "TLS session is reset, never cut (default: %(default)s)")
    limits.add_argument("--batches-kept", type=positive(int), default=256, metavar="N",
                        help="finished batches kept per activity for GetBatch and replay, in memory and in the "
                             "state directory; older ones are forgotten (default: %(default)s)")
    limits.add_argument("--result-output-cap-kib", type=positive(int), default=1024, metavar="KIB",
                        help="stdout/stderr kept per command for its result; the stream has all (default: %(default)s)")
    limits.add_argument("--replay-window-mib", type=positive(int), default=32, metavar="MIB",
                        help="output retained per batch, on disk, for clients that reconnect (default: %(default)s)")
    limits.add_argument("--output-memory-kib", type=positive(int), default=4096, metavar="KIB",
                        help="output one activity holds in memory for its readers; the rest is read back from "
                             "its journal on disk (default: %(default)s)")
    limits.add_argument("--output-memory-per-requestor-mib", type=positive(int), default=16, metavar="MIB",
                        help="output all of one requestor's activities hold in memory together (default: %(default)s)")
    limits.add_argument("--journal-mib-per-activity", type=positive(int), default=512, metavar="MIB",
                        help="one activity's batch journals on disk (events and results, in STATE_DIR/journals); "
                             "past it its oldest finished batches are forgotten; at least --replay-window-mib + 8 "
                             "(default: %(default)s)")
    limits.add_argument("--batch-ids-remembered", type=positive(int), default=1_000_000, metavar="N",
                        help="ids of an activity's forgotten batches it remembers (8 bytes each, in memory and in "
                             "its journals), so that a batch id never runs twice; an activity that has run this "
                             "many batches refuses more (default: %(default)s)")
    limits.add_argument("--activities-per-agreement", type=positive(int), default=256, metavar="N",
                        help="activities one agreement may hold one after another; more are refused "
                             "RESOURCE_EXHAUSTED (each ended one is kept a while and billed in the agreement; "
                             "default: %(default)s)")
    limits.add_argument("--batches-queued", type=positive(int), default=64, metavar="N",
                        help="batches of one activity queued or running at once; more are refused "
                             "RESOURCE_EXHAUSTED (default: %(default)s)")


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


PRESET_FIELDS = {"cpu": "cpu_threads", "memory-gib": "memory_bytes", "storage-gib": "storage_bytes"}


def activity_preset(text: str) -> Resources:
    """An argparse type: `cpu=N,memory-gib=GIB,storage-gib=GIB` (any of them; the others keep
    DEFAULT_ACTIVITY_PRESET's), or `none` for no floor at all."""
    if text.strip() == "none":
        return Resources(0, 0, 0)
    given: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, equals, value = part.partition("=")
        if not equals or key.strip() not in PRESET_FIELDS:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not one of {', '.join(f'{k}=...' for k in PRESET_FIELDS)} (e.g. cpu=1,memory-gib=2)")
        key = key.strip()
        number = positive(int if key == "cpu" else float)(value.strip())
        given[PRESET_FIELDS[key]] = int(number) if key == "cpu" else int(number * GIB)
    return Resources(**{**vars(DEFAULT_ACTIVITY_PRESET), **given})


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


def cidr_list(text: str) -> str:
    """An argparse type: comma-separated CIDRs, as given (each checked)."""
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{part!r} is not a CIDR range, as 192.168.1.0/24 ({exc})") from None
    return text


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
