#!/usr/bin/env bash
# Catalog: read the model catalog in force, state it again conditionally (If-Match) so that
# nothing changes but its version, see a stale version and a bad catalog refused, and list
# every version.
#
#   GET /v1/catalog    PUT /v1/catalog    GET /v1/catalog/versions
#
# Environment: KAIROS_URL, KEY (an admin's: manage_catalog) (see lib.sh).
# Run: docs/api_examples/curl/catalog.sh
set -euo pipefail
EXAMPLE=catalog
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "The catalog in force and its version"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/catalog"
VERSION=$(json version)
MODELS=$(json models)
echo "version $VERSION, $(count models) models"

step "Put the same models back, only if the catalog is still at version $VERSION"
expect 202 curl -sS -X PUT "$KAIROS_URL/v1/catalog" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -H "If-Match: \"$VERSION\"" \
    -d "{\"models\": $MODELS}"
NEW=$(json version)
SEQ=$(json seq)

step "Again with version $VERSION: no longer the one in force, 409"
expect 409 curl -sS -X PUT "$KAIROS_URL/v1/catalog" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -H "If-Match: \"$VERSION\"" \
    -d "{\"models\": $MODELS}"

step "A catalog Kairos could not price by: 400 invalid_catalog, naming the member"
expect 400 curl -sS -X PUT "$KAIROS_URL/v1/catalog" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"models": [{"name": "m", "provider": "p", "context_window": 8000, "max_output_tokens": 1000, "tier": 3, "prices": [{"valid_from": "2026-01-01T12:34:00Z", "input_per_mtok": "1.00", "output_per_mtok": "1.00"}]}]}'
check code "$(json error.code)" invalid_catalog

step "Every version, newest first, once the catalog projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/catalog/versions?min_seq=$SEQ"
check "newest version" "$(json versions.0.version)" "$NEW"
