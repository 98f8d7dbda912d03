#!/usr/bin/env python3
"""Publish LLM calls to Kairos over HTTP with the CloudEvents SDK.

Builds two `kairos.llm.call.completed.v1` events with `cloudevents.http.CloudEvent` and POSTs
them to `/v1/events`: the first in structured mode (`to_structured`: the whole event is the
JSON body, `content-type: application/cloudevents+json`), the second in binary mode
(`to_binary`: the attributes in `ce-*` headers, `data` as the body). Then sends the first one
again, as a producer unsure whether it arrived would: Kairos stores it once and answers with the
original's stream sequence (`"duplicate": true`).

Prints one line per request, `<mode> id=<id> seq=<seq> duplicate=<bool>`, then `spent=<total>`
(the cost of the calls published) and `last_seq=<seq>` (pass it as ?min_seq= to read what they
did). Exits 1 on any refusal.

Environment:
  KAIROS_URL  where Kairos listens (default http://127.0.0.1:8080)
  KEY         an API key that may publish (default $KAIROS_BOOTSTRAP_ADMIN_KEY)
  PROJECT     the project the calls are billed to (default python-examples)
  NOW         RFC 3339 instant the calls happened (default: now)

    .kairos/venv/bin/python docs/api_examples/python/publish_http.py
"""

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

URL = os.environ.get("KAIROS_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("KEY") or os.environ.get("KAIROS_BOOTSTRAP_ADMIN_KEY", "")
PROJECT = os.environ.get("PROJECT", "python-examples")
NOW = os.environ.get("NOW") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
SOURCE = "api-examples/python/publish_http"


def llm_call(model: str, provider: str, cost: str) -> CloudEvent:
    """One LLM call of PROJECT; the SDK fills in specversion and a fresh UUID as id."""
    attributes = {
        "type": "kairos.llm.call.completed.v1",
        "source": SOURCE,
        "subject": PROJECT,
        "time": NOW,
        "datacontenttype": "application/json",
    }
    data = {
        "project": PROJECT,
        "model": model,
        "provider": provider,
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost": cost,
        "latency_ms": 840,
        "status": "ok",
    }
    return CloudEvent(attributes, data)


def post(headers: dict, body: bytes) -> dict:
    """POSTs one encoded event to /v1/events; its one result, or exits on a refusal."""
    request = urllib.request.Request(
        f"{URL}/v1/events",
        data=body,
        method="POST",
        headers={**headers, "Authorization": f"Bearer {KEY}", "x-request-id": str(uuid.uuid4())},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:
        sys.exit(f"publish_http: POST /v1/events answered {e.code}: {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"publish_http: cannot reach Kairos at {URL}: {e.reason} (make run)")
    result = answer["results"][0]
    if result["status"] != "accepted":
        sys.exit(f"publish_http: the event was not stored: {json.dumps(result)}")
    return result


def main() -> None:
    if not KEY:
        sys.exit("publish_http: set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)")
    structured = llm_call("gpt-4o", "openai", "0.0123")
    binary = llm_call("claude-sonnet-4", "anthropic", "0.0054")
    seqs = []
    for mode, event, (headers, body) in [
        ("structured", structured, to_structured(structured)),
        ("binary", binary, to_binary(binary)),
        # A retry of the first: the same id and source, so the same event.
        ("retry", structured, to_structured(structured)),
    ]:
        result = post(headers, body)
        seqs.append(result["seq"])
        print(f"{mode} id={event['id']} seq={result['seq']} duplicate={str(result['duplicate']).lower()}")
    if seqs[2] != seqs[0]:
        sys.exit(f"publish_http: the retry was stored again (seq {seqs[2]}, first {seqs[0]})")
    spent = Decimal(structured.data["cost"]) + Decimal(binary.data["cost"])
    print(f"spent={spent}")
    print(f"last_seq={max(seqs)}")


if __name__ == "__main__":
    main()
