"""Render a synthetic world into the dataset format (docs/data.md).

Rendering and writing are separate: ``render_utterance`` / ``render_face`` (pure functions of
the config's seed and the item) run in worker processes, and only this module's writer
knows about shards. Another writer (a VoxCeleb-style folder tree, say) can reuse
``sample_identities``, ``iter_utterances``, ``sample_faces`` and the two render functions.

Determinism: every item draws from its own ``SeedSequence``-keyed generator and results
are consumed in job order (``imap``), so the same seed gives the same shard members
whatever the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import signal
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from datamodules.shards import (ShardWriter, encode_flac, encode_png, make_gallery_item,
                                make_sample, manifest_path, write_manifest)

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


class _SplitWriter:
    """A ShardWriter that cuts ``total`` samples into ``shard_sizes(total)`` shards."""

    def __init__(self, directory: Path, prefix: str, total: int):
        self.sizes = shard_sizes(total)
        self.writer = ShardWriter(directory, prefix, maxcount=max(self.sizes, default=1))
        self.shard, self.count = 0, 0

    def write(self, sample: dict) -> None:
        self.writer.write(sample)
        self.count += 1
        if self.count == self.sizes[self.shard]:
            self.writer.finish_shard()            # a no-op where maxcount already closed it
            self.shard, self.count = self.shard + 1, 0

    def close(self) -> dict:
        self.writer.close()
        entries = self.writer.entries
        assert [e["samples"] for e in entries] == self.sizes, (entries, self.sizes)
        return {"shards": entries, "samples": sum(self.sizes)}

    def abort(self) -> None:
        self.writer.__exit__(RuntimeError, None, None)


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
                   progress: bool = True) -> dict:
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

    total = len(identities) * config.faces + sum(len(u) for u in utterances.values())
    pool = _pool(workers, identities, config)       # before tqdm starts its monitor thread
    bar = tqdm(total=total, disable=not progress, unit="item", desc="synth", smoothing=0.05)
    writers: list[_SplitWriter] = []
    try:
        # faces first: the gallery, and the images that samples draw from
        gallery = {s: _SplitWriter(shard_dir, f"gallery-{s}", len(by_split[s]) * config.faces)
                   for s in GALLERY_SPLITS}
        writers += gallery.values()
        images: dict[int, list[bytes]] = {}
        rendered = _run(_faces_job, [i.index for i in identities], pool, 4)
        for ident, pngs in zip(identities, rendered):
            images[ident.index] = pngs
            for f, png in enumerate(pngs):
                meta = {"identity": ident.index, "name": ident.name, "gender": ident.gender,
                        "split": ident.split, "face": f"{ident.id}/f{f:03d}"}
                gallery[ident.split].write(make_gallery_item(face_key(ident.index, f), png, meta))
            bar.update(len(pngs))

        samples = {s: _SplitWriter(shard_dir, s, len(utterances[s])) for s in SAMPLE_SPLITS}
        writers += samples.values()
        jobs: list[Utterance] = [u for s in SAMPLE_SPLITS for u in utterances[s]]
        flacs = _run(_utterance_job, [(u.identity, u.number) for u in jobs], pool, 16)
        for utt, flac in zip(jobs, flacs):
            ident = identities[utt.identity]
            faces = [images[ident.index][f] for f in sample_faces(ident, utt.number, config)]
            meta = {"identity": ident.index, "name": ident.name, "gender": ident.gender,
                    "split": utt.split, "utterance": utt.source_id}
            samples[utt.split].write(make_sample(utt.key, flac, faces, meta))
            bar.update(1)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()

    split_entries = {s: w.close() for s, w in samples.items()}
    gallery_entries = {s: w.close() for s, w in gallery.items()}
    keep = {e["name"] for v in (*split_entries.values(), *gallery_entries.values())
            for e in v["shards"]}
    for path in shard_dir.iterdir():
        if _OUR_SHARDS.match(path.name) and path.name not in keep:
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
