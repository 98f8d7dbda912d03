#!/usr/bin/env bash
# Kairos for an auditor: how things stood at past instants, against a running Kairos.
#
#   make run                      # in one terminal
#   examples/auditor.sh           # in another
#
# Gives a fresh project a budget, sends three LLM calls a second or so apart, then asks how the
# budget stood before and between them (?as_of=), lists the audit log as it stood then, exports
# the project's events to a file, and verifies the audit log's hash chain. See docs/auditing.md.
#
# Environment: KAIROS_URL and KEY as in quickstart.sh; KAIROS, the kairos command (default
# `cargo run -q -p kairos --`), which reads NATS and PostgreSQL settings from .kairos/env as
# `make run` wrote it. Needs curl; pretty-prints with jq when it is installed.

set -euo pipefail

if [[ -f .kairos/env ]]; then
    # shellcheck disable=SC1091
    . ./.kairos/env
fi
EXAMPLE=auditor
PROJECT=${PROJECT:-auditor-$(date +%s)}
# shellcheck source=examples/lib.sh
. "$(dirname "$0")/lib.sh"
read -r -a KAIROS <<<"${KAIROS:-cargo run -q -p kairos --}"
export RUST_LOG=${RUST_LOG:-warn} # the kairos commands' connection logs are not the point here

# An instant strictly between two requests: the stream stores events with nanoseconds.
instant() {
    sleep 1.1
    date -u +%Y-%m-%dT%H:%M:%S.%6NZ
}

step "Kairos at $URL; project $PROJECT"
request 200 "$URL/health/ready"
BEFORE=$(instant)

step "A budget of 10.00 USD, then three calls: 2.00, 3.00 and 4.00"
request 202 -X PUT "$URL/v1/projects/$PROJECT/budget" \
    -H 'content-type: application/json' \
    -d '{"monthly_limit": "10.00", "warn_at_percent": 80, "on_exceeded": "block"}'
AT=()
for cost in 2.00 3.00 4.00; do
    AT+=("$(instant)")
    request 202 -X POST "$URL/v1/events" -H 'content-type: application/cloudevents+json' \
        -d "$(llm_call "au-$RUN-$cost" gpt-4o openai "$cost")"
done
SEQ=$(last_seq)
request 200 "$URL/v1/projects/$PROJECT/budget?min_seq=$SEQ"

step "The budget as it stood before each call: spent 0.00, 2.00, 5.00 (as_of_seq: the stream position)"
for at in "${AT[@]}"; do
    request 200 "$URL/v1/projects/$PROJECT/budget?as_of=$at"
done

step "Before the budget was set, the project had neither budget nor spend: 404"
request 404 "$URL/v1/projects/$PROJECT/budget?as_of=$BEFORE"

step "The audit log as it stood before the second call: the budget change, who made it, from where"
request 200 "$URL/v1/audit?resource=project:$PROJECT&as_of=${AT[1]}"

step "Every event of the project since just before the budget, as CloudEvents JSON lines"
ARCHIVE=$(mktemp --suffix=.jsonl)
"${KAIROS[@]}" events export --from "$BEFORE" --to "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" \
    --project "$PROJECT" >"$ARCHIVE"
echo "$(wc -l <"$ARCHIVE") events in $ARCHIVE"
head -c 300 "$ARCHIVE"
echo

step "The audit log's hash chain, checked entry by entry against the stream"
"${KAIROS[@]}" audit verify

printf '\nDone. To rebuild the whole state at an instant: kairos replay budgets --until %s (docs/auditing.md)\n' "${AT[1]}"
