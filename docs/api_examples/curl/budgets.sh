#!/usr/bin/env bash
# Budgets: set a project's monthly budget, change it conditionally (If-Match), spend against it
# and read it back once the budgets projection has applied the spend (read-your-writes), then
# every project's budget.
#
#   PUT /v1/projects/{project}/budget    GET /v1/projects/{project}/budget    GET /v1/budgets
#
# Environment: KAIROS_URL, KEY, NOW, PROJECT (see lib.sh). Run: docs/api_examples/curl/budgets.sh
set -euo pipefail
EXAMPLE=budgets
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "Set the budget of $PROJECT: 10.00 USD a month, warn at 80 %, then fall back to a local model"
expect 202 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "10.00", "warn_at_percent": 80, "on_exceeded": "fallback_to_local", "fallback_model": "llama3.1:8b"}'
VERSION=$(json version)

step "Raise it to 12.00, only if nobody changed it since (If-Match: the version just set)"
expect 202 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -H "If-Match: \"$VERSION\"" \
    -d '{"monthly_limit": "12.00", "fallback_model": "llama3.1:8b"}'
NEWER=$(json version)

step "The same conditional set again: the version it names is no longer in force, 409"
expect 409 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -H "If-Match: \"$VERSION\"" \
    -d '{"monthly_limit": "12.00"}'
check code "$(json error.code)" conflict

step "Spend against it: two LLM calls in one batch"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents-batch+json' \
    -d "[$(llm_call "spend-$RUN-1" gpt-4o 1.25), $(llm_call "spend-$RUN-2" gpt-4o-mini 0.75)]"
SEQ=$(last_seq)

step "The budget once the budgets projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/projects/$PROJECT/budget?min_seq=$SEQ"
check limit "$(json limit)" 12.00
check spent "$(json spent)" 2.00
check remaining "$(json remaining)" 10.00
check calls "$(json calls)" 2
check version "$(json version)" "$NEWER"
PERIOD=$(json period)

step "The same month named explicitly (period=YYYY-MM)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/projects/$PROJECT/budget?period=$PERIOD"

step "A project with neither budget nor spend: 404"
expect 404 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/projects/nobody-$RUN/budget"

step "Every project's budget for the month, two per page"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/budgets?period=$PERIOD&limit=2&min_seq=$SEQ"
echo "next page: ?after=$(json next_after)"

step "Page through every project's budget (1000 a page) until $PROJECT turns up"
AFTER=
while :; do
    expect 200 curl -sS -H "Authorization: Bearer $KEY" \
        "$KAIROS_URL/v1/budgets?limit=1000${AFTER:+&after=$AFTER}"
    if json budgets | grep -q "\"project\": \"$PROJECT\""; then
        echo "ok: $PROJECT is listed"
        break
    fi
    AFTER=$(json next_after)
    [[ $AFTER != null ]] || fail "$PROJECT is not in GET /v1/budgets"
done
