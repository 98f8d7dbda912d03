# shellcheck shell=bash
# Shared by the curl examples of docs/api_examples/curl/: where Kairos is, the API key, a fresh
# id for this run, and `expect`, which runs one curl command as written and checks its status.
# Sourced, not run. The caller sets EXAMPLE (its name, for messages) before sourcing.
#
# Environment:
#   KAIROS_URL   where Kairos listens (default http://127.0.0.1:8080, `make run`'s)
#   KEY          an admin's API key (default $KAIROS_BOOTSTRAP_ADMIN_KEY; when neither is set,
#                .kairos/env of the checkout is sourced, where `make run` writes it)
#   NOW          the instant the example's events happen (default: now, UTC)
#   PROJECT      the project the example works on (default: a fresh one per run)
#
# Needs bash, curl and python3 (to read values out of the JSON answers).

KAIROS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd -P)
KAIROS_URL=${KAIROS_URL:-http://127.0.0.1:8080}
if [[ -z ${KEY:-} && -z ${KAIROS_BOOTSTRAP_ADMIN_KEY:-} && -f $KAIROS_ROOT/.kairos/env ]]; then
    # shellcheck disable=SC1091
    . "$KAIROS_ROOT/.kairos/env"
fi
KEY=${KEY:-${KAIROS_BOOTSTRAP_ADMIN_KEY:-}}
[[ -n $KEY ]] || {
    echo "$EXAMPLE: set KEY to an admin's API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)" >&2
    exit 1
}
# Unique per run, so that a second run creates new events, members and keys.
RUN=$(date +%s)-$$-$RANDOM
NOW=${NOW:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
PROJECT=${PROJECT:-ex-$RUN}
export KAIROS_URL KEY NOW

# at SECONDS: the instant SECONDS (negative: before) from $NOW, in RFC 3339.
at() { date -u -d "@$(($(date -u -d "$NOW" +%s) + $1))" +%Y-%m-%dT%H:%M:%SZ; }

step() { printf '\n== %s\n' "$*"; }

fail() {
    echo "$EXAMPLE: $*" >&2
    exit 1
}

# expect STATUS CURL_COMMAND...: runs the curl command as it is written (drop `expect STATUS` to
# paste it in a terminal), prints the answer's status and body (cut at 40 lines), keeps the
# body in $BODY and the status in $STATUS, and stops the script when the status is not STATUS.
BODY=
STATUS=
expect() {
    local want=$1 out
    shift
    out=$("$@" -w '\n%{http_code}') || fail "curl failed; is Kairos running at $KAIROS_URL? (make run)"
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
    echo "HTTP $STATUS"
    if python3 -c 'import json,sys; json.loads(sys.stdin.read())' <<<"$BODY" 2>/dev/null; then
        python3 -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read()), indent=2, sort_keys=True))' <<<"$BODY"
    else
        printf '%s\n' "$BODY"
    fi | awk 'NR <= 40 { print } NR == 41 { print "  …" }'
    local cmd="$*"
    [[ $STATUS == "$want" ]] || fail "expected HTTP $want, got $STATUS from: ${cmd//$KEY/\$KEY}"
}

# json PATH: the member at PATH (dot-separated names and indexes: results.0.seq) of $BODY;
# strings as they are, anything else as JSON. Stops the script when there is none.
json() {
    python3 -c '
import json, sys
value = json.loads(sys.stdin.read())
for step in sys.argv[1].split("."):
    value = value[int(step)] if isinstance(value, list) else value[step]
print(value if isinstance(value, str) else json.dumps(value))
' "$1" <<<"$BODY" || fail "no $1 in the answer: $BODY"
}

# count PATH: how many items the array at PATH of $BODY holds.
count() { json "$1" | python3 -c 'import json, sys; print(len(json.loads(sys.stdin.read())))'; }

# check WHAT ACTUAL WANTED: stops the script unless ACTUAL is WANTED.
check() {
    [[ $2 == "$3" ]] || fail "$1 is $2, expected $3"
    echo "ok: $1 = $2"
}

# The highest stream sequence ("seq") anywhere in $BODY: the one to wait for with ?min_seq=.
last_seq() { grep -o '"seq":[0-9]*' <<<"$BODY" | cut -d: -f2 | sort -n | tail -n 1; }

# llm_call ID MODEL COST [TIME]: a kairos.llm.call.completed.v1 of $PROJECT, structured mode.
llm_call() {
    cat <<EOF
{"specversion":"1.0","id":"$1","source":"api-examples/$EXAMPLE","type":"kairos.llm.call.completed.v1",
 "subject":"$PROJECT","time":"${4:-$NOW}","datacontenttype":"application/json",
 "data":{"project":"$PROJECT","model":"$2","provider":"openai","input_tokens":1200,
         "output_tokens":300,"cost":"$3","latency_ms":840,"status":"ok"}}
EOF
}
