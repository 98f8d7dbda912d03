# Shared by the example scripts: where Kairos is, the API key, and small helpers. Sourced, not run.
# The caller sets EXAMPLE (its name, for messages) and PROJECT before sourcing.


URL=${KAIROS_URL:-http://127.0.0.1:8080}
if [[ -z ${KEY:-} && -z ${KAIROS_BOOTSTRAP_ADMIN_KEY:-} && -f .kairos/env ]]; then
    # shellcheck disable=SC1091
    . ./.kairos/env
fi
KEY=${KEY:-${KAIROS_BOOTSTRAP_ADMIN_KEY:-}}
[[ -n $KEY ]] || {
    echo "$EXAMPLE: set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)" >&2
    exit 1
}
RUN=$(date +%s)-$$
NOW=${NOW:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}

if command -v jq >/dev/null 2>&1; then
    pretty() { jq .; }
else
    pretty() {
        cat
        echo
    }
fi

step() { printf '\n== %s\n' "$*"; }

# request EXPECTED_STATUS CURL_ARGS...: runs curl, prints the status and the body, keeps the body
# in $BODY, and stops the script when the status is not the expected one.
BODY=
request() {
    local expected=$1 out status
    shift
    out=$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer $KEY" "$@") || {
        echo "$EXAMPLE: curl failed; is Kairos running at $URL? (make run)" >&2
        exit 1
    }
    status=${out##*$'\n'}
    BODY=${out%$'\n'*}
    echo "HTTP $status"
    printf '%s' "$BODY" | pretty
    if [[ $status != "$expected" ]]; then
        echo "$EXAMPLE: expected HTTP $expected, got $status" >&2
        exit 1
    fi
}

# The highest "seq" in $BODY: the stream sequence to wait for.
last_seq() { grep -o '"seq":[0-9]*' <<<"$BODY" | cut -d: -f2 | sort -n | tail -n 1; }

# One kairos.llm.call.completed.v1 in structured mode, for $PROJECT, happening $NOW (or at
# $WHEN when set): llm_call ID MODEL PROVIDER COST
llm_call() {
    cat <<EOF
{"specversion":"1.0","id":"$1","source":"$EXAMPLE","type":"kairos.llm.call.completed.v1",
 "subject":"$PROJECT","time":"${WHEN:-$NOW}","datacontenttype":"application/json",
 "data":{"project":"$PROJECT","model":"$2","provider":"$3","input_tokens":1200,
         "output_tokens":300,"cost":"$4","latency_ms":840,"status":"ok"}}
EOF
}
