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

EXAMPLE=quickstart
PROJECT=${PROJECT:-quickstart}
# shellcheck source=examples/lib.sh
. "$(dirname "$0")/lib.sh"

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
