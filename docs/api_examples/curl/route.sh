#!/usr/bin/env bash
# Router: ask which model the next LLM call should use (with a budget, so a paid call reserves
# its worst case), list and explain the decisions, and replay them under another catalog.
#
#   POST /v1/route    GET /v1/route/decisions    GET /v1/route/decisions/{id}
#   POST /v1/route/simulate
#
# Environment: KAIROS_URL, KEY (an admin's: simulate needs manage_catalog), NOW, PROJECT (see
# lib.sh). Needs a catalog (make run has the shipped one). Run: docs/api_examples/curl/route.sh
set -euo pipefail
EXAMPLE=route
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "Give $PROJECT a budget of 5.00 USD a month"
expect 202 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "5.00", "fallback_model": "llama3.1:8b"}'
SEQ=$(json seq)

step "Route a 2,000-token task expecting 500 output tokens, once the budget is applied"
expect 200 curl -sS -X POST "$KAIROS_URL/v1/route?min_seq=$SEQ" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"project": "'"$PROJECT"'", "input_tokens": 2000, "expected_output_tokens": 500, "max_output_tokens": 1000, "task": "summarise"}'
DECISION=$(json decision_id)
SEQ=$(json seq)
echo "decision $DECISION: $(json outcome) to $(json model) by rule $(json rule)"

step "A 5,000,000-token task: no model's window holds it, 422"
expect 422 curl -sS -X POST "$KAIROS_URL/v1/route" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"project": "'"$PROJECT"'", "input_tokens": 5000000, "expected_output_tokens": 1000}'
check outcome "$(json outcome)" no_model_fits

step "The project's decisions, in stream order, once the router projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/route/decisions?project=$PROJECT&limit=10&min_seq=$SEQ"
check "first decision" "$(json decisions.0.decision_id)" "$DECISION"

step "Why it routed there: the request, the budget, the health figures, each alternative"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/route/decisions/$DECISION"
check decision_id "$(json decision_id)" "$DECISION"

step "What if the catalog had also held a cheap tier-5 model: the last day replayed under it"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/catalog"
MODELS=$(json models)
TWIN='{"name": "cheap-twin", "provider": "example", "context_window": 200000, "max_output_tokens": 64000, "tier": 5, "tags": ["tools", "vision", "code"], "prices": [{"valid_from": "2025-06-01T00:00:00Z", "input_per_mtok": "0.10", "output_per_mtok": "0.40"}]}'
expect 200 curl -sS -X POST "$KAIROS_URL/v1/route/simulate" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"models": '"${MODELS%]}, $TWIN]"', "from": "'"$(at -86400)"'", "to": "'"$(at 3600)"'", "project": "'"$PROJECT"'"}'
check "projects reported" "$(count projects)" 1
echo "rerouted: $(json projects.0.rerouted), cost delta: $(json projects.0.delta)"
