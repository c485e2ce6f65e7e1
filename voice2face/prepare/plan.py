"""Which files go where: scanning the input trees, matching identities, planning the shards.

Everything here is decided before any audio is decoded, and deterministically from the
inputs and the settings: the identity table, which utterances are held out as ``known``,
which faces accompany each utterance, and the exact items of every shard. That is what makes
a run resumable: a shard is identified by its name and a digest of its planned items, so a
rerun recognises the shards that are already written whole and writes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voice2face.splits import split_of_name

from . import meta as M
from .faces import FACE_SUFFIXES
from .report import (DUPLICATE_NAME, FACES_NO_VOICES, NO_LETTER, NOT_IN_META, NOT_IN_SPLIT_FILE,
                     VOICES_NO_FACES, VOX2_NO_NAME, VOX2_UNMATCHED, PrepareError, Skipped)

SAMPLE_SPLITS = ("train", "known", "val", "test")
GALLERY_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Inputs:
    """The user's folders and files (``voice2face prepare --help``)."""

    vox1: tuple[Path, ...]
    faces: Path
    vox1_meta: Path | None = None            # default: <first vox1 folder>/vox1_meta.csv
    vox2: tuple[Path, ...] = ()
    vox2_meta: Path | None = None            # default: <first vox2 folder>/vox2_meta.csv
    vggface2_meta: Path | None = None        # default: <first vox2 folder>/identity_meta.csv
    split_file: Path | None = None

    def to_dict(self) -> dict:
        return {k: (None if v is None else [str(p) for p in v] if isinstance(v, tuple) else str(v))
                for k, v in self.__dict__.items()}


@dataclass
class Person:
    """An identity with voices and faces, before its faces are decoded."""

    name: str
    key: str
    gender: str
    nationality: str
    split: str
    speakers: list[str]                                   # VoxCeleb IDs
    voices: list[tuple[str, str]] = field(default_factory=list)  # (source id, path)
    face_dirs: list[str] = field(default_factory=list)
    faces: list[tuple[str, str]] = field(default_factory=list)   # (source id, path)


@dataclass
class Scan:
    people: list[Person]            # in identity-table order
    skipped: list[Skipped]          # identities (and folders) left out, with reasons
    counts: dict


# --- input folders -----------------------------------------------------------------------------

def audio_roots(folder: Path, sub: str, what: str, flag: str) -> list[Path]:
    """The speaker-folder parents in a VoxCeleb download: ``wav/`` (VoxCeleb1) or ``aac/``.

    VoxCeleb2's archives unpack to ``dev/aac`` and ``test/aac``; a folder that is itself
    the one holding the speaker folders is accepted as well.
    """
    if not folder.is_dir():
        raise PrepareError(f"{what} folder {folder} does not exist ({flag})")
    roots = [r for r in (folder / sub, folder / "dev" / sub, folder / "test" / sub) if r.is_dir()]
    if roots:
        return roots
    if any(e.is_dir() and re.fullmatch(r"id\d+", e.name) for e in os.scandir(folder)):
        return [folder]
    raise PrepareError(f"{what} folder {folder} has no {sub}/ folder of speaker folders "
                       f"({sub}/<id>/<YouTube ID>/<nnnnn>.*) ({flag})")


def scan_voices(roots: list[Path], suffixes: set[str]) -> dict[str, tuple[Path, list[str]]]:
    """``{speaker id: (first folder, ["<YouTube ID>/<file>", ...])}``, sorted; roots merged."""
    out: dict[str, tuple[Path, list[str]]] = {}
    for root in roots:
        for spk in sorted(os.scandir(root), key=lambda e: e.name):
            if not spk.is_dir():
                continue
            files = out.setdefault(spk.name, (Path(spk.path), []))[1]
            for video in sorted(os.scandir(spk.path), key=lambda e: e.name):
                if video.is_dir():
                    files += [f"{video.name}/{f.name}" for f in sorted(os.scandir(video.path),
                                                                        key=lambda e: e.name)
                              if f.is_file() and Path(f.name).suffix.lower() in suffixes]
    return out


def scan_faces(folder: Path) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """``{name key: ([folders], [(source id, path), ...])}`` of a ``<name>/*.jpg|png`` tree.

    Folders whose names differ only in spelling (``A.J._Buckley``, ``A.J. Buckley``) are the
    same person and are merged. Folders without images count as absent.
    """
    if not folder.is_dir():
        raise PrepareError(f"face folder {folder} does not exist (--faces)")
    out: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
    for person in sorted(os.scandir(folder), key=lambda e: e.name):
        if not person.is_dir():
            continue
        images = [(f"{person.name}/{f.name}", f.path)
                  for f in sorted(os.scandir(person.path), key=lambda e: e.name)
                  if f.is_file() and Path(f.name).suffix.lower() in FACE_SUFFIXES]
        if images:
            dirs, files = out.setdefault(M.name_key(M.display_name(person.name)), ([], []))
            dirs.append(person.path)
            files += images
    return out


# --- matching ----------------------------------------------------------------------------------

def _default(path: Path | None, folders: tuple[Path, ...], name: str, what: str,
             flag: str) -> Path:
    if path is not None:
        return path
    candidate = folders[0] / name
    if not candidate.is_file():
        raise PrepareError(f"no {what}: looked for {candidate}; pass it with {flag}")
    return candidate


def scan(inputs: Inputs, audio_suffixes: set[str] | None = None) -> Scan:
    """Scan the inputs and match identities by name (Wen et al.'s VoxCeleb1 ∩ VGGFace).

    Checks every input that can stop the run (folders, meta files, split file) before
    walking any large tree, so a typo fails in a second rather than after the scan.
    """
    if not inputs.vox1:
        raise PrepareError("no VoxCeleb1 folder given (--vox1)")
    vox1_roots = [r for f in inputs.vox1 for r in audio_roots(f, "wav", "VoxCeleb1", "--vox1")]
    vox1_meta = M.read_vox1_meta(_default(inputs.vox1_meta, inputs.vox1, "vox1_meta.csv",
                                          "the VoxCeleb1 meta file", "--vox1-meta"))
    if not inputs.faces.is_dir():
        raise PrepareError(f"face folder {inputs.faces} does not exist (--faces)")
    vox2_roots, vox2_meta, vgg2_names = [], {}, {}
    if inputs.vox2:
        vox2_roots = [r for f in inputs.vox2 for r in audio_roots(f, "aac", "VoxCeleb2", "--vox2")]
        vox2_meta = M.read_vox2_meta(_default(inputs.vox2_meta, inputs.vox2, "vox2_meta.csv",
                                              "the VoxCeleb2 meta file", "--vox2-meta"))
        vgg2_names = M.read_vggface2_names(_default(
            inputs.vggface2_meta, inputs.vox2, "identity_meta.csv",
            "VGGFace2 identity meta file (VoxCeleb2 names its speakers by VGGFace2 ID)",
            "--vggface2-meta"))
    split_file = M.read_split_file(inputs.split_file) if inputs.split_file else None

    skipped: list[Skipped] = []
    faces = scan_faces(inputs.faces)
    voices = scan_voices(vox1_roots, {".wav", ".flac"})

    by_key: dict[str, list[M.Speaker]] = {}
    for spk in vox1_meta.values():
        by_key.setdefault(M.name_key(spk.name), []).append(spk)
    for sid, (folder, _) in voices.items():
        if sid not in vox1_meta:
            skipped.append(Skipped(str(folder), NOT_IN_META, "not in the VoxCeleb1 meta file"))

    people: dict[str, Person] = {}
    for key, rows in by_key.items():
        with_audio = [r for r in rows if voices.get(r.id, (None, []))[1]]
        if len(rows) > 1:
            if with_audio or key in faces:
                ids = ", ".join(r.id for r in rows)
                for r in with_audio:
                    skipped.append(Skipped(str(voices[r.id][0]), DUPLICATE_NAME,
                                           f"{r.name}: VoxCeleb1 IDs {ids}"))
                if not with_audio:
                    skipped.append(Skipped(faces[key][0][0], DUPLICATE_NAME,
                                           f"{rows[0].name}: VoxCeleb1 IDs {ids}"))
            continue
        row = rows[0]
        if not with_audio:
            if key in faces:
                why = (f"VoxCeleb1 ID {row.id} has no audio files" if row.id in voices
                       else f"VoxCeleb1 ID {row.id} has no audio folder")
                skipped.append(Skipped(faces[key][0][0], FACES_NO_VOICES, why))
            continue
        folder, files = voices[row.id]
        if key not in faces:
            skipped.append(Skipped(str(folder), VOICES_NO_FACES,
                                   f"{row.id} {row.name}: no face folder of that name"))
            continue
        if split_file is not None:
            split = split_file.get(row.id, split_file.get(key))
            if split is None:
                skipped.append(Skipped(str(folder), NOT_IN_SPLIT_FILE, f"{row.id} {row.name}"))
                continue
        else:
            try:
                split = split_of_name(row.name)
            except ValueError as e:
                skipped.append(Skipped(str(folder), NO_LETTER, str(e)))
                continue
        people[key] = Person(
            name=row.name, key=key, gender=row.gender, nationality=row.nationality, split=split,
            speakers=[row.id],
            voices=[(f"vox1/{row.id}/{f.rsplit('.', 1)[0]}", str(folder / f)) for f in files],
            face_dirs=faces[key][0], faces=faces[key][1])
    for key, (dirs, _) in faces.items():
        if key not in by_key:
            skipped.append(Skipped(dirs[0], FACES_NO_VOICES, "name not in the VoxCeleb1 meta file"))

    if inputs.vox2:
        for sid, (folder, files) in scan_voices(vox2_roots, {".m4a", ".aac", ".mp4", ".wav"}).items():
            if not files:
                continue
            if sid not in vox2_meta:
                skipped.append(Skipped(str(folder), NOT_IN_META, "not in the VoxCeleb2 meta file"))
                continue
            vgg2 = vox2_meta[sid][0]
            if vgg2 not in vgg2_names:
                skipped.append(Skipped(str(folder), VOX2_NO_NAME, f"{sid}: {vgg2}"))
                continue
            person = people.get(M.name_key(vgg2_names[vgg2]))
            if person is None:
                skipped.append(Skipped(str(folder), VOX2_UNMATCHED, f"{sid} {vgg2_names[vgg2]}"))
                continue
            person.speakers.append(sid)
            person.voices += [(f"vox2/{sid}/{f.rsplit('.', 1)[0]}", str(folder / f)) for f in files]

    ordered = sorted(people.values(), key=lambda p: M.sort_key(p.name))
    counts = {"vox1_meta_rows": len(vox1_meta), "vox1_speaker_folders": len(voices),
              "face_folders": sum(len(d) for d, _ in faces.values()),
              "vox2_meta_rows": len(vox2_meta)}
    return Scan(ordered, skipped, counts)


# --- planning ----------------------------------------------------------------------------------

def stable_int(*parts) -> int:
    """A seed from strings and ints that is the same in every process and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(source: str) -> str:
    """``vox1/id10001/1zcIwhmdeo4/00001`` -> ``id10001-1zcIwhmdeo4-00001`` (no dots allowed)."""
    return _BAD_KEY_CHARS.sub("_", "-".join(source.split("/")[1:]))


@dataclass
class ShardTask:
    """One shard to write: its name, what goes in, and the digest a rerun compares."""

    kind: str                     # "samples" or "gallery"
    split: str
    prefix: str                   # train, known, ..., gallery-train, ...
    index: int
    items: list[dict]
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.index:06d}.tar"


def known_choice(person_key: str, n: int, known: int, seed: int) -> set[int]:
    """Which of a training identity's ``n`` utterances are held out as ``known``.

    At most ``n - 1``, so every training identity keeps a training utterance.
    """
    k = min(known, n - 1) if n > 1 else 0
    rng = np.random.default_rng([seed, 1, stable_int(person_key)])
    return set(int(i) for i in rng.choice(n, size=k, replace=False))


def face_choice(key: str, n: int, k: int, seed: int) -> list[int]:
    """The ``k`` faces (of ``n``) that accompany sample ``key``: distinct, fixed by the key."""
    rng = np.random.default_rng([seed, 2, stable_int(key)])
    return [int(i) for i in rng.choice(n, size=k, replace=False)]


MIN_SHARDS = 64  # 8 GPUs x 8 loader workers


def shard_sizes(n: int, max_size: int) -> list[int]:
    """Balanced sizes of the shards ``n`` samples are cut into, none above ``max_size``.

    A small split is still cut into up to ``MIN_SHARDS`` shards of at least 8 samples: the
    training stream gives every (rank, loader worker) slot shards of its own, and runs with
    fewer workers where there are fewer shards than slots. VoxCeleb1's training split (about
    110,000 utterances) makes 110 shards at the default ``max_size`` of 1,000.
    """
    if n == 0:
        return []
    k = max(1, min(MIN_SHARDS, n // 8), math.ceil(n / max_size))
    return [n // k + (i < n % k) for i in range(k)]


def plan_shards(people: list[dict], shard_size: int, known: int, faces_per_sample: int,
                seed: int, settings: dict) -> list[ShardTask]:
    """Every sample and gallery shard, with the items each holds.

    ``people`` are identity-table rows with ``voices`` [(source, path)] and ``faces``
    [(source, face ref)], ``face ref`` being where the decoded face is cached. Training
    samples are shuffled across shards so that any one shard mixes many identities (the
    training stream's shuffle buffer only mixes within a few shards); evaluation splits stay
    in identity order. ``settings`` enter every digest, so changed options rewrite the shards.
    """
    samples: dict[str, list[dict]] = {s: [] for s in SAMPLE_SPLITS}
    gallery: dict[str, list[dict]] = {s: [] for s in GALLERY_SPLITS}
    keys: set[str] = set()
    for p in people:
        row = {"identity": p["index"], "name": p["name"], "gender": p["gender"]}
        held_out = known_choice(p["key"], len(p["voices"]), known, seed) if p["split"] == "train" else set()
        for u, (source, path) in enumerate(p["voices"]):
            split = "known" if u in held_out else p["split"]
            key = sample_key(source)
            while key in keys:  # only hand-made trees can collide; keep keys unique
                key += "_"
            keys.add(key)
            picks = face_choice(key, len(p["faces"]), faces_per_sample, seed)
            samples[split].append({"key": key, "path": path,
                                   "meta": {**row, "split": split, "utterance": source},
                                   "faces": [p["faces"][i][1] for i in picks]})
        for j, (source, ref) in enumerate(p["faces"]):
            gallery[p["split"]].append({"key": f"id{p['index']:05d}-f{j:04d}", "face": ref,
                                        "meta": {**row, "split": p["split"], "face": source}})
    order = np.random.default_rng([seed, 3]).permutation(len(samples["train"]))
    samples["train"] = [samples["train"][i] for i in order]

    tasks = []
    for kind, groups in (("samples", samples), ("gallery", gallery)):
        for split, items in groups.items():
            prefix = split if kind == "samples" else f"gallery-{split}"
            start = 0
            for index, size in enumerate(shard_sizes(len(items), shard_size)):
                chunk, start = items[start:start + size], start + size
                # the digest leaves out file paths: a moved input tree is the same data
                content = [{k: v for k, v in it.items() if k != "path"} for it in chunk]
                tasks.append(ShardTask(kind, split, prefix, index, chunk,
                                       digest({"items": content, "settings": settings})))
    return tasks
