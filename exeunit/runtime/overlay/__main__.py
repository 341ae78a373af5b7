"""`python -m exeunit.runtime.overlay --listen HOST:PORT --control-fd N --certificate F --key F`:
the overlay agent, as the daemon starts it (exeunit.runtime.overlay.process)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from exeunit.runtime.overlay.addresses import PeerAddressPolicy, parse_ranges
from exeunit.runtime.overlay.agent import DEFAULT_MACS_PER_NETWORK, Agent, Control
from exeunit.runtime.overlay.direct import DEFAULT_HANDSHAKES_PER_SOURCE
from exeunit.runtime.overlay.tls import OverlayIdentity


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m exeunit.runtime.overlay", description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where peers connect (port 0: any)")
    parser.add_argument("--control-fd", type=int, required=True, help="the daemon's SOCK_SEQPACKET socket")
    parser.add_argument("--certificate", required=True, help="the provider's certificate (PEM)")
    parser.add_argument("--key", required=True, help="the provider's private key (PEM)")
    parser.add_argument("--peer-ranges", default="", help="CIDRs peers may be dialled in (comma-separated; any)")
    parser.add_argument("--macs-per-network", type=int, default=DEFAULT_MACS_PER_NETWORK)
    parser.add_argument("--handshakes-per-source", type=int, default=DEFAULT_HANDSHAKES_PER_SOURCE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="overlay %(levelname)s %(message)s")
    control = Control(socket.socket(fileno=args.control_fd))
    try:
        host, _, port = args.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, int(port)), family=family, backlog=64, reuse_port=False,
                                        dualstack_ipv6=family == socket.AF_INET6 and host == "::")
        identity = OverlayIdentity.load(args.certificate, args.key)
        policy = PeerAddressPolicy(host, parse_ranges(args.peer_ranges))
    except (OSError, ValueError) as exc:
        control.status(op="failed", error=f"{type(exc).__name__}: {exc}")
        os._exit(1)
    Agent(listener, control, identity, policy, args.macs_per_network, args.handshakes_per_source).serve()
    os._exit(0)  # the daemon is gone: no state to flush, and threads blocked in reads need not be waited for


if __name__ == "__main__":
    main()
