#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine (run as root; there is no systemd):
#   1. the Python packages (this project, editable, with its test extra),
#   2. a Docker engine: installs Debian's docker.io when dockerd is missing, starts dockerd (with
#      --userns-remap=default, so container root is not host root) when none answers, and waits,
#   3. the local chain the payment tests run on (chain/): anvil, solc-js and OpenZeppelin's
#      contracts from the npm registry, and the test token compiled,
#   4. debootstrap and the images (images/build.py; images that exist are not rebuilt).
# Safe to run again: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/exeunit-dockerd.log}
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -q >/dev/null
    apt_updated=1
  fi
  apt-get install -y -q "$@" >/dev/null
}

engine_answers() {
  "$PYTHON" -c 'import docker; docker.from_env(timeout=5).ping()' >/dev/null 2>&1
}

engine_remaps_users() {
  "$PYTHON" -c 'import docker, sys; o = docker.from_env(timeout=5).info().get("SecurityOptions") or []; sys.exit(0 if any("name=userns" in x for x in o) else 1)'
}

step "Python packages"
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

step "Docker engine"
if engine_answers; then
  echo "a Docker engine answers"
  if ! engine_remaps_users; then
    echo "WARNING: it runs without --userns-remap: root in a container is root on this host." >&2
    echo "         Stop it and run this script again to start one with --userns-remap=default." >&2
  fi
else
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "installing Debian's docker.io..."
    apt_install docker.io
  fi
  # --userns-remap=default: root in a container is an unprivileged uid on the host (dockerd creates
  # the `dockremap` user and its subordinate id range); the engine keeps a separate image store.
  # --live-restore: containers keep running while dockerd restarts, so activities survive it.
  echo "starting dockerd with user-namespace remapping (log: $DOCKERD_LOG)..."
  setsid nohup dockerd --userns-remap=default --live-restore >"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    engine_answers && break
    sleep 1
  done
  if ! engine_answers; then
    echo "dockerd did not come up within 60s; last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2
    exit 1
  fi
  echo "dockerd is up"
fi

step "Activity storage and network tools"
# Each activity's volumes are a loop-mounted ext4 file (exeunit/runtime/storage.py).
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v losetup >/dev/null 2>&1; then
  echo "installing e2fsprogs and mount..."
  apt_install e2fsprogs mount
fi
# Requestors' private networks are bridges in network namespaces of their own (exeunit/runtime/bridges.py).
if ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
  echo "installing iproute2 and util-linux (private networks between activities)..."
  apt_install iproute2 util-linux
fi
# Simulated hosts for the tests across machines use tc and nftables too (exeunit/testing/hosts.py).
if ! command -v tc >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
  echo "installing iproute2 and nftables (simulated hosts for the tests)..."
  apt_install iproute2 nftables
fi
# SRV discovery is tested against a real DNS server (tests/test_discovery.py).
if ! command -v dnsmasq >/dev/null 2>&1; then
  echo "installing dnsmasq (a DNS server for the discovery tests)..."
  apt_install dnsmasq-base
fi
if [ ! -e /dev/loop-control ]; then
  echo "WARNING: this kernel offers no loop devices; exeunit serve needs --unenforced-storage here" >&2
fi

step "Local chain for the payment tests (anvil, solc, the tGLM token)"
# npm packages only (exeunit/testing/chain.py runs them): anvil's binary comes in its platform
# package (@foundry-rs/anvil-linux-amd64) and solc-js carries its compiler. --ignore-scripts: no
# package runs code at install (anvil's postinstall would only fetch what its platform package has).
if ! command -v npm >/dev/null 2>&1; then
  echo "installing Debian's nodejs and npm..."
  apt_install nodejs npm
fi
# The lock is copied into node_modules after a good install: a copy equal to the lock means done
# (npm ci empties node_modules first, so an interrupted install leaves no copy behind).
if cmp -s chain/package-lock.json chain/node_modules/.installed-lock.json; then
  echo "chain/node_modules matches chain/package-lock.json"
else
  echo "installing chain/'s npm packages (npm ci)..."
  (cd chain && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  cp chain/package-lock.json chain/node_modules/.installed-lock.json
fi
if [ chain/build/TestGLM.json -nt chain/TestGLM.sol ] && [ chain/build/TestGLM.json -nt chain/compile.js ] \
   && [ chain/build/TestGLM.json -nt chain/node_modules/.installed-lock.json ]; then
  echo "chain/build/TestGLM.json is newer than its sources"
else
  echo "compiling chain/TestGLM.sol..."
  (cd chain && node compile.js >/dev/null)
fi

step "Images"
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap..."
  apt_install debootstrap
fi
"$PYTHON" images/build.py
