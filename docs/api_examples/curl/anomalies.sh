#!/usr/bin/env bash
# Anomalies: send five hours of a metric, one sample a minute, steady but for one spike; read
# the alert it raised, the series and its scored points; acknowledge the alert; and list the
# models' circuit breakers.
#
#   GET /v1/anomalies    POST /v1/anomalies/{id}/acknowledge    GET /v1/series
#   GET /v1/series/{series}/scores    GET /v1/breakers
#
# Environment: KAIROS_URL, KEY (an admin's: acknowledging needs manage_alerts), NOW (the last
# sample's instant), PROJECT (see lib.sh). Run: docs/api_examples/curl/anomalies.sh
set -euo pipefail
EXAMPLE=anomalies
# shellcheck source=docs/api_examples/curl/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

METRIC="queue.depth.r${RUN//-/_}"
SERIES="metric:$PROJECT:$METRIC"

step "300 samples of $METRIC, one a minute up to $NOW, steady but for one spike (sample 296)"
events=()
for i in $(seq 0 299); do
    value=$((40 + (i * 7) % 11))
    ((i == 296)) && value=400
    events+=('{"specversion":"1.0","id":"'"$METRIC-$i"'","source":"api-examples/anomalies","type":"kairos.metric.recorded.v1","subject":"'"$PROJECT"'","time":"'"$(at $(((i - 299) * 60)))"'","data":{"project":"'"$PROJECT"'","name":"'"$METRIC"'","value":'"$value"',"unit":"jobs"}}')
done
BATCH=$(IFS=,; printf '[%s]' "${events[*]}")
expect 202 curl -sS -X POST "$KAIROS_URL/v1/events" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/cloudevents-batch+json' \
    -d "$BATCH" >/dev/null
check accepted "$(json accepted)" 300
SEQ=$(last_seq)

step "The open alert on the series, once the anomalies projection has applied seq $SEQ"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/anomalies?status=open&series=$SERIES&min_seq=$SEQ"
ALERT=$(json alerts.0.id)
check "the alert's value" "$(json alerts.0.value)" 400.0

step "The project's alerts, open and resolved, newest first"
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/anomalies?project=$PROJECT&limit=10"

step "The series watched for $PROJECT, with their last value and score"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/series?project=$PROJECT&kind=metric"
check "the series" "$(json series.0.id)" "$SERIES"

step "Its last five points, each with its anomaly score"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/series/$SERIES/scores?limit=5"
check points "$(count points)" 5

step "Acknowledge the alert (admins); a second time is a 409"
expect 202 curl -sS -X POST "$KAIROS_URL/v1/anomalies/$ALERT/acknowledge" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{"note": "the nightly import; expected"}'
SEQ=$(json seq)
expect 200 curl -sS -H "Authorization: Bearer $KEY" \
    "$KAIROS_URL/v1/anomalies?series=$SERIES&min_seq=$SEQ"
echo "acknowledged by $(json alerts.0.acknowledged_by)"
expect 409 curl -sS -X POST "$KAIROS_URL/v1/anomalies/$ALERT/acknowledge" \
    -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' \
    -d '{}'

step "The models' circuit breakers (a failing model is taken out of routing until it recovers)"
expect 200 curl -sS -H "Authorization: Bearer $KEY" "$KAIROS_URL/v1/breakers"
