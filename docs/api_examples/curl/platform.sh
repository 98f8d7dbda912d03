#!/usr/bin/env bash
# Platform: liveness and readiness, the OpenAPI document, Prometheus metrics, who the key is,
# each projection's checkpoint and lag, and a projection rebuilt from the stream beside the live
# one (a replay).
#
#   GET /health/live    GET /health/ready    GET /openapi.json    GET /metrics    GET /v1/me
#   GET /v1/projections    POST /v1/projections/{name}/replay
#
# Environment: KAIROS_URL, KEY (an admin's: replay) (see lib.sh). Run: docs/api_examples/curl/platform.sh
set -euo pipefail
EXAMPLE=platform
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "Liveness and readiness: no key needed"
expect 200 curl -sS "$KAIROS_URL/health/live"
check body "$BODY" ok
expect 200 curl -sS "$KAIROS_URL/health/ready"
check status "$(json status)" ready

step "The OpenAPI 3.1 document of every route: no key needed"
expect 200 curl -sS "$KAIROS_URL/openapi.json" >/dev/null
check openapi "$(json openapi)" 3.1.0
echo "$(json paths | grep -o '"/[^"]*": {' | wc -l | tr -d ' ') paths"

step "Prometheus metrics (read_projections: give the scraper a viewer's key)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/metrics" >/dev/null
grep -q '^# TYPE kairos_stream_last_seq gauge' <<<"$BODY" || fail "no kairos_stream_last_seq in /metrics"
grep '^kairos_projection_lag_events' <<<"$BODY" || true
expect 401 curl -sS "$KAIROS_URL/metrics"

step "Who the key belongs to"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/me"

step "Each projection's checkpoint and lag"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/projections"
json projections | grep -q '"projection": "budgets"' || fail "the budgets projection is not listed"

step "Rebuild the budgets projection from the stream, in the background, beside the live one"
expect 202 curl -sS -X POST -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/projections/budgets/replay"
check generation "$(json generation)" budgets@next

step "Follow it in GET /v1/projections until the new generation is switched in"
for _ in $(seq 1 300); do
    expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/projections" >/dev/null
    [[ $(count generations_being_rebuilt) == 0 ]] && break
    sleep 0.2
done
check "generations being rebuilt" "$(count generations_being_rebuilt)" 0

step "A projection that does not exist: 404, listing the known ones"
expect 404 curl -sS -X POST -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/projections/nope/replay"
