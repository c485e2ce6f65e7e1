"""`voice2face prepare`: VoxCeleb1 (+ VoxCeleb2) ∩ VGGFace folders -> the suite's shards.

The run, in order (each step's output is what makes the next resumable):

1. **scan** (``plan.scan``): read the meta files, walk the trees, match identities by name,
   split them (first letter, or ``--split-file``). Identity-level skips are recorded here.
2. **faces**: one task per identity decodes, crops and resizes its images into a cache
   (``OUT/.prepare/faces/``): a ``.bin`` of encoded faces and a ``.json`` index written
   after it. A rerun reuses every index whose file list and settings still match.
3. **plan** (``plan.plan_shards``): the identity table (identities with at least
   ``faces_per_sample`` usable faces) and the exact items of every shard.
4. **shards**: one task per shard decodes and trims its utterances, attaches the planned
   faces from the cache, and writes the tar atomically (``ShardWriter``), then a marker
   ``OUT/.prepare/shards/<shard>.json`` with its digest, sample count and skips. A rerun
   skips every shard whose marker matches the planned digest.
5. ``prepare_report.json``, then ``manifest.json`` last, so a folder with a manifest is
   complete; the face cache is removed unless ``--keep-cache``.

Tasks run on a process pool (``--workers``; 0 runs them in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Callable, Iterator

from datamodules.shards import (ShardWriter, make_gallery_item, make_sample, manifest_path,
                                write_json_atomic, write_manifest)
from voice2face.errors import EXIT_INTERRUPTED, UserError, check_output_path, reports_errors

from . import plan as P
from .audio import AudioSettings, prepare_utterance
from .faces import FaceSettings, prepare_face
from .report import (TOO_FEW_FACES, PrepareError, Skip, Skipped, format_summary, summary)

REPORT = "prepare_report.json"
STATE = ".prepare"
_SHARD_NAME = re.compile(r"^(train|known|val|test|gallery-(train|val|test))-\d{6}\.tar$")


@dataclass(frozen=True)
class PrepareConfig:
    """Every setting that changes the output (recorded in the manifest's ``source``)."""

    audio: AudioSettings = field(default_factory=AudioSettings)
    faces: FaceSettings = field(default_factory=FaceSettings)
    known: int = 5                 # held-out utterances per training identity
    faces_per_sample: int = 2
    shard_size: int = 1000         # most samples (or gallery faces) per shard
    seed: int = 0

    def __post_init__(self):
        if self.faces_per_sample < 2:
            raise ValueError("faces per sample must be at least 2 (docs/data.md)")
        if self.shard_size < 1 or self.known < 0:
            raise ValueError("shard size must be >= 1 and known >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


# --- face cache ----------------------------------------------------------------------------------

@dataclass
class FaceTask:
    key: str                          # the person's name key
    files: list[tuple[str, str]]      # (source id, path)
    cache: str                        # path of the cache file, without suffix
    settings: FaceSettings


def face_cache_name(key: str) -> str:
    return f"{P.stable_int('face cache', key):016x}"


def _cached_faces(task: FaceTask) -> dict | None:
    index = Path(task.cache + ".json")
    if not index.is_file() or not Path(task.cache + ".bin").is_file():
        return None
    cached = json.loads(index.read_text())
    same = (cached.get("files") == [s for s, _ in task.files]
            and cached.get("settings") == task.settings.to_dict())
    return cached if same else None


def process_faces(task: FaceTask) -> dict:
    """Decode an identity's face images into its cache; the index is written after the data."""
    cached = _cached_faces(task)
    if cached is not None:
        return cached
    entries, skipped, offset = [], [], 0
    Path(task.cache + ".json").unlink(missing_ok=True)  # stale until the new data is complete
    with open(task.cache + ".bin", "wb") as out:
        for source, path in task.files:
            try:
                data = prepare_face(path, task.settings)
            except Skip as s:
                skipped.append(Skipped(path, s.reason, s.detail).to_dict())
                continue
            out.write(data)
            entries.append([source, offset, len(data)])
            offset += len(data)
    index = {"files": [s for s, _ in task.files], "settings": task.settings.to_dict(),
             "entries": entries, "skipped": skipped}
    write_json_atomic(task.cache + ".json", index)
    return index


class FaceReader:
    """Reads cached faces by ``[cache file, offset, length]`` references, keeping files open."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir, self.files = Path(cache_dir), {}

    def __call__(self, ref) -> bytes:
        name, offset, length = ref
        if name not in self.files:
            self.files[name] = open(self.cache_dir / f"{name}.bin", "rb")
        f = self.files[name]
        f.seek(offset)
        return f.read(length)

    def close(self):
        for f in self.files.values():
            f.close()
        self.files.clear()


# --- shards ----------------------------------------------------------------------------------------

@dataclass
class ShardJob:
    task: P.ShardTask
    out: str
    audio: AudioSettings
    face_format: str


def marker_path(out: str | Path, name: str) -> Path:
    return Path(out) / STATE / "shards" / f"{name}.json"


def shard_done(out: str | Path, task: P.ShardTask) -> dict | None:
    """The marker of a shard written whole with the same planned items, else None."""
    marker = marker_path(out, task.name)
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    if done.get("digest") != task.digest:
        return None
    if done["samples"] and not (Path(out) / "shards" / task.name).is_file():
        return None
    return done


def write_shard(job: ShardJob) -> dict:
    """Write one planned shard; bad utterances are skipped and listed in its marker."""
    task, shards = job.task, Path(job.out) / "shards"
    faces = FaceReader(Path(job.out) / STATE / "faces")
    skipped = []
    try:
        with ShardWriter(shards, task.prefix, maxcount=len(task.items), start=task.index) as w:
            for item in task.items:
                if task.kind == "gallery":
                    w.write(make_gallery_item(item["key"], faces(item["face"]), item["meta"],
                                              face_ext=job.face_format))
                    continue
                try:
                    flac, _ = prepare_utterance(item["path"], job.audio)
                except Skip as s:
                    skipped.append(Skipped(item["path"], s.reason, s.detail).to_dict())
                    continue
                w.write(make_sample(item["key"], flac, [faces(r) for r in item["faces"]],
                                    item["meta"], face_ext=job.face_format))
    finally:
        faces.close()
    samples = w.entries[0]["samples"] if w.entries else 0
    if not samples:  # nothing usable: no shard, and none left from an earlier plan
        (shards / task.name).unlink(missing_ok=True)
    done = {"digest": task.digest, "samples": samples, "skipped": skipped}
    write_json_atomic(marker_path(job.out, task.name), done)
    return done


# --- running tasks ---------------------------------------------------------------------------------

def _init_worker():
    import torch
    # Ctrl-C reaches the whole process group: the parent stops the pool (and says so once)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the pool is the parallelism; threads inside each worker would oversubscribe the cores
    torch.set_num_threads(1)


class Runner:
    """Runs tasks in a process pool (or in this process when ``workers == 0``) with a bar."""

    def __init__(self, workers: int, progress: bool):
        self.workers, self.progress = workers, progress
        # fork where there is one: workers start at once with everything imported, where a
        # fresh interpreter takes seconds to import torch. DataLoader's workers are forked the
        # same way; like them, each worker then runs torch on a single thread.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        self.pool = (ProcessPoolExecutor(workers, mp_context=get_context(method),
                                         initializer=_init_worker) if workers > 0 else None)
        if self.pool is not None:
            # the first task forks all workers: now, while no progress bar has started its
            # monitor thread (a thread's held lock is copied, locked, into every child)
            self.pool.submit(int).result()

    def map(self, fn: Callable, tasks: list, weights: list[int], desc: str) -> Iterator[tuple[int, object]]:
        """``(task index, result)`` as tasks finish; the bar advances by each task's weight."""
        from tqdm import tqdm

        # in a log file rather than a terminal, one line every 30 s is enough
        interval = 0.1 if sys.stderr.isatty() else 30.0
        with tqdm(total=sum(weights), desc=desc, unit="file", disable=not self.progress,
                  mininterval=interval, dynamic_ncols=True) as bar:
            if self.pool is None:
                for i, task in enumerate(tasks):
                    result = fn(task)
                    bar.update(weights[i])
                    yield i, result
                return
            # a bounded window of submitted tasks keeps memory flat on a million files
            pending, queue = {}, iter(enumerate(tasks))
            window = 4 * self.workers
            while True:
                while len(pending) < window:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending[self.pool.submit(fn, nxt[1])] = nxt[0]
                if not pending:
                    return
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    result = fut.result()
                    bar.update(weights[i])
                    yield i, result

    def close(self, cancel: bool = False):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)


# --- the run ---------------------------------------------------------------------------------------

def _check_out(out: Path, overwrite: bool) -> None:
    if overwrite:
        for sub in ("shards", STATE):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("manifest.json", REPORT):
            (out / name).unlink(missing_ok=True)
        return
    if manifest_path(out).is_file():
        kind = json.loads(manifest_path(out).read_text()).get("kind")
        if kind != "voxceleb":
            raise PrepareError(f"{out} holds a {kind!r} dataset, not one written by prepare; "
                               f"choose another --out or pass --overwrite")
    elif out.is_dir() and any(out.iterdir()) and not (out / STATE).is_dir():
        raise PrepareError(f"{out} is not empty and was not written by prepare; choose another "
                           f"--out or pass --overwrite")


def prepare(inputs: P.Inputs, out: str | Path, config: PrepareConfig = PrepareConfig(),
            workers: int = 0, progress: bool = False, overwrite: bool = False,
            keep_cache: bool = False, log: Callable[[str], None] = print) -> dict:
    """Convert the input trees into a dataset folder ``out``; returns the report."""
    out = Path(out)
    scan = P.scan(inputs)
    _check_out(out, overwrite)
    cache_dir = out / STATE / "faces"
    for d in (out / "shards", cache_dir, out / STATE / "shards"):
        d.mkdir(parents=True, exist_ok=True)
    # the dataset is complete only when the manifest is there, and it is rewritten last
    manifest_path(out).unlink(missing_ok=True)
    for tmp in (out / "shards").glob("*.tmp"):  # partial shards of an interrupted run
        tmp.unlink()
    log(f"{len(scan.people)} identities with voices and faces "
        f"({sum(len(p.voices) for p in scan.people)} utterances, "
        f"{sum(len(p.faces) for p in scan.people)} face images)")

    runner = Runner(workers, progress)
    try:
        skipped = list(scan.skipped)
        # --- faces
        face_tasks = [FaceTask(p.key, p.faces, str(cache_dir / face_cache_name(p.key)), config.faces)
                      for p in scan.people]
        indexes = [None] * len(face_tasks)
        for i, index in runner.map(process_faces, face_tasks, [len(t.files) for t in face_tasks],
                                   "faces"):
            indexes[i] = index
        people = []
        for person, index in zip(scan.people, indexes):
            skipped += [Skipped.from_dict(s) for s in index["skipped"]]
            if len(index["entries"]) < config.faces_per_sample:
                skipped.append(Skipped(person.face_dirs[0], TOO_FEW_FACES,
                                       f"{len(index['entries'])} usable of {len(person.faces)}, "
                                       f"need {config.faces_per_sample}"))
                continue
            cache = face_cache_name(person.key)
            people.append({"index": len(people), "name": person.name, "key": person.key,
                           "gender": person.gender, "nationality": person.nationality,
                           "split": person.split, "speakers": person.speakers,
                           "voices": person.voices,
                           "faces": [(src, [cache, off, n]) for src, off, n in index["entries"]]})

        # --- shards
        tasks = P.plan_shards(people, config.shard_size, config.known, config.faces_per_sample,
                              config.seed, config.to_dict())
        results: dict[str, dict] = {}
        todo = []
        for task in tasks:
            done = shard_done(out, task)
            if done is None:
                todo.append(task)
            else:
                results[task.name] = done
        if results:
            log(f"{len(results)} of {len(tasks)} shards already written; writing the other {len(todo)}")
        jobs = [ShardJob(t, str(out), config.audio, config.faces.format) for t in todo]
        for i, done in runner.map(write_shard, jobs, [len(t.items) for t in todo], "shards"):
            results[todo[i].name] = done
    except BaseException:
        runner.close(cancel=True)
        raise
    runner.close()

    # --- what is no longer planned (an earlier run with other inputs or settings) goes
    planned = {t.name for t in tasks}
    for f in (out / "shards").iterdir():
        if _SHARD_NAME.match(f.name) and f.name not in planned:
            f.unlink()
    for f in (out / STATE / "shards").iterdir():
        if f.name.removesuffix(".json") not in planned:
            f.unlink()

    # --- report, then manifest
    for task in tasks:
        skipped += [Skipped.from_dict(s) for s in results[task.name]["skipped"]]
    sections: dict[str, dict] = {"splits": {}, "gallery": {}}
    for task in tasks:
        n = results[task.name]["samples"]
        entry = sections["splits" if task.kind == "samples" else "gallery"].setdefault(
            task.split, {"shards": [], "samples": 0})
        if n:
            entry["shards"].append({"name": task.name, "samples": n})
            entry["samples"] += n
    for split in P.SAMPLE_SPLITS:
        sections["splits"].setdefault(split, {"shards": [], "samples": 0})
    for split in P.GALLERY_SPLITS:
        sections["gallery"].setdefault(split, {"shards": [], "samples": 0})

    table = [{k: p[k] for k in ("index", "name", "gender", "nationality", "split")} for p in people]
    per_split = {s: sum(p["split"] == s for p in people) for s in P.GALLERY_SPLITS}
    report = {
        "path": str(out / REPORT),
        "identities": {"total": len(people), "per_split": per_split},
        "samples": {s: sections["splits"][s]["samples"] for s in P.SAMPLE_SPLITS},
        "gallery": {s: sections["gallery"][s]["samples"] for s in P.GALLERY_SPLITS},
        "summary": summary(skipped),
        "skipped": [s.to_dict() for s in skipped],
    }
    write_json_atomic(out / REPORT, report)
    write_manifest(out, {
        "kind": "voxceleb", "sample_rate": config.audio.sample_rate,
        "face_size": config.faces.size, "faces_per_sample": config.faces_per_sample,
        "identities": table, **sections,
        "source": {"prepare": config.to_dict(), "inputs": inputs.to_dict(),
                   "scan": scan.counts, "skipped": report["summary"],
                   "speakers": [p["speakers"] for p in people]},
    })
    if not keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return report


# --- command line ----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voice2face prepare",
        description="Convert VoxCeleb1 (and optionally VoxCeleb2) with VGGFace face folders into "
                    "the suite's shards (docs/data.md). Identities are matched by name through "
                    "the meta files and split by the first letter of the name (F-Z train, A-B "
                    "val, C-E test) unless --split-file says otherwise. Reruns resume: shards "
                    "already written whole are kept. Files that cannot be used are skipped and "
                    "listed in OUT/prepare_report.json.",
    )
    g = p.add_argument_group("inputs")
    g.add_argument("--vox1", type=Path, action="append", required=True, metavar="DIR",
                   help="VoxCeleb1 folder holding wav/<id>/<YouTube ID>/<nnnnn>.wav; repeat for "
                        "the dev and test downloads")
    g.add_argument("--faces", type=Path, required=True, metavar="DIR",
                   help="face folders, one per name: VGG_ALL_FRONTAL/<name>/*.jpg or any "
                        "<name>/*.jpg|png tree")
    g.add_argument("--vox1-meta", type=Path, metavar="FILE",
                   help="vox1_meta.csv (default: in the first --vox1 folder)")
    g.add_argument("--vox2", type=Path, action="append", default=[], metavar="DIR",
                   help="VoxCeleb2 folder holding aac/<id>/<YouTube ID>/<nnnnn>.m4a (or "
                        "dev/aac, test/aac): more utterances for the same names")
    g.add_argument("--vox2-meta", type=Path, metavar="FILE",
                   help="vox2_meta.csv (default: in the first --vox2 folder)")
    g.add_argument("--vggface2-meta", type=Path, metavar="FILE",
                   help="VGGFace2 identity_meta.csv, naming VoxCeleb2's speakers (default: in "
                        "the first --vox2 folder)")
    g.add_argument("--split-file", type=Path, metavar="FILE",
                   help="lines '<name or VoxCeleb1 ID> <train|val|test>' overriding the split; "
                        "identities it does not list are left out")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write")
    g.add_argument("--face-size", type=int, default=64, metavar="PX",
                   help="side of the square faces (default: %(default)s)")
    g.add_argument("--face-format", choices=("png", "jpg"), default="png",
                   help="image format of the faces in the shards (default: %(default)s)")
    g.add_argument("--faces-per-sample", type=int, default=2, metavar="K",
                   help="faces stored with each utterance (default: %(default)s)")
    g.add_argument("--known", type=int, default=5, metavar="N",
                   help="utterances of each training identity held out as the 'known' split "
                        "(default: %(default)s)")
    g.add_argument("--shard-size", type=int, default=1000, metavar="N",
                   help="most samples per shard; small splits still get up to 64 shards, "
                        "one per (GPU, loader worker) of 8 x 8 (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the known hold-out, the faces of each sample and the order of "
                        "the training shards (default: %(default)s)")
    g = p.add_argument_group("audio")
    g.add_argument("--vad-aggressiveness", type=int, default=2, choices=(0, 1, 2, 3),
                   help="webrtcvad mode, 3 drops the most as non-speech (default: %(default)s)")
    g.add_argument("--vad-frame-ms", type=int, default=20, choices=(10, 20, 30),
                   help="VAD frame length (default: %(default)s)")
    g.add_argument("--vad-padding-ms", type=int, default=200, metavar="MS",
                   help="audio kept on each side of detected speech (default: %(default)s)")
    g.add_argument("--no-vad", action="store_true", help="keep silences (no trimming)")
    g.add_argument("--min-seconds", type=float, default=1.0, metavar="S",
                   help="shortest utterance kept, after trimming (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                   help="worker processes, 0 to run in this process (default: the CPU count, "
                        "%(default)s here)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--overwrite", action="store_true",
                   help="start again: delete what an earlier run wrote in --out")
    g.add_argument("--keep-cache", action="store_true",
                   help="keep the decoded faces in OUT/.prepare/faces after a complete run")
    g.add_argument("--dry-run", action="store_true",
                   help="scan and match, print what would be written, write nothing")
    return p


def config_from_args(args) -> PrepareConfig:
    return PrepareConfig(
        audio=AudioSettings(vad=not args.no_vad, aggressiveness=args.vad_aggressiveness,
                            frame_ms=args.vad_frame_ms, padding_ms=args.vad_padding_ms,
                            min_seconds=args.min_seconds),
        faces=FaceSettings(size=args.face_size, format=args.face_format),
        known=args.known, faces_per_sample=args.faces_per_sample, shard_size=args.shard_size,
        seed=args.seed)


def dry_run(inputs: P.Inputs) -> str:
    scan = P.scan(inputs)
    per_split = {s: [p for p in scan.people if p.split == s] for s in P.GALLERY_SPLITS}
    lines = [f"{len(scan.people)} identities with voices and faces:"]
    lines += [f"  {s:<5} {len(ps):>6} identities {sum(len(p.voices) for p in ps):>9} utterances "
              f"{sum(len(p.faces) for p in ps):>8} faces" for s, ps in per_split.items()]
    counts = summary(scan.skipped)
    if counts:
        lines.append("left out before decoding:")
        lines += [f"  {reason}: {n}" for reason, n in counts.items()]
    return "\n".join(lines)


@reports_errors("voice2face prepare")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    inputs = P.Inputs(vox1=tuple(args.vox1), faces=args.faces, vox1_meta=args.vox1_meta,
                      vox2=tuple(args.vox2), vox2_meta=args.vox2_meta,
                      vggface2_meta=args.vggface2_meta, split_file=args.split_file)
    try:
        config = config_from_args(args)
        check_output_path("--out", args.out, folder=True)
        for folder in (*args.vox1, *args.vox2, args.faces):
            if folder is not None and folder.is_file():
                raise UserError(f"{folder} is a file; expected a dataset folder")
    except (ValueError, UserError) as e:  # an option out of range, an output it cannot write
        print(f"voice2face prepare: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            print(dry_run(inputs))
            return 0
        start = time.time()
        report = prepare(inputs, args.out, config, workers=max(0, args.workers),
                         progress=not args.no_progress, overwrite=args.overwrite,
                         keep_cache=args.keep_cache)
    except PrepareError as e:
        print(f"voice2face prepare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nvoice2face prepare: interrupted; the shards finished so far are kept in "
              f"{args.out}: run the same command again to continue from them", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(report))
    print(f"wrote {args.out} in {time.time() - start:.0f} s")
    return 0
