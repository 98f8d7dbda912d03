#!/usr/bin/env python3
"""Hello agent: a small agent that reports to Kairos. The tutorial is docs/tutorials/hello-agent.md.

The agent runs a three-task workflow, plan -> draft -> review. For each task it:

  1. asks the router which model to use (POST /v1/route);
  2. reports that the task started (kairos.task.started.v1);
  3. "calls" the model (simulated: no real LLM) and reports the call with the route's
     decision_id (kairos.llm.call.completed.v1), which settles the route's reservation;
  4. reports that the task completed (kairos.task.completed.v1).

It runs the workflow RUNS times, each run a session of its own. Then it starts one more session,
SESSION, does plan and draft, and asks Kairos what comes next
(GET /v1/workflows/sessions/{session}/suggestions). Every event is built with the CloudEvents SDK
and POSTed to /v1/events in structured mode. Exits 1 on any failure.

Environment:
  KAIROS_URL  where Kairos listens (default http://127.0.0.1:8080)
  KEY         an API key that may publish and route (default $KAIROS_BOOTSTRAP_ADMIN_KEY)
  PROJECT     the project (default hello-agent)
  NOW         RFC 3339 instant the events happened (default: now)
  SESSION     the id of the session it asks about (default: a fresh one)

    KAIROS_PYTHON=$(scripts/pyenv.sh) && "$KAIROS_PYTHON" examples/hello_agent.py
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone

from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

URL = os.environ.get("KAIROS_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("KEY") or os.environ.get("KAIROS_BOOTSTRAP_ADMIN_KEY", "")
PROJECT = os.environ.get("PROJECT", "hello-agent")
NOW = os.environ.get("NOW") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
SESSION = os.environ.get("SESSION") or f"hello-{uuid.uuid4().hex[:8]}"
SOURCE = "examples/hello-agent"
ACTOR = "agent:hello"

# The workflow, and the tokens each task's prompt and answer take (made up).
WORKFLOW = [("plan", 800, 200), ("draft", 2400, 900), ("review", 3000, 300)]
RUNS = 3


def fail(message: str) -> None:
    sys.exit(f"hello_agent: {message}")


def http(method: str, path: str, body=None, headers=None) -> dict:
    """One request to Kairos with the key; the JSON answer, or exits on an error status."""
    data = None
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    elif body is not None:
        data = body
    request = urllib.request.Request(f"{URL}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        fail(f"{method} {path} answered {e.code}: {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        fail(f"cannot reach Kairos at {URL}: {e.reason} (is `make run` running?)")


def publish(event: CloudEvent) -> int:
    """POSTs one event in structured mode; its stream sequence once JetStream stored it."""
    headers, body = to_structured(event)
    answer = http("POST", "/v1/events", body, headers)
    result = answer["results"][0]
    if result["status"] != "accepted":
        fail(f"{event['type']} was not stored: {json.dumps(result)}")
    return result["seq"]


def event(ty: str, data: dict) -> CloudEvent:
    """A Kairos event of PROJECT; the SDK fills in specversion and a fresh id."""
    attributes = {
        "type": ty,
        "source": SOURCE,
        "subject": PROJECT,
        "time": NOW,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, {"project": PROJECT, **data})


def route(task: str, input_tokens: int, output_tokens: int) -> dict:
    """Asks the router which model this task's call should use."""
    return http(
        "POST",
        "/v1/route",
        {
            "project": PROJECT,
            "input_tokens": input_tokens,
            "expected_output_tokens": output_tokens,
            "max_output_tokens": 2 * output_tokens,
            "task": task,
        },
    )


def run_task(session: str, n: int, task: str, input_tokens: int, output_tokens: int) -> int:
    """One task: route, started, the (simulated) LLM call, completed. The last event's seq."""
    decision = route(task, input_tokens, output_tokens)
    task_id = f"t{n}"
    ids = {"workflow_id": session, "task_id": task_id, "task_type": task}
    publish(event("kairos.task.started.v1", {**ids, "actor": ACTOR}))

    # A real agent would call decision["model"] here. This one makes up the answer's size.
    call = event(
        "kairos.llm.call.completed.v1",
        {
            "model": decision["model"],
            "provider": decision["provider"],
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "latency_ms": 900,
            "status": "ok",
            "decision_id": decision["decision_id"],
            "session_id": session,
            "workflow_id": session,
            "actor": ACTOR,
        },
    )
    call_seq = publish(call)

    done = {**ids, "status": "ok", "duration_ms": 1000, "actor": ACTOR}
    seq = publish(event("kairos.task.completed.v1", done))
    print(
        f"  {task}: model={decision['model']} outcome={decision['outcome']} "
        f"reserved={decision.get('reserved', '0')} decision={decision['decision_id']} "
        f"call_seq={call_seq}"
    )
    return seq


def run_workflow(session: str, tasks) -> int:
    print(f"session {session}")
    seq = 0
    for n, (task, input_tokens, output_tokens) in enumerate(tasks, start=1):
        seq = run_task(session, n, task, input_tokens, output_tokens)
    return seq


def main() -> None:
    if not KEY:
        fail("set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)")

    # A budget, so that each route holds a reservation until its call settles it.
    project = urllib.parse.quote(PROJECT)
    http("PUT", f"/v1/projects/{project}/budget", {"monthly_limit": "5.00", "warn_at_percent": 80})
    print(f"budget of {PROJECT}: 5.00 a month")

    # Past runs of the workflow, so that Kairos has something to learn from.
    for run in range(1, RUNS + 1):
        run_workflow(f"{SESSION}-past-{run}", WORKFLOW)

    # This run does plan and draft, then asks what comes next.
    last_seq = run_workflow(SESSION, WORKFLOW[:2])
    answer = http(
        "GET",
        f"/v1/workflows/sessions/{urllib.parse.quote(SESSION)}/suggestions"
        f"?project={project}&k=3&min_seq={last_seq}",
    )
    if not answer["suggestions"]:
        fail(f"no suggestion for {SESSION}: {json.dumps(answer)}")
    print(f"after {' -> '.join(answer['recent_tasks'])}, Kairos suggests:")
    for s in answer["suggestions"]:
        what = "end the session" if s["end"] else s["task"]
        print(f"  {what} (p={s['probability']:.2f}): {s['because']['text']}")
    first = answer["suggestions"][0]
    print(f"session={SESSION} next={first['task']} last_seq={last_seq}")


if __name__ == "__main__":
    main()
