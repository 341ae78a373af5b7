#!/usr/bin/env python3
"""Starts or stops the observation simulator in the background."""

import argparse
import os
import signal
import subprocess
import sys

PID_FILE = "/var/run/simulate_observations.pid"


def start() -> None:
    if os.path.exists(PID_FILE):
        sys.exit("the simulation is already running")
    process = subprocess.Popen(
        [sys.executable, "/golem/run/simulate_observations.py"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    with open(PID_FILE, "w") as out:
        out.write(str(process.pid))
    print(f"simulation started (pid {process.pid})")


def stop() -> None:
    try:
        with open(PID_FILE) as source:
            pid = int(source.read())
    except FileNotFoundError:
        sys.exit("the simulation is not running")
    os.kill(pid, signal.SIGTERM)
    os.remove(PID_FILE)
    print(f"simulation stopped (pid {pid})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--start", action="store_true")
    group.add_argument("--stop", action="store_true")
    args = parser.parse_args()
    start() if args.start else stop()
