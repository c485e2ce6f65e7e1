"""A synthetic world written in VoxCeleb1's and VGGFace's own layouts (``synth --layout voxceleb``).

    OUT/wav/<VoxCeleb1 ID>/<YouTube ID>/<nnnnn>.wav     16 kHz mono, 16-bit, like VoxCeleb1
    OUT/vox1_meta.csv                                  VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set
    OUT/VGG_ALL_FRONTAL/<Name_With_Underscores>/<nnnnnnnn>.jpg

so that ``voice2face prepare --vox1 OUT --faces OUT/VGG_ALL_FRONTAL --out DATA`` can be tried
end to end without the real datasets, and its result compared with the shards ``synth``
writes directly from the same world (same identity table and splits; the sample counts
match when no utterance is trimmed below ``--min-seconds``).

The world's own renderers (``voice2face.synth``) make every file; only the layout is new
here. Like VoxCeleb, an identity's utterances come from several "videos", and names carry
underscores for spaces in the meta file and the face folders. All of an identity's
utterances (its split's and its held-out ``known`` ones) are in its folder: prepare chooses
the ``known`` ones itself. Files are written under a temporary name and renamed, and a rerun
skips files that exist, so an interrupted write resumes; the meta file is written last.
"""

from __future__ import annotations

import base64
import hashlib
import io
import multiprocessing as mp
import os
from pathlib import Path

import soundfile as sf
from PIL import Image

from voice2face.splits import initial

from .audio import render_utterance
from .faces import render_face
from .world import Identity, WorldConfig, iter_utterances, sample_identities

FACES_DIR = "VGG_ALL_FRONTAL"
META = "vox1_meta.csv"
UTTERANCES_PER_VIDEO = 3
FIRST_ID = 10001          # VoxCeleb1's IDs run id10001 .. id11251


def voxceleb_id(identity: Identity) -> str:
    return f"id{FIRST_ID + identity.index}"


def vggface_id(name: str) -> str:
    """``Jean-Luc St. Clair`` -> ``Jean-Luc_St._Clair``: VGGFace's spelling of a name."""
    return "_".join(name.split())


def youtube_id(seed: int, identity: int, video: int) -> str:
    """An 11-character YouTube-style ID (letters, digits, ``-``, ``_``), fixed by its inputs."""
    digest = hashlib.sha256(f"{seed}/{identity}/{video}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def utterance_path(identity: Identity, number: int, config: WorldConfig) -> str:
    video, clip = divmod(number, UTTERANCES_PER_VIDEO)
    return (f"wav/{voxceleb_id(identity)}/{youtube_id(config.seed, identity.index, video)}/"
            f"{clip + 1:05d}.wav")


def face_path(identity: Identity, number: int) -> str:
    return f"{FACES_DIR}/{vggface_id(identity.name)}/{number + 1:08d}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- worker side ---------------------------------------------------------------------------------

_WORLD: dict = {}


def _init_worker(out: Path, identities: list[Identity], config: WorldConfig,
                 utterances: dict[int, list[int]]) -> None:
    _WORLD.update(out=out, identities=identities, config=config, utterances=utterances)


def _identity_job(index: int) -> int:
    """Render and write one identity's faces and utterances; returns the files written."""
    out, config = _WORLD["out"], _WORLD["config"]
    ident = _WORLD["identities"][index]
    written = 0
    for f in range(config.faces):
        path = out / face_path(ident, f)
        if not path.exists():
            buf = io.BytesIO()
            Image.fromarray(render_face(ident, f, config)).save(buf, format="JPEG", quality=95)
            _write_atomic(path, buf.getvalue())
            written += 1
    for number in _WORLD["utterances"][index]:
        path = out / utterance_path(ident, number, config)
        if not path.exists():
            buf = io.BytesIO()
            sf.write(buf, render_utterance(ident, number, config), config.sample_rate,
                     format="WAV", subtype="PCM_16")
            _write_atomic(path, buf.getvalue())
            written += 1
    return written


# --- writer side ---------------------------------------------------------------------------------

def write_voxceleb_layout(out: str | Path, config: WorldConfig, workers: int | None = None,
                          progress: bool = True) -> dict:
    """Write the world of ``config`` to ``out`` in VoxCeleb1 + VGGFace layout; returns counts."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # written last: its presence means the tree is whole
    identities = sample_identities(config)
    utterances: dict[int, list[int]] = {i.index: [] for i in identities}
    for utt in iter_utterances(identities, config):
        utterances[utt.identity].append(utt.number)
    workers = workers or len(os.sched_getaffinity(0))
    world = (out, identities, config, utterances)

    jobs = [i.index for i in identities]
    sizes = {i.index: config.faces + len(utterances[i.index]) for i in identities}
    pool = None
    if workers > 1:  # before tqdm starts its monitor thread
        # fork shares the parent's imports; spawn re-imports them (seconds for torch)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, _init_worker, world)
    else:
        _init_worker(*world)
    bar = tqdm(total=sum(sizes.values()), disable=not progress, unit="file", desc="voxceleb layout")
    try:
        results = pool.imap(_identity_job, jobs) if pool is not None else map(_identity_job, jobs)
        for index, _ in zip(jobs, results):
            bar.update(sizes[index])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    rows = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for ident in identities:
        # VoxCeleb1's speaker-verification test set is its 40 names starting with E
        set_ = "test" if initial(ident.name) == "E" else "dev"
        rows.append(f"{voxceleb_id(ident)}\t{vggface_id(ident.name)}\t{ident.gender}\t"
                    f"{ident.nationality}\t{set_}")
    _write_atomic(out / META, ("\n".join(rows) + "\n").encode("utf-8"))
    return {"identities": len(identities),
            "utterances": sum(len(u) for u in utterances.values()),
            "faces": len(identities) * config.faces}


def main_layout(out: str | Path, config: WorldConfig, workers: int | None = None,
                progress: bool = True) -> int:
    """What ``voice2face synth --layout voxceleb`` runs: write, then say how to prepare."""
    counts = write_voxceleb_layout(out, config, workers=workers, progress=progress)
    print(f"synthetic world '{config.preset}' (seed {config.seed}) in VoxCeleb layout: "
          f"{counts['identities']} identities, {counts['utterances']} utterances, "
          f"{counts['faces']} faces in {out}")
    print(f"  prepare it with: voice2face prepare --vox1 {out} --faces {out}/{FACES_DIR} "
          f"--known {config.known} --face-size {config.face_size} --out DATA")
    return 0
