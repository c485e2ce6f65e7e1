"""Files that are whole or absent: written to a temporary file in the destination folder,
fsynced, then renamed over the target (a rename within one filesystem is atomic, a copy
from another is not). A full disk ends in ``DiskFull``, one line saying what is needed and
what is intact; never in a truncated file that a resume would pick up.

``AtomicCheckpointIO`` is Lightning's checkpoint writer made so: every checkpoint of a run
(``last.ckpt``, ``stepNNNNNN.ckpt``, ``final.ckpt``) goes through it.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from voice2face.errors import UserError


class DiskFull(UserError, OSError):
    """No room for a file; the message says how much and what was kept."""


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def disk_full(path: Path, size: int) -> DiskFull:
    folder = path.parent
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    kept = sorted(p.name for p in folder.glob(f"*{path.suffix}") if p.is_file()) if path.suffix else []
    return DiskFull(f"no space left on the device of {folder} to write {path.name}: "
                    f"{_megabytes(size)} needed, {_megabytes(free)} free"
                    + (f"; the files already there are intact ({', '.join(kept)})" if kept else ""))


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """``data`` to ``path``, atomically (temporary file beside it, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = len(data)
    if shutil.disk_usage(path.parent).free < size:
        raise disk_full(path, size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, size) from None
        raise
    _fsync_folder(path.parent)


def copy_file(source: str | Path, target: str | Path) -> None:
    """``source`` copied to ``target`` atomically."""
    write_bytes(target, Path(source).read_bytes())


def _fsync_folder(folder: Path) -> None:
    """The rename itself made durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` of a checkpoint, written with ``write_bytes``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getbuffer())
