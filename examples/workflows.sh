#!/usr/bin/env bash
# Kairos workflows: send the task events of a few runs of a workflow, then ask what the next run
# should do next, the patterns of the project and its workflow families, against a running Kairos.
#
#   make run                      # in one terminal
#   examples/workflows.sh         # in another
#
# Environment: KAIROS_URL, KEY and PROJECT as for quickstart.sh (PROJECT defaults to
# workflows-demo); NOW, the instant the tasks happen (default: now).

set -euo pipefail

EXAMPLE=workflows
PROJECT=${PROJECT:-workflows-demo}
# shellcheck source=examples/lib.sh
. "$(dirname "$0")/lib.sh"

# task EVENT_TYPE SESSION TASK_ID TASK_TYPE: one task event in structured mode.
task() {
    local status=
    [[ $1 == completed ]] && status=',"status":"ok","duration_ms":1200'
    cat <<JSON
{"specversion":"1.0","id":"$2-$3-$1","source":"$EXAMPLE","type":"kairos.task.$1.v1",
 "subject":"$PROJECT","time":"$NOW","datacontenttype":"application/json",
 "data":{"project":"$PROJECT","workflow_id":"$2","task_id":"$3","task_type":"$4","actor":"ci-bot"$status}}
JSON
}

# run SESSION TASK...: a workflow run, each task started then completed, as one batch.
run() {
    local session=$1 i=0 events=()
    shift
    for t in "$@"; do
        i=$((i + 1))
        events+=("$(task started "$session" "t$i" "$t")" "$(task completed "$session" "t$i" "$t")")
    done
    local IFS=,
    request 202 -X POST "$URL/v1/events" \
        -H 'content-type: application/cloudevents-batch+json' -d "[${events[*]}]"
}

step "Four runs of the release workflow (one with an extra lint step)"
run "release-1-$RUN" checkout test build deploy
run "release-2-$RUN" checkout test build deploy
run "release-3-$RUN" checkout lint test build deploy
run "release-4-$RUN" checkout test build deploy

step "A fifth run has done checkout, test and build"
run "release-5-$RUN" checkout test build
SEQ=$(last_seq)

step "What should it run next?"
request 200 "$URL/v1/workflows/sessions/release-5-$RUN/suggestions?k=3&min_seq=$SEQ"
TOP=$(grep -o '"task":"[^"]*"' <<<"$BODY" | head -n 1 | cut -d'"' -f4)
WHY=$(grep -o '"text":"[^"]*"' <<<"$BODY" | head -n 1 | cut -d'"' -f4)
echo "suggested first: $TOP ($WHY)"

step "The project's frequent task sequences"
request 200 "$URL/v1/workflows/patterns?project=$PROJECT&min_support=3"

step "Its workflow families"
request 200 "$URL/v1/workflows/families?project=$PROJECT"
