#!/usr/bin/env python3
"""Print every project's budget and spend for a month, as a table, from GET /v1/budgets.

Follows the pages (`next_after`) to the end. Amounts are the API's exact decimal strings,
summed here with `decimal`, never floats.

    .kairos/venv/bin/python docs/api_examples/python/read_budgets.py [--period 2026-11] [--min-seq N]

--min-seq waits until the budgets projection has applied that stream sequence (what a publisher
printed as last_seq), so the table includes what it published. Exits 1 on any error answer.

Environment: KAIROS_URL (default http://127.0.0.1:8080), KEY (default
$KAIROS_BOOTSTRAP_ADMIN_KEY): any key with read_projections.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal

URL = os.environ.get("KAIROS_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("KEY") or os.environ.get("KAIROS_BOOTSTRAP_ADMIN_KEY", "")


def get(path: str, **query) -> dict:
    """GETs `path` with the key; the JSON answer, or exits with the error."""
    query = {k: v for k, v in query.items() if v is not None}
    url = f"{URL}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        sys.exit(f"read_budgets: GET {path} answered {e.code}: {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"read_budgets: cannot reach Kairos at {URL}: {e.reason} (make run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", help="YYYY-MM (default: the current month)")
    parser.add_argument("--min-seq", type=int, help="wait for the budgets projection to reach it")
    args = parser.parse_args()
    if not KEY:
        sys.exit("read_budgets: set KEY to an API key (make run puts KAIROS_BOOTSTRAP_ADMIN_KEY in .kairos/env)")

    budgets, after, period = [], None, args.period
    while True:
        page = get("/v1/budgets", period=period, limit=1000, after=after, min_seq=args.min_seq)
        budgets += page["budgets"]
        period = page["period"]
        after = page["next_after"]
        if after is None:
            break

    columns = ["project", "limit", "spent", "remaining", "status", "calls"]
    rows = [[str("-" if b[c] is None else b[c]) for c in columns] for b in budgets]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print(f"budgets for {period}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        # Text left, numbers right.
        print("  ".join(v.ljust(w) if i in (0, 4) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    total = sum((Decimal(b["spent"]) for b in budgets), Decimal(0))
    print(f"{len(budgets)} projects, {total} USD spent")


if __name__ == "__main__":
    main()
