#!/usr/bin/env bash
# Install the peer (Rust) routers used for comparison runs against `headway sim`:
#   - vllm-router   (PyPI `vllm-router`,   console script `vllm-router`)
#   - sglang-router (PyPI `sglang-router`, console script `sglang-router launch ...`)
#
# They go into a cached virtualenv OUTSIDE the project so that the project's own
# environment never sees them:
#   default: ${XDG_CACHE_HOME:-$HOME/.cache}/headway/peer-routers-venv
#   override: HEADWAY_PEERS_VENV=/some/dir
#
# Idempotent: if the venv already holds the pinned versions, nothing is installed.
# On success prints, one per line (machine-parsable KEY=VALUE):
#   HEADWAY_PEERS_VENV=<venv>
#   VLLM_ROUTER=<venv>/bin/vllm-router
#   SGLANG_ROUTER=<venv>/bin/sglang-router
#   VLLM_ROUTER_MODULE=<venv>/bin/python -m vllm_router.launch_router
#   SGLANG_ROUTER_MODULE=<venv>/bin/python -m sglang_router.launch_router
# and exits 0. On failure prints a message to stderr and exits non-zero.
#
# Usage: scripts/install_peer_routers.sh [--check] [--force]
#   --check  only verify the installation (exit 1 if missing/wrong); never installs
#   --force  recreate the venv from scratch
# Env: PYTHON (interpreter used to create the venv, default python3).
#
# See docs/peer-routers.md for how to run each router against the simulator.
set -euo pipefail

VLLM_ROUTER_VERSION="0.1.17"
SGLANG_ROUTER_VERSION="0.3.2"

VENV="${HEADWAY_PEERS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/headway/peer-routers-venv}"
PYTHON_BIN="${PYTHON:-python3}"
MODE=install
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "install_peer_routers.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

die() { echo "install_peer_routers.sh: ERROR: $*" >&2; exit 1; }

# True when the venv has exactly the pinned versions and both executables.
installed_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  [ -x "$VENV/bin/vllm-router" ] || return 1
  [ -x "$VENV/bin/sglang-router" ] || return 1
  "$VENV/bin/python" - "$VLLM_ROUTER_VERSION" "$SGLANG_ROUTER_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
want_vllm, want_sglang = sys.argv[1], sys.argv[2]
assert version("vllm-router") == want_vllm, version("vllm-router")
assert version("sglang-router") == want_sglang, version("sglang-router")
# Importing the Rust extensions proves the wheels match this platform.
import vllm_router_rs  # noqa: F401
import sglang_router.sglang_router_rs  # noqa: F401
PY
}

print_paths() {
  echo "HEADWAY_PEERS_VENV=$VENV"
  echo "VLLM_ROUTER=$VENV/bin/vllm-router"
  echo "SGLANG_ROUTER=$VENV/bin/sglang-router"
  echo "VLLM_ROUTER_MODULE=$VENV/bin/python -m vllm_router.launch_router"
  echo "SGLANG_ROUTER_MODULE=$VENV/bin/python -m sglang_router.launch_router"
}

if [ "$FORCE" = 0 ] && installed_ok; then
  print_paths
  exit 0
fi
if [ "$MODE" = check ]; then
  die "peer routers not installed in $VENV (want vllm-router==$VLLM_ROUTER_VERSION, sglang-router==$SGLANG_ROUTER_VERSION); run scripts/install_peer_routers.sh"
fi

command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "python interpreter '$PYTHON_BIN' not found (set PYTHON=...)"

if [ "$FORCE" = 1 ] || [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")" || die "cannot create $(dirname "$VENV")"
  "$PYTHON_BIN" -m venv "$VENV" || die "'$PYTHON_BIN -m venv $VENV' failed (is the python3-venv package installed?)"
fi

echo "install_peer_routers.sh: installing vllm-router==$VLLM_ROUTER_VERSION sglang-router==$SGLANG_ROUTER_VERSION into $VENV" >&2
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "vllm-router==$VLLM_ROUTER_VERSION" "sglang-router==$SGLANG_ROUTER_VERSION" >&2; then
  die "pip install of vllm-router==$VLLM_ROUTER_VERSION / sglang-router==$SGLANG_ROUTER_VERSION into $VENV failed (needs PyPI access and a manylinux x86_64/aarch64 platform)"
fi

installed_ok || die "install finished but the routers do not import/run from $VENV (see pip output above)"
print_paths
