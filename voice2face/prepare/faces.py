"""One face image from a VGGFace folder to the square RGB image a shard stores.

Decode -> EXIF orientation -> RGB (grey-scale, palette and CMYK images included) -> centre
crop to a square -> resize to ``size`` -> PNG or JPEG. VGGFace's frontal images are already
aligned crops, so no detector runs here.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from datamodules.shards import encode_png

from .report import UNDECODABLE_IMAGE, Skip

FACE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class FaceSettings:
    size: int = 64
    format: str = "png"     # member extension in the shards: "png" or "jpg"
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.size < 8:
            raise ValueError("face size must be at least 8 pixels")
        if self.format not in ("png", "jpg"):
            raise ValueError("face format must be 'png' or 'jpg'")

    def to_dict(self) -> dict:
        return asdict(self)


def load_face(path: str | Path, size: int) -> np.ndarray:
    """``size`` x ``size`` x 3 uint8 RGB array of an image file; :class:`Skip` if undecodable."""
    try:
        with Image.open(path) as im:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly; a large photo shrunk to 64
            # pixels then costs a fraction of a full decode (draft keeps both sides >= size).
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if min(im.size) == 0:
                raise Skip(UNDECODABLE_IMAGE, "empty image")
            im = ImageOps.fit(im, (size, size), Image.Resampling.LANCZOS)
            return np.asarray(im)
    except Skip:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise Skip(UNDECODABLE_IMAGE, f"{type(e).__name__}: {e}") from e


def encode_face(image: np.ndarray, settings: FaceSettings) -> bytes:
    if settings.format == "png":
        return encode_png(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=settings.jpeg_quality)
    return buf.getvalue()


def prepare_face(path: str | Path, settings: FaceSettings = FaceSettings()) -> bytes:
    """Encoded bytes of one face image ready for a shard."""
    return encode_face(load_face(path, settings.size), settings)
