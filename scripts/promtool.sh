#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus' checker of the metrics text format), for the test
# that checks /metrics with it. Uses one on PATH; otherwise extracts the one in Debian's
# `prometheus` package into .kairos/tools/ (the package is only downloaded, never installed:
# no service is set up). Prints nothing, and exits 1, when neither is possible.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TOOLS=$ROOT/.kairos/tools
BIN=$TOOLS/usr/bin/promtool

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [[ ! -x $BIN ]]; then
    mkdir -p "$TOOLS"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$work" && apt-get download prometheus >/dev/null 2>&1) || {
            echo "promtool: cannot download Debian's prometheus package" >&2
            exit 1
        }
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$(dirname "$BIN")"
    cp "$work/x/usr/bin/promtool" "$BIN"
fi
echo "$BIN"
