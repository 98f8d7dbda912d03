#!/usr/bin/env bash
# Workflows: send the task events of four runs of a release workflow and a fifth that is half
# done, then ask what the fifth should run next, and read the project's patterns, workflow
# families and deviating actors.
#
#   GET /v1/workflows/sessions/{session}/suggestions    GET /v1/workflows/patterns
#   GET /v1/workflows/families    GET /v1/workflows/actors
#
# Environment: KAIROS_URL, KEY, NOW, PROJECT (see lib.sh). Run: docs/api_examples/curl/workflows.sh
set -euo pipefail
EXAMPLE=workflows
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# task STARTED|COMPLETED SESSION TASK_ID TASK_TYPE: one task event, structured mode.
task() {
    local status=
    [[ $1 == completed ]] && status=',"status":"ok","duration_ms":1200'
    printf '%s' '{"specversion":"1.0","id":"'"$2-$3-$1"'","source":"api-examples/workflows","type":"kairos.task.'"$1"'.v1","subject":"'"$PROJECT"'","time":"'"$NOW"'","data":{"project":"'"$PROJECT"'","workflow_id":"'"$2"'","task_id":"'"$3"'","task_type":"'"$4"'","actor":"ci-bot"'"$status"'}}'
}

# run SESSION TASK...: the events of one workflow run, each task started then completed.
run() {
    local session=$1 i=0 events=()
    shift
    for t in "$@"; do
        i=$((i + 1))
        events+=("$(task started "$session" "t$i" "$t")" "$(task completed "$session" "t$i" "$t")")
    done
    local IFS=,
    printf '[%s]' "${events[*]}"
}

step "Four runs of the release workflow (one with an extra lint step), a fifth up to build"
for n in 1 2 3 4 5; do
    case $n in
    3) tasks=(checkout lint test build deploy) ;;
    5) tasks=(checkout test build) ;;
    *) tasks=(checkout test build deploy) ;;
    esac
    expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
        -H "Authorization: Bearer $KEY" \
        -H 'content-type: application/cloudevents-batch+json' \
        -d "$(run "release-$n-$RUN" "${tasks[@]}")" >/dev/null
    SEQ=$(last_seq)
done
echo "stored up to seq $SEQ"

step "What should release-5 run next? (k=3, once the workflows projection has applied seq $SEQ)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/workflows/sessions/release-5-$RUN/suggestions?k=3&min_seq=$SEQ"
check "first suggestion" "$(json suggestions.0.task)" deploy

step "The project's frequent task sequences, seen in at least 3 sessions"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/workflows/patterns?project=$PROJECT&min_support=3&limit=10"
check sessions "$(json sessions)" 5
check "the most supported pattern's support" "$(json patterns.0.support)" 5

step "Its sessions grouped into workflow families"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/workflows/families?project=$PROJECT"
check "sessions clustered" "$(json clustered)" 5

step "The actors whose recent sessions depart from their usual ones"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/workflows/actors?project=$PROJECT"

step "A session nobody ran: 404"
expect 404 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/workflows/sessions/nobody-$RUN/suggestions"
