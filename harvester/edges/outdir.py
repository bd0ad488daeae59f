"""The output directory: which one a job may write, and claiming it.

A harvest writes files it names itself (parts, manifest, ``_failed.jsonl``,
``_SUCCESS``) into its directory, so the directory must be one no one else's
data lives in. Refused, naming the path (exit 2):

- a system directory (``/``, ``/etc``, ``/usr``...) or the home directory itself;
- a target that is a symbolic link (the data would land wherever it points);
- a path that exists and is not a directory;
- a directory that is not empty: another job's output (it names the job) or
  anything else (it names a few of the entries).

Paths inside the directory that come from the ledger (segment paths) are
checked to stay inside it (:func:`inside`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..core.layout import CLAIM_FILE
from ..errors import JobSpecError, OutputDirError, StorageError

MANIFEST = "_manifest.json"
SYSTEM_DIRS = frozenset(map(Path, (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
    "/var", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share", "/var/lib",
    "/var/log", "/var/tmp")))


def check_output_dir(directory: str | Path, job_path: str | None = None) -> Path:
    """Check ``directory`` can take a new job's output; returns it resolved.

    Creates it (and its parents) when missing, and proves it writable.
    """
    given = Path(directory)
    if not given.is_absolute():
        given = Path.cwd() / given
    if given.is_symlink():
        raise OutputDirError(f"is a symbolic link (to {os.readlink(given)}); give the real"
                             " directory instead", path=str(given))
    out_dir = given.resolve()
    if out_dir in SYSTEM_DIRS or out_dir == Path.home().resolve() or out_dir.parent == out_dir:
        raise OutputDirError("is a system directory; give a directory of its own for the"
                             " harvest, e.g. data/<job name>", path=str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError("exists and is not a directory", path=str(out_dir))
    if out_dir.is_dir():
        _refuse_if_used(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as exc:
        raise JobSpecError(f"output dir {out_dir} is not writable: {exc.strerror or exc}",
                           path=job_path, key="output.dir") from None
    return out_dir


def _refuse_if_used(out_dir: Path) -> None:
    try:
        entries = sorted(entry.name for entry in os.scandir(out_dir)
                         if not entry.name.startswith(".probe-"))
    except OSError as exc:
        raise OutputDirError(f"cannot be read: {exc.strerror or exc}", path=str(out_dir)) from None
    if not entries:
        return
    if CLAIM_FILE in entries:
        raise in_use(out_dir)
    if MANIFEST in entries:
        raise OutputDirError(f"already holds the output of another job ({_manifest_job(out_dir)});"
                             " choose another output.dir or remove it", path=str(out_dir))
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise OutputDirError(f"is not empty ({shown}); a harvest writes into an empty or new"
                         " directory only, so nothing of yours is overwritten", path=str(out_dir))


def _manifest_job(out_dir: Path) -> str:
    import json

    try:
        return str(json.loads((out_dir / MANIFEST).read_text(encoding="utf-8")).get("job_id"))
    except (OSError, ValueError, AttributeError):
        return "unreadable manifest"


def in_use(out_dir: Path) -> OutputDirError:
    owner = (out_dir / CLAIM_FILE).read_text(errors="replace").strip()[:200]
    return OutputDirError(f"is in use by job {owner}; choose another output.dir, or remove"
                          f" {CLAIM_FILE} if that job is gone", path=str(out_dir))


def claim_output_dir(directory: str | Path, job_id: str, job_path: str | None = None) -> Path:
    """Check and claim the output dir for ``job_id``: an exclusive create, so two jobs
    can never write one dir even when they start at the same moment."""
    out_dir = check_output_dir(directory, job_path)
    try:
        fd = os.open(out_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise in_use(out_dir) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(job_id + "\n")
    return out_dir


def inside(out_dir: Path, relative: str) -> Path:
    """``out_dir / relative``, refusing a path (from the ledger) that leaves ``out_dir``."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
        raise StorageError(f"refusing path {relative!r}: it would leave the output dir",
                           path=str(out_dir))
    return out_dir / candidate
