#!/usr/bin/env bash
# Access: who the key is; invite a colleague, who accepts with the one-time token and gets a
# first key; change their role; issue and revoke API keys; remove the member. Everything it
# changes or removes, it created itself.
#
#   GET /v1/me    GET /v1/members    PUT /v1/members/{id}/role    DELETE /v1/members/{id}
#   GET /v1/invitations    POST /v1/invitations    POST /v1/invitations/accept
#   DELETE /v1/invitations/{id}
#   GET /v1/api-keys    POST /v1/api-keys    DELETE /v1/api-keys/{id}
#
# Environment: KAIROS_URL, KEY (an admin's), PROJECT (see lib.sh). Run: docs/api_examples/curl/access.sh
set -euo pipefail
EXAMPLE=access
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EMAIL="dana-$RUN@example.com"

step "Who this key belongs to, and what it may do"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/me"
check role "$(json role)" admin

step "Invite $EMAIL as a developer of $PROJECT; the answer holds the one-time token"
expect 201 curl -sS -X POST "$KAIROS_URL/v1/invitations" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"email": "'"$EMAIL"'", "role": "developer", "projects": ["'"$PROJECT"'"], "expires_in_seconds": 86400}'
TOKEN=$(json token)
INVITATION=$(json invitation_id)
SEQ=$(json seq)

step "The invitations, newest first (tokens are never listed)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/invitations?min_seq=$SEQ"
check "newest invitation" "$(json invitations.0.invitation_id)" "$INVITATION"

step "They accept it: no key, the token in the body is the credential; the answer is their first key"
expect 201 curl -sS -X POST "$KAIROS_URL/v1/invitations/accept" \
    -H 'content-type: application/json' \
    -d '{"token": "'"$TOKEN"'", "name": "Dana"}'
MEMBER=$(json member_id)
DANA_KEY=$(json api_key)
DANA_KEY_ID=$(json key_id)
JOINED=$(json seq)

step "The same token again: 410, already accepted"
expect 410 curl -sS -X POST "$KAIROS_URL/v1/invitations/accept" \
    -H 'content-type: application/json' -d '{"token": "'"$TOKEN"'"}'

step "An invitation sent by mistake is revoked; its token then admits nobody"
expect 201 curl -sS -X POST "$KAIROS_URL/v1/invitations" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"email": "wrong-'"$RUN"'@example.com", "role": "viewer"}'
WRONG_TOKEN=$(json token)
WRONG=$(json invitation_id)
expect 200 curl -sS -X DELETE "$KAIROS_URL/v1/invitations/$WRONG" -H "Authorization: Bearer $KEY"
check revoked "$(json revoked)" true
expect 410 curl -sS -X POST "$KAIROS_URL/v1/invitations/accept" \
    -H 'content-type: application/json' -d '{"token": "'"$WRONG_TOKEN"'"}'

step "Their key works: a developer narrowed to $PROJECT"
expect 200 curl -sS -H "Authorization: Bearer $DANA_KEY" "$KAIROS_URL/v1/me"
check role "$(json role)" developer
check projects "$(json projects)" "[\"$PROJECT\"]"

step "The members (pass the change's seq as min_seq to list after it)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/members?min_seq=$JOINED"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/members?include_removed=true"
json members | grep -q "\"$MEMBER\"" || fail "member $MEMBER is not listed"

step "Lists come in pages: one member per page, the next one after next_cursor"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/members?limit=1"
check "a page of one" "$(count members)" 1
FIRST=$(json members.0.member_id)
CURSOR=$(json next_cursor)
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/members?limit=1&cursor=$CURSOR"
[[ $(json members.0.member_id) != "$FIRST" ]] || fail "the second page repeats the first"

step "Make them a viewer of $PROJECT"
expect 200 curl -sS -X PUT "$KAIROS_URL/v1/members/$MEMBER/role" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"role": "viewer", "projects": ["'"$PROJECT"'"]}'
check role "$(json role)" viewer

step "A viewer may not publish: 403"
expect 403 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $DANA_KEY" \
    -H 'content-type: application/cloudevents+json' \
    -d "$(llm_call "viewer-$RUN" gpt-4o 0.01)"

step "Issue a key of your own that expires in 30 days (shown once)"
expect 201 curl -sS -X POST "$KAIROS_URL/v1/api-keys" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"name": "ci-'"$RUN"'", "expires_in_days": 30}'
OWN_KEY_ID=$(json key_id)

step "Issue a second key for $EMAIL (another member's: needs manage_members)"
expect 201 curl -sS -X POST "$KAIROS_URL/v1/api-keys" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"name": "dana-laptop", "member_id": "'"$MEMBER"'"}'
DANA_LAPTOP=$(json api_key)
SEQ=$(json seq)

step "Your own keys; then every key of every member"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/api-keys?min_seq=$SEQ"
json api_keys | grep -q "\"$OWN_KEY_ID\"" || fail "key $OWN_KEY_ID is not listed"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/api-keys?member_id=all"

step "Revoke the key issued above; revoking it again is a 409"
expect 200 curl -sS -X DELETE -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/api-keys/$OWN_KEY_ID"
check revoked "$(json revoked)" true
expect 409 curl -sS -X DELETE -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/api-keys/$OWN_KEY_ID"

step "Revoke Dana's first key: it stops working"
expect 200 curl -sS -X DELETE -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/api-keys/$DANA_KEY_ID"
expect 401 curl -sS -H "Authorization: Bearer $DANA_KEY" "$KAIROS_URL/v1/me"

step "Remove the member (the reason is recorded): their other key stops working; removing again is a 404"
expect 200 curl -sS -X DELETE -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/members/$MEMBER?reason=api-examples%20cleanup"
check removed "$(json removed)" true
expect 401 curl -sS -H "Authorization: Bearer $DANA_LAPTOP" "$KAIROS_URL/v1/me"
expect 404 curl -sS -X DELETE -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/members/$MEMBER"
