"""The helper module yapapi's examples share, rewritten for this library: the same names, so the
scripts beside it read as yapapi scripts with the import renamed."""

import argparse
import asyncio
import signal
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from requestor import Golem, NoPaymentAccountError
from requestor import __version__ as requestor_version
from requestor import windows_event_loop_fix
from requestor.log import enable_default_logger

TEXT_COLOR_YELLOW = "\033[33;1m"
TEXT_COLOR_DEFAULT = "\033[0m"


def build_parser(description: str) -> argparse.ArgumentParser:
    stamp = datetime.now(tz=timezone.utc).strftime("%Y%m%d_%H%M%S")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--payment-driver", "--driver", help="payment driver name (accepted, not used)")
    parser.add_argument("--payment-network", "--network", help="payment network name (accepted, not used)")
    parser.add_argument("--subnet-tag", default="public", help="subnet name")
    parser.add_argument("--log-file", default=str(Path(tempfile.gettempdir()) / f"requestor_{stamp}.log"))
    return parser


def print_env_info(golem: Golem) -> None:
    print(f"requestor version: {requestor_version}\n"
          f"Using subnet: {golem.subnet_tag}, payment driver: {golem.payment_driver}, "
          f"and network: {golem.payment_network}\n")


def run_golem_example(example_main, log_file=None) -> None:
    windows_event_loop_fix()
    if log_file:
        enable_default_logger(log_file=log_file, debug_activity_api=True, debug_market_api=True,
                              debug_payment_api=True, debug_net_api=True)
    loop = asyncio.new_event_loop()
    task = loop.create_task(example_main)

    def interrupted() -> None:
        # Ctrl-C cancels the example's task on the loop, instead of a KeyboardInterrupt raised in
        # whatever callback runs at that moment (a proxy relaying a connection, say).
        print(f"{TEXT_COLOR_YELLOW}Shutting down gracefully...{TEXT_COLOR_DEFAULT}", flush=True)
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    except NoPaymentAccountError as error:
        print(f"No payment account for driver `{error.required_driver}` and network `{error.required_network}`")
    except KeyboardInterrupt:
        print(f"{TEXT_COLOR_YELLOW}Shutting down gracefully...{TEXT_COLOR_DEFAULT}")
        task.cancel()
        try:
            loop.run_until_complete(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass

TEXT_COLOR_RED = "\033[31;1m"
TEXT_COLOR_CYAN = "\033[36m"
TEXT_COLOR_MAGENTA = "\033[35m"
TEXT_COLOR_GREEN = "\033[32m"
