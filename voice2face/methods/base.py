"""What every method shares: its config, the facts of its data, and its checkpoint identity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from voice2face.errors import UserError

CHECKPOINT_FORMAT = 1


def data_info(datamodule) -> dict[str, Any]:
    """The facts of a dataset that a method sizes its nets by and its checkpoint records."""
    table = [(i["index"], i["name"], i["split"]) for i in datamodule.identities]
    fingerprint = hashlib.sha1(json.dumps(table, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"root": str(datamodule.root), "num_train_identities": datamodule.num_train_identities,
            "face_size": datamodule.face_size, "fingerprint": fingerprint,
            "kind": datamodule.manifest.get("kind", "unknown")}


class MethodModule(L.LightningModule):
    """Base LightningModule of the suite.

    Subclasses are built as ``Cls(cfg, data)``: ``cfg`` is the whole resolved config as a
    plain dict (``cfg["model"]``, ``cfg["optim"]``, ...), ``data`` is ``data_info(dm)``.
    Both are saved as hyperparameters, so ``load_method`` rebuilds the module from a
    checkpoint alone.
    """

    name: ClassVar[str] = "?"
    # optimizer steps per training batch: Lightning's global_step counts each of them
    steps_per_batch: ClassVar[int] = 1
    # val_dataloader returns [samples, gallery] for methods that embed real faces there
    val_gallery: ClassVar[bool] = False

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "data": data})
        self.cfg, self.data_info = cfg, data

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["voice2face"] = {"method": self.name, "format": CHECKPOINT_FORMAT,
                                    "data": self.data_info}

    def post_fit(self, run_dir: Path, checkpoint: Path, datamodule) -> str | None:
        """Work after training (e.g. evaluation); returns a line for the user, or None."""
        return None


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, or not of the expected method or data."""


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a .ckpt file (a run "
                              f"folder keeps them in {path / 'checkpoints'}/)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    meta = ckpt.get("voice2face") if isinstance(ckpt, dict) else None
    if meta is None or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a voice2face checkpoint (format {CHECKPOINT_FORMAT}); "
                              f"found keys {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)}")
    return meta


def load_method(path: str | Path, expect: str | tuple[str, ...] | None = None,
                map_location: str = "cpu") -> MethodModule:
    """The trained module of a checkpoint; ``expect`` names the method(s) it must be."""
    from voice2face.methods import METHODS
    meta = read_checkpoint_meta(path)
    method = meta["method"]
    expected = (expect,) if isinstance(expect, str) else expect
    if expected and method not in expected:
        raise CheckpointError(f"{path}: a checkpoint of method {method!r}, expected "
                              f"{' or '.join(map(repr, expected))}")
    if method not in METHODS:
        raise CheckpointError(f"{path}: method {method!r} is not registered ({sorted(METHODS)})")
    module = METHODS[method].load_from_checkpoint(path, map_location=map_location)
    module.eval()
    return module
