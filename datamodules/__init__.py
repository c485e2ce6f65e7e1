"""Data for voice2face: the dataset format (shards.py) and the shared DataModule.

``VoiceFaceDataModule`` is imported on first use, so that writers of shards (the synthetic
world, prepare) do not pay for importing torch and Lightning.
"""

from datamodules.shards import DataFormatError, read_manifest

__all__ = ["DataFormatError", "VoiceFaceDataModule", "read_manifest"]


def __getattr__(name):
    if name == "VoiceFaceDataModule":
        from datamodules.voiceface import VoiceFaceDataModule
        return VoiceFaceDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
