"""Render a synthetic world into the dataset format (docs/data.md).

Rendering and writing are separate: ``render_utterance`` / ``render_face`` (pure functions of
the config's seed and the item) run in worker processes, and only this module's writer
knows about shards. Another writer (a VoxCeleb-style folder tree, say) can reuse
``sample_identities``, ``iter_utterances``, ``sample_faces`` and the two render functions.

Determinism: every item draws from its own ``SeedSequence``-keyed generator and results
are consumed in job order (``imap``), so the same seed gives the same shard members
whatever the number of workers.

Resuming (as ``voice2face prepare`` does): each shard is written as ``.tar.tmp`` and renamed
when whole (``ShardWriter``), then recorded in ``OUT/.synth/<shard>.json`` with a digest of
the world's config, the synthesiser's code, the shard's name and its keys, and the shard's
size. A run after an interruption keeps every shard whose record matches and renders only
what the others need; ``manifest.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

import datamodules.shards
from datamodules.shards import (ShardWriter, encode_flac, encode_png, make_gallery_item,
                                make_sample, manifest_path, write_json_atomic, write_manifest)

from .audio import render_utterance
from .ceiling import world_ceilings
from .faces import render_face
from .world import (ORDER, Identity, Utterance, WorldConfig, face_key, iter_utterances,
                    rng_for, sample_faces, sample_identities)

SAMPLE_SPLITS = ("train", "known", "val", "test")
GALLERY_SPLITS = ("train", "val", "test")
_OUR_SHARDS = re.compile(r"^(train|known|val|test|gallery-(train|val|test))-\d{6}\.tar(\.tmp)?$")


def shard_sizes(n: int) -> list[int]:
    """Balanced shard sizes for ``n`` samples: 16 shards once there are 8 samples per shard
    (the DataModule divides training shards among ranks x loader workers), more past 2,000
    samples per shard."""
    if n == 0:
        return []
    k = max(1, min(16, n // 8), math.ceil(n / 2000))
    return [n // k + (i < n % k) for i in range(k)]


STATE = ".synth"  # a record per finished shard, so that a rerun resumes


@dataclass
class _Shard:
    """One planned shard: its name, the items it holds (identity and face number for the
    gallery, utterances for samples) and the digest its record must match."""

    prefix: str
    index: int
    items: list
    keys: list[str]
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.index:06d}.tar"


def _code_version() -> str:
    """The synthesiser's and the shard format's source: a change to either rewrites every
    shard, where a resumed run would otherwise keep shards of the old code."""
    h = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")) + [Path(datamodules.shards.__file__)]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _plan(prefix: str, items: list, keys: list[str], world: str) -> list[_Shard]:
    shards, start = [], 0
    for index, size in enumerate(shard_sizes(len(items))):
        shard = _Shard(prefix, index, items[start:start + size], keys[start:start + size])
        shard.digest = hashlib.sha1(json.dumps([world, shard.name, shard.keys]).encode()).hexdigest()
        shards.append(shard)
        start += size
    return shards


def record_path(out: str | Path, name: str) -> Path:
    return Path(out) / STATE / f"{name}.json"


def _finished(out: Path, shard: _Shard) -> bool:
    """Whether the shard was written whole by a run of this world (its record matches and
    the file is there, of the size recorded)."""
    record = record_path(out, shard.name)
    try:
        done = json.loads(record.read_text())
        return (done["digest"] == shard.digest and done["samples"] == len(shard.items)
                and (out / "shards" / shard.name).stat().st_size == done["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_shard(out: Path, shard: _Shard, samples: Iterable[dict]) -> None:
    """The shard, atomically (``.tar.tmp`` in the shard folder, then renamed), then its
    record."""
    with ShardWriter(out / "shards", shard.prefix, maxcount=len(shard.items),
                     start=shard.index) as writer:
        for sample in samples:
            writer.write(sample)
    assert writer.entries == [{"name": shard.name, "samples": len(shard.items)}], writer.entries
    write_json_atomic(record_path(out, shard.name),
                      {"digest": shard.digest, "samples": len(shard.items),
                       "bytes": (out / "shards" / shard.name).stat().st_size})


# --- worker side ---------------------------------------------------------------------------

_WORLD: dict = {}


def _init_worker(identities: list[Identity], config: WorldConfig) -> None:
    _WORLD["identities"], _WORLD["config"] = identities, config


def _init_pool_worker(identities: list[Identity], config: WorldConfig) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool, and a worker
    # that also raised would print a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(identities, config)


def _faces_job(index: int) -> list[bytes]:
    ident, config = _WORLD["identities"][index], _WORLD["config"]
    return [encode_png(render_face(ident, f, config)) for f in range(config.faces)]


def _utterance_job(job: tuple[int, int]) -> bytes:
    index, number = job
    ident, config = _WORLD["identities"][index], _WORLD["config"]
    return encode_flac(render_utterance(ident, number, config), config.sample_rate)


def _run(fn: Callable, jobs: list, pool, chunksize: int) -> Iterable:
    if pool is None:
        return map(fn, jobs)
    return pool.imap(fn, jobs, chunksize=chunksize)


def _pool(workers: int, identities, config):
    if workers <= 1:
        _init_worker(identities, config)
        return None
    # fork shares the parent's imports; spawn re-imports them (datamodules pulls in torch)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(workers, _init_pool_worker, (identities, config))


# --- writer side ---------------------------------------------------------------------------

def generate_world(out: str | Path, config: WorldConfig, workers: int | None = None,
                   progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Write the world of ``config`` to ``out`` (``manifest.json`` + ``shards/``).

    Returns the manifest. Shards of an earlier world in ``out`` that this one does not
    list are removed, and the old manifest goes first, so a failed run leaves no manifest
    that points at a mix of worlds.
    """
    out = Path(out)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest_path(out).unlink(missing_ok=True)
    workers = workers or len(os.sched_getaffinity(0))

    identities = sample_identities(config)
    ceilings = world_ceilings(identities, config)
    by_split = {s: [i for i in identities if i.split == s] for s in GALLERY_SPLITS}
    utterances = {s: [] for s in SAMPLE_SPLITS}
    for utt in iter_utterances(identities, config):
        utterances[utt.split].append(utt)
    # Training samples are shuffled across shards, so that every shard (and every rank's
    # share of them) holds many identities; evaluation splits stay in identity order.
    order = rng_for(config.seed, ORDER).permutation(len(utterances["train"]))
    utterances["train"] = [utterances["train"][i] for i in order]

    world = json.dumps([config.to_dict(), _code_version()], sort_keys=True)
    gallery = {s: _plan(f"gallery-{s}", [(i, f) for i in by_split[s] for f in range(config.faces)],
                        [face_key(i.index, f) for i in by_split[s] for f in range(config.faces)],
                        world) for s in GALLERY_SPLITS}
    samples = {s: _plan(s, utterances[s], [u.key for u in utterances[s]], world)
               for s in SAMPLE_SPLITS}
    (out / STATE).mkdir(exist_ok=True)
    todo_gallery = [sh for s in GALLERY_SPLITS for sh in gallery[s] if not _finished(out, sh)]
    todo_samples = [sh for s in SAMPLE_SPLITS for sh in samples[s] if not _finished(out, sh)]
    # faces of the gallery shards to write, and those the samples to write draw from
    needed = sorted({i.index for sh in todo_gallery for i, _ in sh.items}
                    | {u.identity for sh in todo_samples for u in sh.items})
    planned = sum(map(len, (*gallery.values(), *samples.values())))
    todo = len(todo_gallery) + len(todo_samples)
    if log is not None and todo < planned:
        log(f"{planned - todo} of {planned} shards already written; writing the other {todo}")

    total = (len(needed) * config.faces + sum(len(sh.items) for sh in todo_samples))
    pool = _pool(workers, identities, config)       # before tqdm starts its monitor thread
    bar = tqdm(total=total, disable=not progress, unit="item", desc="synth", smoothing=0.05)
    try:
        # faces first: the gallery, and the images that samples draw from
        images: dict[int, list[bytes]] = {}
        for index, pngs in zip(needed, _run(_faces_job, needed, pool, 4)):
            images[index] = pngs
            bar.update(len(pngs))
        for shard in todo_gallery:
            _write_shard(out, shard, (make_gallery_item(
                face_key(ident.index, f), images[ident.index][f],
                {"identity": ident.index, "name": ident.name, "gender": ident.gender,
                 "split": ident.split, "face": f"{ident.id}/f{f:03d}"})
                for ident, f in shard.items))

        jobs: list[Utterance] = [u for sh in todo_samples for u in sh.items]
        flacs = iter(_run(_utterance_job, [(u.identity, u.number) for u in jobs], pool, 16))

        def rendered(shard: _Shard):
            for utt in shard.items:
                ident = identities[utt.identity]
                faces = [images[ident.index][f] for f in sample_faces(ident, utt.number, config)]
                meta = {"identity": ident.index, "name": ident.name, "gender": ident.gender,
                        "split": utt.split, "utterance": utt.source_id}
                yield make_sample(utt.key, next(flacs), faces, meta)
                bar.update(1)

        for shard in todo_samples:
            _write_shard(out, shard, rendered(shard))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()

    def entries(shards: list[_Shard]) -> dict:
        return {"shards": [{"name": sh.name, "samples": len(sh.items)} for sh in shards],
                "samples": sum(len(sh.items) for sh in shards)}

    split_entries = {s: entries(samples[s]) for s in SAMPLE_SPLITS}
    gallery_entries = {s: entries(gallery[s]) for s in GALLERY_SPLITS}
    keep = {e["name"] for v in (*split_entries.values(), *gallery_entries.values())
            for e in v["shards"]}
    for path in shard_dir.iterdir():
        if _OUR_SHARDS.match(path.name) and path.name not in keep:
            path.unlink()
    for path in (out / STATE).iterdir():
        if path.name.removesuffix(".json") not in keep:
            path.unlink()

    manifest = {
        "kind": "synthetic",
        "sample_rate": config.sample_rate,
        "face_size": config.face_size,
        "faces_per_sample": config.faces_per_sample,
        "identities": [ident.table_row() for ident in identities],
        "splits": split_entries,
        "gallery": gallery_entries,
        "ceilings": {k: ceilings[k] for k in ("match_1to2", "match_1to2_gender", "trials")},
        "source": {"generator": "voice2face.synth", **config.to_dict()},
    }
    write_manifest(out, manifest)
    return manifest
