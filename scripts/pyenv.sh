#!/usr/bin/env bash
# Prints the path of a Python that has the Python examples' dependencies
# (docs/api_examples/python/requirements.txt: the CloudEvents SDK, nats-py), for the tests that
# run those examples and for a reader who wants to run them. The Python is the one of the
# virtualenv .kairos/venv (shared with scripts/schemathesis.sh), made with `python3 -m venv` if
# it is not there yet. The requirements are pip-installed only when they changed since the last
# install: the stamp .kairos/venv/kairos-requirements.sha256 holds the SHA-256 of the
# requirements file installed. Everything but the path goes to stderr; exits 1 when the
# virtualenv cannot be made or the install fails.
#
#   KAIROS_PYTHON=$(scripts/pyenv.sh) && "$KAIROS_PYTHON" docs/api_examples/python/read_budgets.py
#
# With a requirements file as its argument, the same for that file, in a virtualenv of its own
# (.kairos/venv-<file name without .txt>): scripts/pyenv.sh scripts/ops-requirements.txt gives
# the Python whose environment has the deployment checkers (its bin/ holds their commands).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
if [[ $# -gt 0 ]]; then
    REQUIREMENTS=$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")
    VENV=$ROOT/.kairos/venv-$(basename "$REQUIREMENTS" .txt)
else
    REQUIREMENTS=$ROOT/docs/api_examples/python/requirements.txt
    VENV=$ROOT/.kairos/venv
fi
[[ -f $REQUIREMENTS ]] || {
    echo "pyenv: no requirements file $REQUIREMENTS" >&2
    exit 1
}
PY=$VENV/bin/python
STAMP=$VENV/kairos-requirements.sha256

mkdir -p "$ROOT/.kairos"
# Tests run in parallel, and each may call this: one at a time makes or updates a virtualenv.
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x $PY ]]; then
    echo "pyenv: creating the virtualenv $VENV" >&2
    python3 -m venv "$VENV" >&2 || {
        echo "pyenv: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
    echo "pyenv: installing $REQUIREMENTS into $VENV" >&2
    "$PY" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS" >&2 || {
        echo "pyenv: pip install -r $REQUIREMENTS failed" >&2
        exit 1
    }
    echo "$want" >"$STAMP"
fi
echo "$PY"
