"""Reading a harvest's output back, independently of the harvester's own code."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path


def read_pages(out_dir: Path) -> tuple[Counter, dict[int, dict]]:
    """Every line of every shard: how often each page occurs, and its last line."""
    counts: Counter = Counter()
    lines: dict[int, dict] = {}
    for shard in sorted(out_dir.glob("part-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            for raw in handle:
                line = json.loads(raw)
                counts[line["page"]] += 1
                lines[line["page"]] = line
    return counts, lines


def assert_exactly_once(out_dir: Path, pages: range | list[int], *, per_page: int = 5) -> None:
    """Each expected page appears exactly once, with the demo API's body for it."""
    counts, lines = read_pages(out_dir)
    doubled = {page: n for page, n in counts.items() if n != 1}
    assert not doubled, f"pages written more than once: {sorted(doubled)[:20]}"
    assert sorted(counts) == sorted(pages), (
        f"missing {sorted(set(pages) - set(counts))[:20]}, extra {sorted(set(counts) - set(pages))[:20]}")
    for page, line in lines.items():
        assert line["status"] == 200
        body = line["body"]
        assert body["meta"]["page"] == page, f"page {page} holds the body of {body['meta']['page']}"
        first_id = (page - 1) * per_page + 1
        assert [r["id"] for r in body["data"]] == list(range(first_id, first_id + per_page))


def manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "_manifest.json").read_text())


def failed_lines(out_dir: Path) -> list[dict]:
    path = out_dir / "_failed.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
