#!/bin/sh
# Install what the tests need (Debian packages, ./.venv with the test extra), then run them as root.
# Tests make their own network namespaces; with CI set, a test that cannot run fails instead of skipping.
set -eu
cd "$(dirname "$0")"
. scripts/setup.sh
ensure_packages iproute2 nftables prometheus iperf3 libcap2-bin procps systemd clang libbpf-dev bpftool chromium chromium-driver \
    zstd openssl gcc util-linux
ensure_venv test
exec .venv/bin/python -m pytest -ra "$@" tests
