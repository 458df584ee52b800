#!/bin/sh
# Run netio-exporter from this checkout, installing it into ./.venv first if needed.
# Usage: ./run.sh -P --port 7070   (any netio-exporter flags; see ./run.sh --help)
set -eu
cd "$(dirname "$0")"
. scripts/setup.sh
ensure_packages iproute2 clang libbpf-dev  # clang and libbpf-dev build the eBPF programs (netstack, mac)
ensure_venv >&2
exec .venv/bin/netio-exporter "$@"
