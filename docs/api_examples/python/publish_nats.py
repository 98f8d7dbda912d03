#!/usr/bin/env python3
"""Publish an LLM call straight to the Kairos stream on NATS JetStream, with nats-py.

What a producer beside NATS does instead of POST /v1/events (see docs/events.md):

- the event is a CloudEvent in structured JSON, built with the CloudEvents SDK;
- it goes to the subject `<prefix>.events.<category>.<project>`, where `<category>` is the
  second token of its type (`llm` for `kairos.llm.call.completed.v1`) and `<project>` its
  `subject` attribute;
- it is published with JetStream (the stream acknowledges it with its sequence) and with the
  header `Nats-Msg-Id` = lowercase hex SHA-256 of `source`, one NUL byte, `id`: the identity
  Kairos gives it, so that a retry inside the stream's duplicate window is not stored again.

The event is published twice, the second time as a retry: JetStream answers `duplicate` with
the first one's sequence, and Kairos counts the call once. Nothing checks an event published on
NATS before it is stored (POST /v1/events does): a projection that cannot validate it
dead-letters it (docs/operations.md), so build events that match events-schema/.

Prints `subject=<subject> id=<id> msg_id=<msg id>`, then `published seq=<seq> duplicate=false`
and `retry seq=<seq> duplicate=true`, `spent=<cost>` and `last_seq=<seq>`. Exits 1 on failure.

Environment:
  KAIROS_NATS_URL             the NATS server (default nats://127.0.0.1:4222)
  KAIROS_NATS_STREAM          the events stream (default KAIROS_EVENTS)
  KAIROS_NATS_SUBJECT_PREFIX  the subject prefix (default kairos)
  KAIROS_NATS_USER, KAIROS_NATS_PASSWORD
                              a producer's credentials, for a locked-down server (nats.conf)
  PROJECT                     the project the call is billed to (default python-examples)
  NOW                         RFC 3339 instant the call happened (default: now)

    .kairos/venv/bin/python docs/api_examples/python/publish_nats.py
"""

import asyncio
import hashlib
import os
import sys
from datetime import datetime, timezone

import nats
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

NATS_URL = os.environ.get("KAIROS_NATS_URL", "nats://127.0.0.1:4222")
STREAM = os.environ.get("KAIROS_NATS_STREAM", "KAIROS_EVENTS")
PREFIX = os.environ.get("KAIROS_NATS_SUBJECT_PREFIX", "kairos")
PROJECT = os.environ.get("PROJECT", "python-examples")
NOW = os.environ.get("NOW") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
SOURCE = "api-examples/python/publish_nats"


def msg_id(source: str, event_id: str) -> str:
    """The event's identity as Kairos writes it in Nats-Msg-Id (docs/events.md)."""
    return hashlib.sha256(source.encode() + b"\x00" + event_id.encode()).hexdigest()


def nats_subject(event: CloudEvent) -> str:
    """`<prefix>.events.<category>.<project>` (`_global` for an event without a subject)."""
    category = event["type"].split(".")[1] if event["type"].startswith("kairos.") else "ext"
    return f"{PREFIX}.events.{category}.{event.get('subject') or '_global'}"


def describe(e: BaseException) -> str:
    """What went wrong, in JetStream's words when it said something."""
    return getattr(e, "description", None) or repr(e)


async def ignore(_: Exception) -> None:
    """nats-py logs every failed connection attempt with a traceback unless given a callback;
    the failure that matters is reported once, below."""


async def main() -> None:
    event = CloudEvent(
        {
            "type": "kairos.llm.call.completed.v1",
            "source": SOURCE,
            "subject": PROJECT,
            "time": NOW,
            "datacontenttype": "application/json",
        },
        {
            "project": PROJECT,
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input_tokens": 1250,
            "output_tokens": 310,
            "cost": "0.0003735",
            "latency_ms": 842,
            "status": "ok",
        },
    )
    subject = nats_subject(event)
    headers = {
        "Nats-Msg-Id": msg_id(event["source"], event["id"]),
        "Content-Type": "application/cloudevents+json",
    }
    print(f"subject={subject} id={event['id']} msg_id={headers['Nats-Msg-Id']}")

    options = {
        "servers": [NATS_URL],
        "connect_timeout": 5,
        "max_reconnect_attempts": 2,
        "error_cb": ignore,
    }
    if os.environ.get("KAIROS_NATS_USER"):
        options["user"] = os.environ["KAIROS_NATS_USER"]
        options["password"] = os.environ.get("KAIROS_NATS_PASSWORD", "")
    try:
        nc = await nats.connect(**options)
    except (OSError, NatsError) as e:
        sys.exit(f"publish_nats: cannot connect to NATS at {NATS_URL}: {describe(e)}")
    try:
        js = nc.jetstream()
        payload = to_json(event)
        # stream=: JetStream refuses the message unless this stream stores the subject.
        first = await js.publish(subject, payload, stream=STREAM, headers=headers, timeout=10)
        print(f"published seq={first.seq} duplicate={str(bool(first.duplicate)).lower()}")
        retry = await js.publish(subject, payload, stream=STREAM, headers=headers, timeout=10)
        print(f"retry seq={retry.seq} duplicate={str(bool(retry.duplicate)).lower()}")
    except (TimeoutError, JetStreamError, NatsError) as e:
        sys.exit(f"publish_nats: JetStream did not store the event on {subject} (stream {STREAM}): {describe(e)}")
    finally:
        await nc.close()
    if not retry.duplicate or retry.seq != first.seq:
        sys.exit(f"publish_nats: the retry was stored again (seq {retry.seq}, first {first.seq})")
    print(f"spent={event.data['cost']}")
    print(f"last_seq={first.seq}")


if __name__ == "__main__":
    asyncio.run(main())
