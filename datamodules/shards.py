"""Shard and manifest I/O for the voice2face dataset format (docs/data.md).

A dataset folder holds ``manifest.json`` and ``shards/``. Sample shards pair one utterance
with several faces of the same identity; gallery shards hold every face image once. Every
shard and the manifest are written to a temporary name and renamed into place, so an
interrupted run never leaves a file that looks whole.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image

from voice2face.constants import SAMPLE_RATE
from voice2face.errors import UserError

FORMAT_VERSION = 1
SAMPLE_SPLITS = ("train", "known", "val", "test")
GALLERY_SPLITS = ("train", "val", "test")
IDENTITY_SPLITS = ("train", "val", "test")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class DataFormatError(UserError, ValueError):
    """A dataset folder, shard or shard member is not what the format says it should be."""


# --- encoding of members -------------------------------------------------------------------

def encode_flac(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit FLAC bytes of a mono float waveform in [-1, 1]."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Float32 mono waveform and sample rate of encoded audio bytes (FLAC, WAV, ...)."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB array of PNG or JPEG bytes (grey-scale images are converted)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def face_member(i: int, ext: str = "png") -> str:
    """Name of the i-th face member of a training sample: ``face0.png``, ``face1.jpg``, ..."""
    return f"face{i}.{ext}"


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise DataFormatError(f"shard key {key!r} must be letters, digits, '_' or '-' (no dots)")
    return key


# --- writing -------------------------------------------------------------------------------

class ShardWriter:
    """Writes samples into ``<dir>/<prefix>-NNNNNN.tar`` shards of at most ``maxcount`` samples.

    Each shard is written as ``.tar.tmp`` and renamed when closed, so a crash leaves only
    temporary files that readers never list. ``shards`` holds the finished shard names.
    ``entries`` holds ``{"name", "samples"}`` per finished shard, as the manifest lists them.
    Samples are dicts of ``__key__`` and member name -> bytes.
    """

    def __init__(self, directory: str | Path, prefix: str, maxcount: int = 1000, start: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.maxcount = prefix, maxcount
        self.index, self.count = start, 0
        self.shards: list[str] = []
        self.entries: list[dict[str, Any]] = []
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def write(self, sample: dict[str, Any]) -> None:
        check_key(sample["__key__"])
        if self._tar is None:
            self._tmp = self.directory / (self.shard_name(self.index) + ".tmp")
            # a fixed mtime: the same samples give byte-identical shards
            self._tar = wds.TarWriter(str(self._tmp), mtime=0.0)
        self._tar.write(sample)
        self.count += 1
        if self.count >= self.maxcount:
            self.finish_shard()

    def finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self.directory / self.shard_name(self.index)
        os.replace(self._tmp, final)
        self.shards.append(final.name)
        self.entries.append({"name": final.name, "samples": self.count})
        self._tar, self._tmp = None, None
        self.index, self.count = self.index + 1, 0

    def close(self) -> None:
        self.finish_shard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no partial shard behind
            self._tar.close()
            self._tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def make_sample(key: str, audio_flac: bytes, faces: Iterable[bytes], meta: dict,
                face_ext: str = "png") -> dict[str, Any]:
    """A training sample: one utterance, the faces of its identity, JSON metadata."""
    faces = list(faces)
    if len(faces) < 2:
        raise DataFormatError(f"sample {key}: needs at least two faces, got {len(faces)}")
    sample = {"__key__": check_key(key), "flac": audio_flac,
              "json": json.dumps(meta, ensure_ascii=False).encode()}
    for i, face in enumerate(faces):
        sample[face_member(i, face_ext)] = face
    return sample


def make_gallery_item(key: str, face: bytes, meta: dict, face_ext: str = "png") -> dict[str, Any]:
    return {"__key__": check_key(key), face_ext: face,
            "json": json.dumps(meta, ensure_ascii=False).encode()}


# --- manifest ------------------------------------------------------------------------------

def manifest_path(root: str | Path) -> Path:
    return Path(root) / "manifest.json"


def write_manifest(root: str | Path, manifest: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    write_json_atomic(manifest_path(root), manifest)


def read_manifest(root: str | Path) -> dict:
    """The manifest of a dataset folder, checked for the fields every reader relies on."""
    path = manifest_path(root)
    if Path(root).is_file():
        raise DataFormatError(f"data folder {root} is a file; expected the folder that holds "
                              f"manifest.json and shards/")
    if not Path(root).is_dir():
        raise DataFormatError(f"data folder {root} does not exist (make one with "
                              f"`voice2face synth --out {root}` or `voice2face prepare`)")
    if not path.is_file():
        raise DataFormatError(f"data folder {root} has no manifest.json: expected a folder written "
                              f"by `voice2face synth` or `voice2face prepare`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise DataFormatError(f"{path}: expected a JSON object, found a {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataFormatError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: dict, path: Path) -> None:
    """The manifest's schema, before any reader trusts it: types, and counts that add up
    (each split's ``samples`` is the sum of its shards'). ``DataFormatError`` names the field."""
    def need(ok: bool, field: str, expected: str, value: Any) -> None:
        if not ok:
            raise DataFormatError(f"{path}: {field} is {json.dumps(value)[:60]}; expected {expected}")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for field in ("identities", "splits", "gallery", "sample_rate", "face_size"):
        if field not in manifest:
            raise DataFormatError(f"{path}: missing field {field!r}")
    for field in ("sample_rate", "face_size"):
        need(count(manifest[field]) and manifest[field] > 0, field, "a positive integer",
             manifest[field])
    ids = manifest["identities"]
    need(isinstance(ids, list) and ids != [], "identities", "a non-empty list", ids)
    for i, ident in enumerate(ids):
        need(isinstance(ident, dict) and count(ident.get("index")) and isinstance(
            ident.get("name"), str) and ident.get("split") in ("train", "val", "test"),
             f"identities[{i}]", "an object with index (int), name and split "
             "(train, val or test)", ident)
    for kind in ("splits", "gallery"):
        need(isinstance(manifest[kind], dict), kind, "an object of splits", manifest[kind])
        for split, entry in manifest[kind].items():
            field = f"{kind}.{split}"
            need(isinstance(entry, dict) and isinstance(entry.get("shards"), list)
                 and count(entry.get("samples")), field,
                 'an object with "shards" (a list) and "samples" (a count)', entry)
            for j, shard in enumerate(entry["shards"]):
                need(isinstance(shard, dict) and isinstance(shard.get("name"), str)
                     and count(shard.get("samples")), f"{field}.shards[{j}]",
                     'an object with "name" and "samples" (a count)', shard)
            total = sum(s["samples"] for s in entry["shards"])
            need(total == entry["samples"], f"{field}.samples",
                 f"the sum of its shards' samples, {total}", entry["samples"])


def shard_paths(root: str | Path, names: list[str]) -> list[str]:
    root = Path(root)
    missing = [n for n in names if not (root / "shards" / n).is_file()]
    if missing:
        raise DataFormatError(f"{root}: manifest lists shards that are missing: {missing[:5]}")
    return [str(root / "shards" / n) for n in names]


def iter_tar(path: str | Path) -> Iterator[dict[str, Any]]:
    """Samples of one shard as dicts of raw bytes (for tests and tools, not for training)."""
    for sample in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
        yield sample
