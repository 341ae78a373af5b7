#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest,
# for example: scripts/test.sh -k transfer, or scripts/test.sh --run-slow for the slow cases too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
printf '\n==> Tests\n'
exec "${PYTHON:-python3}" -m pytest "$@"
