#!/usr/bin/env bash
# Kairos anomalies: send five hours of a metric with one spike, then read the alert it raised,
# the series and its scores, and acknowledge the alert, against a running Kairos.
#
#   make run                      # in one terminal
#   examples/anomalies.sh         # in another
#
# Environment: KAIROS_URL, KEY and PROJECT as for quickstart.sh (PROJECT defaults to
# anomalies-demo); NOW, the instant of the last sample (default: now).

set -euo pipefail

EXAMPLE=anomalies
PROJECT=${PROJECT:-anomalies-demo}
# shellcheck source=examples/lib.sh
. "$(dirname "$0")/lib.sh"

METRIC="queue.depth.r${RUN//-/_}"
SERIES="metric:$PROJECT:$METRIC"
END=$(date -u -d "$NOW" +%s)

step "300 samples of $METRIC, one a minute, steady but for one spike (sample 296)"
events=()
for i in $(seq 0 299); do
    printf -v at '%(%Y-%m-%dT%H:%M:%SZ)T' $((END - (299 - i) * 60))
    value=$((40 + (i * 7) % 11))
    ((i == 296)) && value=400
    events+=("{\"specversion\":\"1.0\",\"id\":\"$METRIC-$i\",\"source\":\"$EXAMPLE\",\"type\":\"kairos.metric.recorded.v1\",\"subject\":\"$PROJECT\",\"time\":\"$at\",\"data\":{\"project\":\"$PROJECT\",\"name\":\"$METRIC\",\"value\":$value,\"unit\":\"jobs\"}}")
done
IFS=, body="[${events[*]}]"
request 202 -X POST "$URL/v1/events" -H 'content-type: application/cloudevents-batch+json' \
    -d "$body" >/dev/null
SEQ=$(last_seq)
echo "accepted $(grep -o "\"accepted\":[0-9]*" <<<"$BODY" | cut -d: -f2), stored up to seq $SEQ"

step "The open alert on the series"
request 200 "$URL/v1/anomalies?status=open&series=$SERIES&min_seq=$SEQ"
ALERT=$(grep -o '"id":"alert-[^"]*"' <<<"$BODY" | head -n 1 | cut -d'"' -f4)
VALUE=$(grep -o '"value":[0-9.]*' <<<"$BODY" | head -n 1 | cut -d: -f2)
[[ -n $ALERT ]] || {
    echo "$EXAMPLE: no alert was raised" >&2
    exit 1
}
echo "alert $ALERT raised at value $VALUE"

step "The series, with its last value and score"
request 200 "$URL/v1/series?project=$PROJECT"

step "Its last five points, each with its anomaly score"
request 200 "$URL/v1/series/$SERIES/scores?limit=5"

step "Acknowledge the alert (admins)"
request 202 -X POST "$URL/v1/anomalies/$ALERT/acknowledge" \
    -H 'content-type: application/json' -d '{"note": "the nightly import; expected"}'
SEQ=$(last_seq)
request 200 "$URL/v1/anomalies?series=$SERIES&min_seq=$SEQ"
BY=$(grep -o '"acknowledged_by":"[^"]*"' <<<"$BODY" | head -n 1 | cut -d'"' -f4)
echo "acknowledged by $BY"
