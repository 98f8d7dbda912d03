#!/usr/bin/env bash
# Runs schemathesis (from PyPI, in .kairos/venv) against a live Kairos, authenticated as its
# admin: every operation of /openapi.json is called with generated valid and invalid input, and
# the run fails on any 5xx, any answer the document does not allow, and any response body that
# breaks its schema. The Kairos it starts has a stream, a subject prefix and a database of its
# own, all removed at the end.
#
# Usage: scripts/schemathesis.sh [max examples per operation, default 50]
#
# The run is seeded (SCHEMATHESIS_SEED, default a fixed one) so that CI checks the same cases
# every time; SCHEMATHESIS_SEED=random explores new ones. One worker: with two, hypothesis
# parses lambda sources in two threads at once, and CPython 3.11's AST constructor is not
# thread-safe ("AST constructor recursion depth mismatch", python/cpython#106905), which failed
# a CI run on a tool error rather than on anything Kairos answered.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
EXAMPLES=${1:-50}
SEED=${SCHEMATHESIS_SEED:-220690805288708240871199745225500063689}
scripts/services.sh up >/dev/null
# shellcheck disable=SC1091
. "$ROOT/.kairos/env"

# Pinned: a new schemathesis or hypothesis release must not change what CI checks.
VENV=$ROOT/.kairos/venv
PINS="schemathesis==4.32.5 hypothesis==6.170.17"
if [[ ! -x $VENV/bin/schemathesis || "$(cat "$VENV/kairos-pins" 2>/dev/null)" != "$PINS" ]]; then
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q $PINS
    echo "$PINS" >"$VENV/kairos-pins"
fi

cargo build -q -p kairos
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/kairos

TAG=st$(date +%s)$$
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY=kairos-schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(24))')
DB=kairos_$TAG
DB_URL=${KAIROS_DATABASE_URL%/*}/$DB
psql "$KAIROS_DATABASE_URL" -qc "CREATE DATABASE $DB" >/dev/null

LOG=$ROOT/.kairos/schemathesis-kairos.log
KAIROS_DATABASE_URL=$DB_URL KAIROS_HTTP_ADDR=127.0.0.1:$PORT \
    KAIROS_NATS_STREAM=ST_$TAG KAIROS_NATS_SUBJECT_PREFIX=$TAG \
    KAIROS_BOOTSTRAP_ADMIN_KEY=$KEY KAIROS_HTTP_RATE_LIMIT_PER_SECOND=0 \
    "$BIN" serve >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    psql "$KAIROS_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
    python3 - "$KAIROS_NATS_URL" "ST_$TAG" <<'PY' || true
import socket, sys, json, urllib.parse
# Delete the run's streams with two JetStream API requests over the plain NATS protocol.
url = urllib.parse.urlparse(sys.argv[1])
s = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _st.reply 1\r\n')
for name in (sys.argv[2], sys.argv[2] + "_DLQ"):
    s.sendall(f"PUB $JS.API.STREAM.DELETE.{name} _st.reply 0\r\n\r\n".encode())
s.sendall(b"PING\r\n")
buf = b""
while b"PONG" not in buf:
    buf += s.recv(4096)
PY
}
trap cleanup EXIT

for _ in $(seq 1 150); do
    if curl -fsS -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/me" >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
curl -fsS -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/me" >/dev/null

"$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $KEY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples "$EXAMPLES" \
    $([[ $SEED == random ]] || echo --seed "$SEED") \
    --workers 1 \
    --no-color
