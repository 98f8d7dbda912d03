#!/usr/bin/env bash
# Analytics: report a few LLM calls of two models, then read them back in minute and hour
# buckets per model, and as the project's totals per model with latency percentiles.
#
#   GET /v1/analytics/models    GET /v1/analytics/projects/{project}
#
# Environment: KAIROS_URL, KEY, NOW, PROJECT (see lib.sh). Run: docs/api_examples/curl/analytics.sh
set -euo pipefail
EXAMPLE=analytics
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Ten minutes before NOW, so that the default ranges (the 24 hours before now) hold them.
WHEN=$(at -600)
FROM=$(at -3600)
TO=$(at 3600)

step "Three gpt-4o calls and one gpt-4o-mini call of $PROJECT at $WHEN"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents-batch+json' \
    -d "[$(llm_call "an-$RUN-1" gpt-4o 0.01 "$WHEN"), $(llm_call "an-$RUN-2" gpt-4o 0.02 "$WHEN"),
         $(llm_call "an-$RUN-3" gpt-4o 0.03 "$WHEN"), $(llm_call "an-$RUN-4" gpt-4o-mini 0.001 "$WHEN")]"
SEQ=$(last_seq)

step "Per model, minute buckets from $FROM to $TO, once the analytics projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/analytics/models?project=$PROJECT&bucket=minute&from=$FROM&to=$TO&min_seq=$SEQ"
check "buckets (one per model)" "$(count items)" 2

step "Only gpt-4o, hour buckets over the default range (the 24 hours before now)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/analytics/models?project=$PROJECT&model=gpt-4o&bucket=hour"
check "gpt-4o calls" "$(json items.0.calls)" 3
check "gpt-4o cost" "$(json items.0.cost)" 0.06

step "The project's totals per model over the last 24 hours"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/analytics/projects/$PROJECT?min_seq=$SEQ"
check "total calls" "$(json total.calls)" 4
check "total cost" "$(json total.cost)" 0.061

step "A bucket Kairos does not keep: 400, naming the parameter"
expect 400 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/analytics/models?bucket=week"
check field "$(json error.field)" bucket
