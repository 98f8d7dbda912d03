#!/usr/bin/env python3
"""Print model analytics as tables: calls, errors, cost and latency per model.

Reads GET /v1/analytics/models (one row per bucket, project, model and provider, in hour buckets
by default) and, for a project, GET /v1/analytics/projects/{project} (its totals per model and
overall, latency percentiles merged from the buckets' sketches). Both over the 24 hours before
now unless --from / --to say otherwise.

    .kairos/venv/bin/python docs/api_examples/python/read_analytics.py [--project P] [--bucket hour] \
        [--from RFC3339] [--to RFC3339] [--min-seq N]

Exits 1 on any error answer. Environment: KAIROS_URL (default http://127.0.0.1:8080), KEY
(default $KAIROS_BOOTSTRAP_ADMIN_KEY): any key with read_projections; PROJECT is the default of
--project.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

URL = os.environ.get("KAIROS_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("KEY") or os.environ.get("KAIROS_BOOTSTRAP_ADMIN_KEY", "")


def get(path: str, **query) -> dict:
    """GETs `path` with the key; the JSON answer, or exits with the error."""
    query = {k: v for k, v in query.items() if v is not None}
    url = f"{URL}{urllib.parse.quote(path)}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        sys.exit(f"read_analytics: GET {path} answered {e.code}: {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"read_analytics: cannot reach Kairos at {URL}: {e.reason} (make run)")


def table(columns: list, rows: list) -> None:
    """Prints rows under their column names, the first column left-aligned, the others right."""
    rows = [[str(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(values: list) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    print(line(columns))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def figures(m: dict) -> list:
    """The figures of a bucket or a total, as table cells."""
    p = m["latency_ms"] or {}

    def ms(k: str) -> str:
        return "-" if p.get(k) is None else f"{p[k]:.0f}"

    return [m["calls"], m["errors"], f"{m['error_rate']:.1%}", m["input_tokens"], m["output_tokens"],
            m["cost"], ms("p50"), ms("p95"), ms("p99")]


FIGURES = ["calls", "errors", "err%", "in_tok", "out_tok", "cost", "p50_ms", "p95_ms", "p99_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("PROJECT"), help="only this project")
    parser.add_argument("--bucket", default="hour", choices=["minute", "hour", "day"])
    parser.add_argument("--from", dest="start", help="RFC 3339 (default: 24 h before --to)")
    parser.add_argument("--to", dest="end", help="RFC 3339 (default: now)")
    parser.add_argument("--min-seq", type=int, help="wait for the analytics projection to reach it")
    args = parser.parse_args()
    if not KEY:
        sys.exit("read_analytics: set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)")

    models = get("/v1/analytics/models", project=args.project, bucket=args.bucket,
                 **{"from": args.start, "to": args.end, "min_seq": args.min_seq})
    print(f"models, {models['bucket']} buckets, {models['from']} to {models['to']}")
    table(["start", "project", "model", "provider"] + FIGURES,
          [[i["start"], i["project"], i["model"], i["provider"]] + figures(i) for i in models["items"]])

    if args.project:
        totals = get(f"/v1/analytics/projects/{args.project}",
                     **{"from": args.start, "to": args.end, "min_seq": args.min_seq})
        print(f"\nproject {totals['project']}, {totals['from']} to {totals['to']}")
        table(["model", "providers"] + FIGURES,
              [[m["model"], ",".join(m["providers"])] + figures(m) for m in totals["models"]]
              + [["total", ""] + figures(totals["total"])])
    print(f"\nlatency percentiles within {models['latency_relative_error']:.0%} of the exact ones")


if __name__ == "__main__":
    main()
