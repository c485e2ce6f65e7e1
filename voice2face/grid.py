"""The sample grid: per identity, real faces beside faces generated from its utterances.

Made by the validation of every face-generating method (``methods.generator``) and by
``voice2face evaluate``; saved as PNG and logged to W&B. ``column_grid`` puts one titled
column per method beside the real face (``voice2face results``' figure).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from datamodules.features import tensor_to_face


class GridCollector:
    """Collects, per identity, a few real faces and faces generated from its utterances.

    ``identities``: the identities to collect (in this order); None takes the first
    ``n_identities`` that come by. ``middle``: the title of an optional group of ``n_middle``
    faces shown between the real and the generated ones (``add_middle``), e.g. faces decoded
    from the real face's feature.
    """

    def __init__(self, n_identities: int = 8, n_utterances: int = 4, n_real: int = 2,
                 identities: list[int] | None = None, names: dict[int, str] | None = None,
                 middle: str | None = None, n_middle: int = 1):
        self.n_identities, self.n_utterances, self.n_real = n_identities, n_utterances, n_real
        self.middle_title, self.n_middle = middle, n_middle if middle else 0
        self.middle: dict[int, list[torch.Tensor]] = {}
        self.order: list[int] = list(identities) if identities is not None else []
        self.fixed = identities is not None
        self.names = names or {}
        self.real: dict[int, list[torch.Tensor]] = {}
        self.fake: dict[int, list[torch.Tensor]] = {}
        # the proposal face of each generated one, for methods that morph a given face
        self.proposals: dict[int, list[torch.Tensor]] = {}
        self.sweep: tuple[str, list[torch.Tensor], list[torch.Tensor]] | None = None

    def _wanted(self, identity: int) -> bool:
        if identity in self.order:
            return True
        if not self.fixed and len(self.order) < self.n_identities:
            self.order.append(identity)
            return True
        return False

    def add_real(self, identity: int, faces) -> None:
        if self._wanted(identity):
            have = self.real.setdefault(identity, [])
            have.extend(f.detach().cpu() for f in faces[:self.n_real - len(have)])

    def add_fake(self, identity: int, face: torch.Tensor,
                 proposal: torch.Tensor | None = None) -> None:
        if self._wanted(identity):
            have = self.fake.setdefault(identity, [])
            if len(have) < self.n_utterances:
                have.append(face.detach().cpu())
                if proposal is not None:
                    self.proposals.setdefault(identity, []).append(proposal.detach().cpu())

    def set_sweep(self, name: str, proposal: torch.Tensor, faces: list[torch.Tensor]) -> None:
        """A last row: one proposal face (in the real-face column) under several voices."""
        self.sweep = (name, [proposal.detach().cpu()], [f.detach().cpu() for f in faces])

    def add_middle(self, identity: int, face: torch.Tensor) -> None:
        if self.n_middle and self._wanted(identity):
            have = self.middle.setdefault(identity, [])
            if len(have) < self.n_middle:
                have.append(face.detach().cpu())

    def add(self, batch: dict, fake: torch.Tensor | None) -> None:
        """A batch of utterances and the faces generated from them (real faces: ``faces``)."""
        for i, identity in enumerate(batch["identity"].tolist()):
            if fake is not None:
                self.add_fake(identity, fake[i])
            if "faces" in batch:
                self.add_real(identity, batch["faces"][i])

    def image(self) -> Image.Image | None:
        """With proposals, each generated face follows the proposal it was made from."""
        paired = bool(self.proposals)
        rows = []
        for i in self.order:
            fake = self.fake.get(i)
            if not fake:
                continue
            if paired:
                fake = [f for pair in zip(self.proposals.get(i, []), fake) for f in pair]
            rows.append((self.names.get(i, str(i)), self.real.get(i, []), fake,
                         self.middle.get(i, [])))
        if not rows:
            return None
        if self.sweep is not None:
            rows.append(self.sweep)
        middle = self.middle_title if self.middle else None  # no column without faces
        if paired:
            return face_grid(rows, self.n_real, 2 * self.n_utterances, middle=middle,
                             n_middle=self.n_middle,
                             header="proposal, then the face generated from it and the "
                                    "speaker's voice, per utterance")
        return face_grid(rows, self.n_real, self.n_utterances, middle=middle,
                         n_middle=self.n_middle)


def face_grid(rows: list[tuple], n_real: int, n_fake: int, pad: int = 2,
              middle: str | None = None, n_middle: int = 0,
              header: str = "generated from different utterances") -> Image.Image:
    """One row per identity: its name, ``n_real`` real faces, a gap, (with ``middle``: a
    group of ``n_middle`` faces so titled, a gap,) ``n_fake`` generated. A row is ``(name,
    real, fake)`` or ``(name, real, fake, middle faces)``."""
    size = rows[0][2][0].shape[-1]
    label_w, gap, head = 96, max(8, size // 4), 14
    n_middle = n_middle if middle else 0
    width = label_w + (n_real + n_middle + n_fake) * (size + pad) + gap * (2 if n_middle else 1)
    height = head + len(rows) * (size + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x_middle = label_w + n_real * (size + pad) + gap
    x_fake = x_middle + (n_middle * (size + pad) + gap if n_middle else 0)
    draw.text((label_w, 1), "real", fill="black")
    if n_middle:
        draw.text((x_middle, 1), middle, fill="black")
    draw.text((x_fake, 1), header, fill="black")
    for r, (name, real, fake, *rest) in enumerate(rows):
        y = head + r * (size + pad)
        draw.text((2, y + size // 2 - 6), name[:15], fill="black")
        groups = [(label_w, real[:n_real]), (x_fake, fake[:n_fake])]
        if n_middle and rest:
            groups.append((x_middle, rest[0][:n_middle]))
        for x, faces in groups:
            for c, face in enumerate(faces):
                canvas.paste(Image.fromarray(tensor_to_face(face)), (x + c * (size + pad), y))
    return canvas


def titled_row(faces: list[torch.Tensor | Image.Image], titles: list[str], pad: int = 4,
               max_chars: int = 24) -> Image.Image:
    """Faces (tensors in [-1, 1] or images) side by side, each under its title (``voice2face generate --grid``: one face per
    recording beside the fused one). A column is as wide as its face or its title, whichever
    is wider; titles longer than ``max_chars`` are cut in the middle."""
    if len(faces) != len(titles) or not faces:
        raise ValueError(f"titled_row needs one title per face, got {len(faces)} faces and "
                         f"{len(titles)} titles")
    titles = [t if len(t) <= max_chars else t[:max_chars // 2 - 2] + "..." + t[-(max_chars // 2 - 1):]
              for t in titles]
    images = [f if isinstance(f, Image.Image) else Image.fromarray(tensor_to_face(f))
              for f in faces]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(im.size[0], int(measure.textlength(t)) + 2) for im, t in zip(images, titles)]
    head = 14
    canvas = Image.new("RGB", (sum(widths) + pad * (len(images) + 1),
                               head + max(im.size[1] for im in images) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for im, title, w in zip(images, titles, widths):
        draw.text((x, 1), title, fill="black")
        canvas.paste(im, (x + (w - im.size[0]) // 2, head))
        x += w + pad
    return canvas


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def log_grid(image: Image.Image | None, loggers, key: str, step: int, path: Path | None) -> None:
    """Save the grid as PNG and log it to every W&B logger (offline runs keep it locally)."""
    if image is None:
        return
    if path is not None:
        save_png(image, path)
    from lightning.pytorch.loggers import WandbLogger
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=step)


def column_grid(titles: list[str], rows: list[tuple[str, list[torch.Tensor | None]]],
                pad: int = 2, min_size: int = 64) -> Image.Image:
    """One face per column and title: ``rows`` are ``(name, faces)`` with one face (or None:
    an empty cell) per title. Faces smaller than ``min_size`` are enlarged (nearest), so that
    a title of about ten characters a line fits above its column."""
    faces = [f for _, row in rows for f in row if f is not None]
    size = max(min_size, faces[0].shape[-1]) if faces else min_size
    chars = max(4, size // 6)  # the default bitmap font is about 6 pixels a character
    wrapped = [textwrap.wrap(t, chars) or [""] for t in titles]
    label_w, line = 96, 11
    head = 4 + line * max(len(w) for w in wrapped)
    canvas = Image.new("RGB", (label_w + len(titles) * (size + pad), head + len(rows) * (size + pad)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(wrapped):
        for k, text in enumerate(lines):
            draw.text((label_w + c * (size + pad), 1 + k * line), text, fill="black")
    for r, (name, row) in enumerate(rows):
        y = head + r * (size + pad)
        draw.text((2, y + size // 2 - 6), name[:15], fill="black")
        for c, face in enumerate(row):
            if face is not None:
                image = Image.fromarray(tensor_to_face(face.detach().cpu()))
                if image.size[0] != size:
                    image = image.resize((size, size), Image.NEAREST)
                canvas.paste(image, (label_w + c * (size + pad), y))
    return canvas
