"""A job's output in a local (or network-mounted) directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from ...core.layout import CLAIM_FILE, SEGMENTS_DIR, Piece, SealedPart
from ...errors import StorageError
from ..outdir import check_output_dir, claim_output_dir, inside
from ..storage import SegmentWriter, fsync_dir, write_part
from .base import Store


class LocalStore(Store):
    def __init__(self, directory: str | Path):
        self.root = Path(directory)
        self.location = str(self.root)

    def check_new(self, job_path: str | None = None) -> None:
        check_output_dir(self.root, job_path)

    def claim(self, job_id: str, job_path: str | None = None) -> None:
        self.root = claim_output_dir(self.root, job_id, job_path)
        self.location = str(self.root)

    def claimed_by(self) -> str | None:
        data = self.read(CLAIM_FILE)
        return data.decode(errors="replace").strip() if data is not None else None

    def read(self, name: str) -> bytes | None:
        try:
            return inside(self.root, name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read: {exc.strerror or exc}",
                               path=str(self.root / name)) from None

    def write(self, name: str, data: bytes) -> None:
        path = inside(self.root, name)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except OSError as exc:
            raise StorageError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None

    def delete(self, name: str) -> None:
        inside(self.root, name).unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return inside(self.root, name).exists()

    def flush(self) -> None:
        fsync_dir(self.root)

    def segment_writer(self, relative: str, *, fsync: bool) -> SegmentWriter:
        return SegmentWriter(inside(self.root, relative), fsync=fsync)

    def remove_segments(self, relatives: list[str]) -> None:
        for relative in relatives:
            inside(self.root, relative).unlink(missing_ok=True)

    def remove_work(self, job_id: str) -> None:
        work_dir = self.root / SEGMENTS_DIR / job_id
        shutil.rmtree(work_dir, ignore_errors=True)
        try:
            work_dir.parent.rmdir()  # .segments, once no job of this dir has any left
        except OSError:
            pass

    def write_part(self, name: str, pieces: list[Piece]) -> SealedPart:
        return write_part(self.root, name, pieces)

    def stream(self, name: str) -> Iterator[bytes] | None:
        path = inside(self.root, name)
        if not path.exists():
            return None
        return _blocks(path)


def _blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            yield block
