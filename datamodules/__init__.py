"""Data for voice2face: the dataset format (shards.py) and the shared DataModule."""

from datamodules.shards import DataFormatError, read_manifest
from datamodules.voiceface import VoiceFaceDataModule

__all__ = ["DataFormatError", "VoiceFaceDataModule", "read_manifest"]
