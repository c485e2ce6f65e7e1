"""Facts that several parts of the suite must agree on, stated once.

Standard library only: the data pipeline, the commands and make (through
``python -m voice2face.registry``) read them without importing torch.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_RATE = 16_000  # Hz: every waveform in shards, features and generate's input after resampling

PRETRAINED_DIR = "pretrained"  # DATA/pretrained/: the pretrained nets made for that data
JUDGE_FILE = "face.ckpt"       # the `face` checkpoint that evaluation measures with


def pretrained_dir(data: str | Path) -> Path:
    """Where the pretrained nets of the data at ``data`` live (``paths.pretrained``)."""
    return Path(data) / PRETRAINED_DIR


def default_judge(data: str | Path) -> Path:
    """The evaluation judge of the data at ``data`` (``eval.judge``'s default)."""
    return pretrained_dir(data) / JUDGE_FILE
