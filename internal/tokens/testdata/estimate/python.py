"""Summarize gateway usage records into a monthly chargeback report.

Reads newline-delimited JSON usage records (as written by the file sink),
groups them by team and model, applies the price list, and writes a CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

PRICES = {
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
}


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    models: set[str] = field(default_factory=set)

    def add(self, record: dict) -> None:
        tokens = record.get("tokens", {})
        prompt = int(tokens.get("prompt", 0))
        cached = int(tokens.get("cached_prompt", 0))
        completion = int(tokens.get("completion", 0))
        self.requests += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        model = record.get("model", "unknown")
        self.models.add(model)
        price_in, price_cached, price_out = PRICES.get(model, (0.0, 0.0, 0.0))
        self.cost += (
            (prompt - cached) * price_in + cached * price_cached + completion * price_out
        ) / 1_000_000


def read_records(paths: Iterable[Path]) -> Iterator[dict]:
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    print(f"{path}:{lineno}: skipping bad record: {exc}", file=sys.stderr)


def in_month(record: dict, year: int, month: int) -> bool:
    start = record.get("start")
    if not start:
        return False
    when = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(timezone.utc)
    return when.year == year and when.month == month


def summarize(records: Iterable[dict], year: int, month: int) -> dict[tuple[str, str], Totals]:
    totals: dict[tuple[str, str], Totals] = defaultdict(Totals)
    for record in records:
        if not in_month(record, year, month):
            continue
        caller = record.get("caller", {})
        key = (caller.get("team") or "(none)", record.get("model", "unknown"))
        totals[key].add(record)
    return totals


def write_report(totals: dict[tuple[str, str], Totals], out) -> None:
    writer = csv.writer(out)
    writer.writerow(["team", "model", "requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd"])
    for (team, model), t in sorted(totals.items()):
        writer.writerow([team, model, t.requests, t.prompt_tokens, t.cached_tokens, t.completion_tokens, f"{t.cost:.2f}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="usage record files (NDJSON)")
    parser.add_argument("--month", required=True, help="YYYY-MM")
    args = parser.parse_args(argv)
    try:
        year, month = (int(x) for x in args.month.split("-"))
    except ValueError:
        parser.error(f"--month must be YYYY-MM, not {args.month!r}")
    totals = summarize(read_records(args.files), year, month)
    if not totals:
        print("no records for that month", file=sys.stderr)
        return 1
    write_report(totals, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
