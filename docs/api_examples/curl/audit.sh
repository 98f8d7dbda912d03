#!/usr/bin/env bash
# Audit: make a refused write and one that succeeds, find their entries in the hash-chained audit log, export the log as CSV and
# JSON lines, and verify the chain.
#
#   GET /v1/audit    GET /v1/audit/export    GET /v1/audit/verify
#
# Environment: KAIROS_URL, KEY (an admin's: read_audit), PROJECT (see lib.sh).
# Run: docs/api_examples/curl/audit.sh
set -euo pipefail
EXAMPLE=audit
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "A refused write is audited: a budget the body cannot set (400)"
expect 400 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "-1"}'

step "So is one that succeeds: set the budget of $PROJECT"
expect 202 curl -sS -X PUT "$KAIROS_URL/v1/projects/$PROJECT/budget" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "25.00"}'
SEQ=$(json seq)

step "The budget's entries, newest first, once the audit projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?action=budget.set&resource=project:$PROJECT&min_seq=$SEQ&limit=5"
check "the entry's seq" "$(json entries.0.seq)" "$SEQ"
check "its outcome" "$(json entries.0.outcome)" success
ACTOR=$(json entries.0.actor)

step "The refused one, filed under the path it was sent to"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?resource=/v1/projects/$PROJECT/budget&outcome=failure&min_seq=$SEQ"
check "its outcome" "$(json entries.0.outcome)" failure

step "Filter by actor and outcome, two per page (follow next_cursor as cursor)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?actor=$ACTOR&outcome=success&limit=2"
CURSOR=$(json next_cursor)
if [[ $CURSOR != null ]]; then
    expect 200 curl -sS -H "Authorization: Bearer $KEY" \
        "$KAIROS_URL/v1/audit?actor=$ACTOR&outcome=success&limit=2&cursor=$CURSOR"
fi

step "A producer reports a user action: Kairos keeps who it says acted apart from who it is"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents+json' \
    -d '{"specversion": "1.0", "id": "console-action-'"$SEQ"'", "source": "console/eu", "type": "kairos.user.action.v1",
         "time": "2020-01-01T00:00:00Z",
         "data": {"actor": "alice@example.com", "role": "admin", "action": "prompt.update",
                  "resource": "prompt:welcome", "outcome": "success"}}'
REPORTED=$(json results.0.seq)
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?claimed_actor=alice@example.com&min_seq=$REPORTED&limit=1"
check "who Kairos knows sent it" "$(json entries.0.actor)" console/eu
check "who it says acted" "$(json entries.0.claimed.actor)" alice@example.com
check "the time it claims" "$(json entries.0.occurred_at)" 2020-01-01T00:00:00.000000Z

step "Time filters bound when the stream stored an event: the backdated claim is not before 2021"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?claimed_actor=alice@example.com&to=2021-01-01T00:00:00Z"
check "entries recorded before 2021" "$(count entries)" 0
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit?claimed_actor=alice@example.com&to=2021-01-01T00:00:00Z&time=occurred&limit=1"
check "entries claiming a time before 2021" "$(json entries.0.seq)" "$REPORTED"

step "Export the project's entries as CSV, oldest first (streamed)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit/export?format=csv&resource=project:$PROJECT"
head -n 1 <<<"$BODY" | grep -q '^seq,occurred_at,actor' || fail "the CSV has no header row"

step "The same as JSON lines, each entry with its prev_hash and hash"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/audit/export?format=jsonl&resource=project:$PROJECT"
grep -Eq "\"seq\":${SEQ}[,}]" <<<"$BODY" || fail "seq $SEQ is not in the export"

step "Verify the hash chain of the whole log"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/audit/verify"
check ok "$(json ok)" true
