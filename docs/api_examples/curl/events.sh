#!/usr/bin/env bash
# Events: publish an LLM call in each of the three HTTP encodings (structured, binary, batch),
# see a refused one, and read the stored events back from the stream.
#
#   POST /v1/events    GET /v1/events
#
# Environment: KAIROS_URL, KEY, NOW, PROJECT (see lib.sh). Run: docs/api_examples/curl/events.sh
set -euo pipefail
EXAMPLE=events
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "Structured mode: the body is one CloudEvent (application/cloudevents+json)"
EVENT='{"specversion":"1.0","id":"call-'"$RUN"'-1","source":"api-examples/events","type":"kairos.llm.call.completed.v1","subject":"'"$PROJECT"'","time":"'"$NOW"'","datacontenttype":"application/json","data":{"project":"'"$PROJECT"'","model":"gpt-4o","provider":"openai","input_tokens":1200,"output_tokens":300,"cost":"0.0123","latency_ms":840,"status":"ok"}}'
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents+json' \
    -d "$EVENT"
check accepted "$(json accepted)" 1
FIRST=$(json results.0.seq)

step "The same event again: a retry, stored once (duplicate, same seq)"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents+json' \
    -d "$EVENT"
check duplicate "$(json results.0.duplicate)" true
check seq "$(json results.0.seq)" "$FIRST"

step "Binary mode: attributes in ce-* headers, data in the body"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -H 'ce-specversion: 1.0' \
    -H "ce-id: call-$RUN-2" \
    -H 'ce-source: api-examples/events' \
    -H 'ce-type: kairos.llm.call.completed.v1' \
    -H "ce-subject: $PROJECT" \
    -H "ce-time: $NOW" \
    -d '{"project":"'"$PROJECT"'","model":"claude-sonnet-4","provider":"anthropic","input_tokens":800,"output_tokens":200,"cost":"0.0054","latency_ms":1200,"status":"ok"}'
check accepted "$(json accepted)" 1

step "A batch (application/cloudevents-batch+json): the valid events are stored, the bad one refused"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents-batch+json' \
    -d "[$(llm_call "call-$RUN-3" gpt-4o-mini 0.00045), $(llm_call "call-$RUN-4" gpt-4o-mini 1,50)]"
check accepted "$(json accepted)" 1
check rejected "$(json rejected)" 1
check "the refusal" "$(json results.1.error.code)" schema_violation

step "An event without data.model: 400, naming the field"
expect 400 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents+json' \
    -d '{"specversion":"1.0","id":"bad-'"$RUN"'","source":"api-examples/events","type":"kairos.llm.call.completed.v1","subject":"'"$PROJECT"'","data":{"project":"'"$PROJECT"'","provider":"openai","input_tokens":1,"output_tokens":1,"cost":"0.01","latency_ms":1,"status":"ok"}}'
check field "$(json error.field)" data.model

step "The project's stored events, oldest first, from the first one on (admins: read_audit)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/events?project=$PROJECT&after=$((FIRST - 1))&limit=10"
check "events stored for $PROJECT" "$(count events)" 3
check "the first one" "$(json events.0.event.id)" "call-$RUN-1"

step "Only one type, one per page: follow next_after"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/events?type=kairos.llm.call.completed.v1&project=$PROJECT&limit=1"
echo "next page: ?after=$(json next_after)"
