#!/usr/bin/env bash
# The main job: sets up the machine (scripts/setup.sh), then runs the seed's tutorial service on
# an embedded provider (a provider daemon started inside the requestor, on loopback, against
# the local Docker engine). Extra arguments go to the example, for example: --duration 60.
# DEMO=hello_world runs the hello-world service instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
example=${DEMO:-simple_service}
printf '\n==> Running examples/%s.py\n' "$example"
exec "${PYTHON:-python3}" "examples/${example}.py" "$@"
