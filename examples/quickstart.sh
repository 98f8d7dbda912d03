#!/usr/bin/env bash
# Kairos quickstart: the HTTP API end to end, against a running Kairos.
#
#   make run                      # in one terminal
#   examples/quickstart.sh        # in another
#
# Sets a budget, publishes an LLM call three ways (structured, binary, batch), reads the budget
# back with ?min_seq= (read-your-writes), and shows what a refused event looks like.
#
# Environment:
#   KAIROS_URL       where Kairos listens (default http://127.0.0.1:8080)
#   PROJECT          the project to use (default quickstart)
#   KEY              an API key (default $KAIROS_BOOTSTRAP_ADMIN_KEY, which `make run` writes
#                    to .kairos/env; the script sources that file when the variable is unset)
#
# Needs curl; pretty-prints with jq when it is installed. Every run uses fresh event ids, so
# running it again adds to the project's spend.

set -euo pipefail

URL=${KAIROS_URL:-http://127.0.0.1:8080}
if [[ -z ${KEY:-} && -z ${KAIROS_BOOTSTRAP_ADMIN_KEY:-} && -f .kairos/env ]]; then
    # shellcheck disable=SC1091
    . ./.kairos/env
fi
KEY=${KEY:-${KAIROS_BOOTSTRAP_ADMIN_KEY:-}}
[[ -n $KEY ]] || {
    echo "quickstart: set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)" >&2
    exit 1
}
PROJECT=${PROJECT:-quickstart}
RUN=$(date +%s)-$$
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)

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
        echo "quickstart: curl failed; is Kairos running at $URL? (make run)" >&2
        exit 1
    }
    status=${out##*$'\n'}
    BODY=${out%$'\n'*}
    echo "HTTP $status"
    printf '%s' "$BODY" | pretty
    if [[ $status != "$expected" ]]; then
        echo "quickstart: expected HTTP $expected, got $status" >&2
        exit 1
    fi
}

# The highest "seq" in $BODY: the stream sequence to wait for.
last_seq() { grep -o '"seq":[0-9]*' <<<"$BODY" | cut -d: -f2 | sort -n | tail -n 1; }

# One kairos.llm.call.completed.v1 in structured mode: llm_call ID MODEL PROVIDER COST
llm_call() {
    cat <<EOF
{"specversion":"1.0","id":"$1","source":"quickstart","type":"kairos.llm.call.completed.v1",
 "subject":"$PROJECT","time":"$NOW","datacontenttype":"application/json",
 "data":{"project":"$PROJECT","model":"$2","provider":"$3","input_tokens":1200,
         "output_tokens":300,"cost":"$4","latency_ms":840,"status":"ok"}}
EOF
}

step "Kairos at $URL"
request 200 "$URL/health/ready"

step "Set the budget of $PROJECT: 10.00 USD a month, warn at 80 %, then fall back to a local model"
request 202 -X PUT "$URL/v1/projects/$PROJECT/budget" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "10.00", "warn_at_percent": 80, "on_exceeded": "fallback_to_local", "fallback_model": "llama3.1:8b"}'

step "Publish one event, structured mode (application/cloudevents+json)"
request 202 -X POST "$URL/v1/events" \
    -H 'content-type: application/cloudevents+json' \
    -d "$(llm_call "qs-$RUN-1" gpt-4o openai 0.0123)"

step "Publish one event, binary mode (attributes in ce-* headers, data in the body)"
request 202 -X POST "$URL/v1/events" \
    -H 'content-type: application/json' \
    -H 'ce-specversion: 1.0' \
    -H "ce-id: qs-$RUN-2" \
    -H 'ce-source: quickstart' \
    -H 'ce-type: kairos.llm.call.completed.v1' \
    -H "ce-subject: $PROJECT" \
    -H "ce-time: $NOW" \
    -d "{\"project\":\"$PROJECT\",\"model\":\"claude-sonnet-4\",\"provider\":\"anthropic\",\"input_tokens\":800,\"output_tokens\":200,\"cost\":\"0.0054\",\"latency_ms\":1200,\"status\":\"ok\"}"

step "Publish a batch (application/cloudevents-batch+json); the third event is invalid (cost \"1,50\")"
request 202 -X POST "$URL/v1/events" \
    -H 'content-type: application/cloudevents-batch+json' \
    -d "[$(llm_call "qs-$RUN-3" gpt-4o-mini openai 0.00045),
         $(llm_call "qs-$RUN-4" gemini-2.5-flash google 0.002),
         $(llm_call "qs-$RUN-5" gpt-4o openai 1,50)]"
SEQ=$(last_seq)

step "Read the budget once the budgets projection has applied stream sequence $SEQ"
request 200 "$URL/v1/projects/$PROJECT/budget?min_seq=$SEQ"

step "A refused event: 400, naming the event's field at fault"
request 400 -X POST "$URL/v1/events" \
    -H 'content-type: application/cloudevents+json' \
    -d '{"specversion":"1.0","id":"qs-bad","source":"quickstart","type":"kairos.llm.call.completed.v1","subject":"'"$PROJECT"'","data":{"project":"'"$PROJECT"'","provider":"openai","input_tokens":1,"output_tokens":1,"cost":"0.01","latency_ms":1,"status":"ok"}}'

printf '\nDone. More: %s/v1/budgets, %s/v1/projections, %s/metrics\n' "$URL" "$URL" "$URL"
