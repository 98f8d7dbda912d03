#!/usr/bin/env bash
# Kairos router: ask which model a call should use, follow the decision, settle its
# reservation, and read the explanation, against a running Kairos with the shipped catalog.
#
#   make run                      # in one terminal
#   examples/router.sh            # in another
#
# Environment: KAIROS_URL, KEY and PROJECT as for quickstart.sh (PROJECT defaults to
# router-demo); NOW, the instant the calls happen (default: now).

set -euo pipefail

EXAMPLE=router
PROJECT=${PROJECT:-router-demo}
# shellcheck source=examples/lib.sh
. "$(dirname "$0")/lib.sh"

# The top-level string member $1 of $BODY (a decision's own members come before its nested
# budget and alternatives, so the first occurrence is the top-level one).
field() { grep -o "\"$1\":\"[^\"]*\"" <<<"$BODY" | head -n 1 | cut -d'"' -f4; }

step "The model catalog in force"
request 200 "$URL/v1/catalog"

step "Give $PROJECT a budget of 5.00 USD a month that falls back to a local model"
request 202 -X PUT "$URL/v1/projects/$PROJECT/budget" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "5.00", "on_exceeded": "fallback_to_local", "fallback_model": "llama3.1:8b"}'
SEQ=$(last_seq)

step "Route a 2,000-token task expecting 500 output tokens (sent with max_tokens 1000)"
request 200 -X POST "$URL/v1/route?min_seq=$SEQ" \
    -H 'content-type: application/json' \
    -d '{"project": "'"$PROJECT"'", "input_tokens": 2000, "expected_output_tokens": 500, "max_output_tokens": 1000, "task": "summarise"}'
DECISION=$(field decision_id)
MODEL=$(field model)
PROVIDER=$(field provider)
echo "decision $DECISION: $MODEL ($PROVIDER), reserved $(field reserved)"

step "The budget holds the reservation beside what is spent"
request 200 "$URL/v1/projects/$PROJECT/budget?min_seq=$(last_seq)"

step "The call follows the decision; it carries no cost, so Kairos prices it from the catalog"
request 202 -X POST "$URL/v1/events" \
    -H 'content-type: application/cloudevents+json' \
    -d '{"specversion":"1.0","id":"route-'"$RUN"'","source":"router-example","type":"kairos.llm.call.completed.v1",
         "subject":"'"$PROJECT"'","time":"'"$NOW"'",
         "data":{"project":"'"$PROJECT"'","model":"'"$MODEL"'","provider":"'"$PROVIDER"'","input_tokens":2000,
                 "output_tokens":480,"latency_ms":900,"status":"ok","decision_id":"'"$DECISION"'"}}'
SEQ=$(last_seq)

step "Settled: nothing reserved any more, the call's catalog price is spent"
request 200 "$URL/v1/projects/$PROJECT/budget?min_seq=$SEQ"

step "Why did it route there?"
request 200 "$URL/v1/route/decisions/$DECISION"

step "A 300,000-token task: only a window that holds it"
request 200 -X POST "$URL/v1/route" \
    -H 'content-type: application/json' \
    -d '{"project": "'"$PROJECT"'", "input_tokens": 300000, "expected_output_tokens": 2000}'
echo "routed to $(field model)"

step "A 5,000,000-token task: no window holds it (422 names the largest)"
request 422 -X POST "$URL/v1/route" \
    -H 'content-type: application/json' \
    -d '{"project": "'"$PROJECT"'", "input_tokens": 5000000, "expected_output_tokens": 1000}'
