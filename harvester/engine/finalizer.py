"""Sealing a job: parts, ``_failed.jsonl``, ``_manifest.json`` and ``_SUCCESS``.

Exactly one finalizer runs per generation (the ledger's last commit or fail
hands it page 0's lease), and it is safe to run again after it was killed at
any point: it first writes its plan (which members go to which part, and the
manifest it merges into) and, on a rerun, follows the same plan, so the parts
and the manifest come out byte-identical. Timestamps come from the ledger, not
the clock of the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import structlog

from ..core.layout import SEGMENTS_DIR, Commit
from ..core.manifest import (
    FAILED,
    MANIFEST,
    SUCCESS,
    merge_manifest,
    plan_from_json,
    plan_parts,
    plan_to_json,
    shard_entry,
)
from ..edges.ledger import Ledger
from ..edges.store import Store, open_store
from ..errors import OutputDirError

log = structlog.get_logger("harvester.finalizer")


def _iso(timestamp: float) -> str:
    return (datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def read_manifest(store: Store) -> dict[str, Any] | None:
    data = store.read(MANIFEST)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise OutputDirError(f"cannot read {MANIFEST}: {exc}", path=store.location) from None


def finalize(ledger: Ledger, job_id: str, *, part_bytes: int, worker: str = "?") -> str:
    """Seal ``job_id`` if it is waiting to be sealed; returns the job's state after."""
    state = ledger.state(job_id)
    if state.state != "finalizing":
        log.info("finalize.skipped", state=state.state)
        return state.state
    if not ledger.begin_finalize(job_id, worker):
        log.info("finalize.skipped", reason="another finalizer holds the job")
        return state.state
    spec = ledger.spec(job_id)
    store = open_store(spec.output.dir)
    generation = int(ledger.field(job_id, "sealed_gen") or 0) + 1
    finished_at = float(ledger.set_once(job_id, "finished_at", repr(datetime.now().timestamp())))

    plan_name = f"{SEGMENTS_DIR}/{job_id}/seal-{generation}.json"
    saved = store.read(plan_name)
    if saved is not None:
        plan = json.loads(saved.decode("utf-8"))
        log.info("finalize.resumed", generation=generation)
    else:
        plan = _make_plan(ledger, job_id, store, generation, part_bytes)
        store.write(plan_name, json.dumps(plan).encode())
    parts = plan_from_json(plan["parts"])
    already = read_manifest(store)
    if already is not None and already.get("generation") == generation:
        # Killed after the manifest was written: the parts are complete.
        manifest = already
    else:
        manifest = _seal(ledger, job_id, spec, store, plan, parts, generation, finished_at)
    final_state = manifest["state"]
    if final_state == "done" and manifest["pages"]["pending"] == 0:
        store.write(SUCCESS, b"")  # written last: every part and the manifest are in place
    else:
        store.delete(SUCCESS)
    store.flush()

    # The sealed segments go before the job is marked final, so that no worker can
    # append to one of them afterwards (it would start a new segment instead).
    store.remove_segments(plan["segment_paths"])
    ledger.finish(job_id, generation=generation, sealed=plan["segments"], state=final_state)
    store.remove_work(job_id)
    log.info("finalize.done", generation=generation, state=final_state, parts=len(parts))
    return final_state


def _seal(ledger: Ledger, job_id: str, spec: Any, store: Store, plan: dict[str, Any],
          parts: list, generation: int, finished_at: float) -> dict[str, Any]:
    """Write this generation's parts, ``_failed.jsonl`` and the manifest; returns it."""
    new_shards = []
    for part in parts:
        sealed = store.write_part(part.name, part.pieces)
        new_shards.append(shard_entry(part, sealed.sha256, generation))
        ledger.renew_finalizer(job_id)

    failures = ledger.failures(job_id)
    failed_lines = b"".join(
        json.dumps(failures[page], separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for page in sorted(failures))
    store.write(FAILED, failed_lines)

    state = ledger.state(job_id)
    final_state = "cancelled" if state.cancelled else (
        "failed" if state.failed or state.aborted else "done")
    manifest = merge_manifest(
        plan["base"], job_id=job_id, spec=spec.to_dict(), new_shards=new_shards,
        generation=generation, state=final_state, started_at=_iso(state.created_at),
        finished_at=_iso(finished_at), total=state.total, committed=state.committed,
        failed=state.failed, error=state.aborted, capped=state.capped)
    store.write(MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


def _make_plan(ledger: Ledger, job_id: str, store: Store, generation: int,
               part_bytes: int) -> dict[str, Any]:
    base = read_manifest(store)
    if base is not None and base.get("job_id") != job_id:
        raise OutputDirError(f"already holds job {base.get('job_id')}", path=store.location)
    owner = store.claimed_by()
    if owner != job_id:
        raise OutputDirError(f"is claimed by job {owner}, not {job_id}" if owner else
                             "lost its .harvest-job claim (was the dir removed mid-job?)",
                             path=store.location)
    sealed = ledger.sealed_segments(job_id)
    segments = ledger.segments(job_id)
    used_set: set[int] = set()

    def unsealed() -> Iterator[Commit]:
        for commit in ledger.commits(job_id):
            if commit.segment not in sealed:
                used_set.add(commit.segment)
                yield commit

    first_index = len(base["shards"]) if base else 0
    parts = plan_parts(unsealed(), segments, first_index=first_index, part_bytes=part_bytes)
    used = sorted(used_set)
    return {"generation": generation, "base": base, "parts": plan_to_json(parts),
            "segments": used, "segment_paths": [segments[s] for s in used]}
