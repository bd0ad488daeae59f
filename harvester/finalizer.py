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
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from .errors import OutputDirError
from .ledger import Ledger
from .manifest import (FAILED, MANIFEST, SUCCESS, merge_manifest, plan_from_json, plan_parts,
                       plan_to_json, shard_entry)
from .outdir import CLAIM_FILE, inside
from .storage import SEGMENTS_DIR, fsync_dir, write_part

log = structlog.get_logger("harvester.finalizer")


def _iso(timestamp: float) -> str:
    return (datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputDirError(f"cannot read {MANIFEST}: {exc}", path=str(out_dir)) from None


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
    out_dir = Path(spec.output.dir)
    work_dir = out_dir / SEGMENTS_DIR / job_id
    work_dir.mkdir(parents=True, exist_ok=True)
    generation = int(ledger.field(job_id, "sealed_gen") or 0) + 1
    finished_at = float(ledger.set_once(job_id, "finished_at", repr(datetime.now().timestamp())))

    plan_file = work_dir / f"seal-{generation}.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        log.info("finalize.resumed", generation=generation)
    else:
        plan = _make_plan(ledger, job_id, out_dir, generation, part_bytes)
        write_atomically(plan_file, json.dumps(plan).encode())
    parts = plan_from_json(plan["parts"])
    already = read_manifest(out_dir)
    if already is not None and already.get("generation") == generation:
        # Killed after the manifest was written: the parts are complete.
        manifest = already
    else:
        manifest = _seal(ledger, job_id, spec, out_dir, plan, parts, generation, finished_at)
    final_state = manifest["state"]
    success = out_dir / SUCCESS
    if final_state == "done" and manifest["pages"]["pending"] == 0:
        success.touch()
    else:
        success.unlink(missing_ok=True)
    fsync_dir(out_dir)

    # The sealed segments go before the job is marked final, so that no worker can
    # append to one of them afterwards (it would start a new segment instead).
    for relative in plan["segment_paths"]:
        inside(out_dir, relative).unlink(missing_ok=True)
    ledger.finish(job_id, generation=generation, sealed=plan["segments"], state=final_state)
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        work_dir.parent.rmdir()  # .segments, once no job of this dir has any left
    except OSError:
        pass
    log.info("finalize.done", generation=generation, state=final_state, parts=len(parts))
    return final_state


def _seal(ledger: Ledger, job_id: str, spec: Any, out_dir: Path, plan: dict[str, Any],
          parts: list, generation: int, finished_at: float) -> dict[str, Any]:
    """Write this generation's parts, ``_failed.jsonl`` and the manifest; returns it."""
    new_shards = []
    for part in parts:
        sealed = write_part(out_dir, part.name, part.pieces)
        new_shards.append(shard_entry(part, sealed.sha256, generation))
        ledger.renew_finalizer(job_id)

    failures = ledger.failures(job_id)
    failed_lines = b"".join(
        json.dumps(failures[page], separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for page in sorted(failures))
    write_atomically(out_dir / FAILED, failed_lines)

    state = ledger.state(job_id)
    final_state = "cancelled" if state.cancelled else (
        "failed" if state.failed or state.aborted else "done")
    manifest = merge_manifest(
        plan["base"], job_id=job_id, spec=spec.to_dict(), new_shards=new_shards,
        generation=generation, state=final_state, started_at=_iso(state.created_at),
        finished_at=_iso(finished_at), total=state.total, committed=state.committed,
        failed=state.failed, error=state.aborted, capped=state.capped)
    write_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


def _make_plan(ledger: Ledger, job_id: str, out_dir: Path, generation: int,
               part_bytes: int) -> dict[str, Any]:
    base = read_manifest(out_dir)
    if base is not None and base.get("job_id") != job_id:
        raise OutputDirError(f"already holds job {base.get('job_id')}", path=str(out_dir))
    claim = out_dir / CLAIM_FILE
    owner = claim.read_text(errors="replace").strip() if claim.exists() else None
    if owner != job_id:
        raise OutputDirError(f"is claimed by job {owner}, not {job_id}" if owner else
                             "lost its .harvest-job claim (was the dir removed mid-job?)",
                             path=str(out_dir))
    sealed = ledger.sealed_segments(job_id)
    commits = [c for c in ledger.commits(job_id) if c.segment not in sealed]
    segments = ledger.segments(job_id)
    first_index = len(base["shards"]) if base else 0
    parts = plan_parts(commits, segments, first_index=first_index, part_bytes=part_bytes)
    used = sorted({c.segment for c in commits})
    return {"generation": generation, "base": base, "parts": plan_to_json(parts),
            "segments": used, "segment_paths": [segments[s] for s in used]}
