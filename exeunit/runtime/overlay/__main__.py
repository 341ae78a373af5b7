"""`python -m exeunit.runtime.overlay --listen HOST:PORT --control-fd N`: the overlay agent, as
the daemon starts it (exeunit.runtime.overlay.process)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from exeunit.runtime.overlay.agent import Agent, Control


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m exeunit.runtime.overlay", description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where peers connect (port 0: any)")
    parser.add_argument("--control-fd", type=int, required=True, help="the daemon's SOCK_SEQPACKET socket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="overlay %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    listener = socket.create_server((host.strip("[]"), int(port)), backlog=64, reuse_port=False)
    control = Control(socket.socket(fileno=args.control_fd))
    Agent(listener, control).serve()
    os._exit(0)  # the daemon is gone: no state to flush, and threads blocked in reads need not be waited for


if __name__ == "__main__":
    main()
