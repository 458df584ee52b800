# Sourced by run.sh and test.sh: installs what a fresh Debian machine lacks, as root.
#   ensure_packages PKG...   apt-get install the Debian packages not yet installed
#   ensure_venv [EXTRA]      ./.venv with netio-exporter installed (editable, with the pip extra); the
#                            install compiles the eBPF objects into exporter/bpf/ (setup.py), again
#                            whenever the metadata or an eBPF source changed since the last install

ensure_packages() {
    missing=""
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
    done
    [ -z "$missing" ] && return 0
    echo "netio-exporter: installing Debian packages:$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

ensure_venv() {
    extra="${1:-}"
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
        ensure_packages python3-venv
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    stamp=".venv/.installed${extra:+-$extra}"
    if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py exporter/bpf -newer "$stamp" \
            \( -name pyproject.toml -o -name setup.py -o -name '*.bpf.c' -o -name '*.h' \) -print)" ]; then
        .venv/bin/pip install -q -e ".${extra:+[$extra]}"
        touch "$stamp"
    fi
}
