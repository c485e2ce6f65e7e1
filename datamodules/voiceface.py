"""The one DataModule every method trains from (format: docs/data.md).

Training streams the sample shards with webdataset. Shards are split explicitly over
(rank, worker) slots: webdataset's default node splitter raises under DDP, and a rank that
runs out of batches before the others hangs them in the next collective. So every slot
yields the same number of batches, ``ceil(largest slot / batch_size)``: a slot with fewer
samples starts another shuffled pass over its own shards to fill its last batches. Ranks
never share a shard, so their samples are disjoint, and each slot sees all of its own.
A slot needs a shard of its own: with fewer shards than ranks x workers, each rank runs
with fewer workers (and says so once); fewer shards than ranks is an error.

Every slot draws its shard order, shuffle, crops and flips from its own generator, seeded by
(seed, rank, worker, epoch): ranks and epochs differ, and a rerun repeats them. Workers are
persistent, so the epoch reaches them through a shared-memory counter (``TrainLoader``).

Evaluation reads the same shards through an index of tar member offsets (map-style), so
validation and test give the same samples in the same order whatever the number of workers;
under DDP each rank takes every ``world``-th sample, without the padding duplicates of
``DistributedSampler``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from datamodules.features import AudioFeatures, crop_start, face_to_tensor, random_crop
from datamodules.shards import (DataFormatError, decode_audio, decode_image, read_manifest,
                                shard_paths)

log = logging.getLogger(__name__)
# TrainStream.__len__ is exact for any number of workers (each worker yields a fixed count).
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
GENDERS = {"f": 0, "m": 1}
FEATURES = ("worker", "device")  # where log-mel and STFT are computed (docs/data.md)


# --- decoding one sample -------------------------------------------------------------------

class SampleDecoder:
    """Raw shard members -> tensors. Errors name the shard and the key."""

    def __init__(self, manifest: dict, features: AudioFeatures | None, crop_samples: int | None,
                 flip: bool, label_of: dict[int, int], wave: bool = False):
        # features=None: faces only, the audio member is not decoded; wave: the (cropped)
        # waveform is the sample's audio, for features computed on the accelerator
        self.features, self.crop_samples, self.flip = features, crop_samples, flip
        self.label_of, self.wave = label_of, wave
        self.sample_rate = manifest["sample_rate"]

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        where = f"{raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"
        meta = self._meta(raw, where)
        out = {"key": raw["__key__"], "identity": meta["identity"],
               "label": self.label_of.get(meta["identity"], -1),
               "gender": GENDERS[meta["gender"]]}
        if "flac" in raw and self.features is not None:
            out.update(self._audio(raw["flac"], where, rng))
        faces = sorted((k for k in raw if k.startswith("face") or k in ("png", "jpg")),
                       key=lambda k: (len(k), k))  # face2.png before face10.png
        if not faces:
            raise DataFormatError(f"{where}: no face image member")
        images = [self._image(raw[k], f"{where} member {k}") for k in faces]
        if rng is not None and self.flip:
            images = [im.flip(-1) if rng.random() < 0.5 else im for im in images]
        out["faces"] = torch.stack(images)
        out["face"] = out["faces"][0]
        return out

    @staticmethod
    def _meta(raw, where):
        if "json" not in raw:
            raise DataFormatError(f"{where}: missing member 'json'")
        try:
            meta = json.loads(raw["json"])
            meta["identity"] = int(meta["identity"])
            meta["gender"] = str(meta["gender"]).lower()[:1]
            if meta["gender"] not in GENDERS:
                raise ValueError(f"gender {meta['gender']!r} is not 'm' or 'f'")
        except (ValueError, KeyError, TypeError) as e:
            raise DataFormatError(f"{where}: bad json metadata ({e!r})") from e
        return meta

    def _audio(self, data, where, rng):
        crop = self.crop_samples if rng is not None else None
        try:
            wave, sr = decode_crop(data, crop, rng) if crop else decode_audio(data)
        except Exception as e:  # soundfile raises several types for corrupt data
            raise DataFormatError(f"{where}: cannot decode member 'flac' ({e})") from e
        if sr != self.sample_rate:
            raise DataFormatError(f"{where}: audio at {sr} Hz, manifest says {self.sample_rate}")
        if wave.size == 0:
            raise DataFormatError(f"{where}: empty audio")
        wave = torch.from_numpy(np.ascontiguousarray(wave))
        return {"wave": wave} if self.wave else self.features(wave)

    @staticmethod
    def _image(data, where):
        try:
            return face_to_tensor(decode_image(data))
        except Exception as e:
            raise DataFormatError(f"{where}: cannot decode image ({e})") from e


def decode_crop(data: bytes, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``random_crop(decode_audio(data), length, rng)``, decoding only the crop's window (the
    same draw, the same samples): a 2 s crop of an 8 s utterance costs 0.4x a whole decode."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.frames <= length:  # tiled: the whole clip
            wave = f.read(dtype="float32", always_2d=True).mean(axis=1)
            return random_crop(wave, length, rng), f.samplerate
        f.seek(crop_start(f.frames, length, rng))
        return f.read(length, dtype="float32", always_2d=True).mean(axis=1), f.samplerate


def _decode_or_skip(decode, raw, rng, skip: bool, skipped: Counter):
    try:
        return decode(raw, rng)
    except DataFormatError as e:
        if not skip:
            raise
        skipped[raw.get("__url__", "?")] += 1
        warnings.warn(f"skipping corrupt sample: {e}")
        return None


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; utterances of different lengths are zero-padded, with lengths."""
    batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for name in ("identity", "label", "gender", "index"):
        if name in samples[0]:
            batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.long)
    for name in ("face", "faces"):
        batch[name] = torch.stack([s[name] for s in samples])
    if "mel" in samples[0]:
        lengths = [s["mel"].shape[-1] for s in samples]
        batch["mel_lengths"] = torch.tensor(lengths, dtype=torch.long)
        for name in ("mel", "spec"):
            if name in samples[0]:
                batch[name] = _pad_stack([s[name] for s in samples], max(lengths))
    if "wave" in samples[0]:  # features="device": fixed-length crops in training
        lengths = [s["wave"].shape[-1] for s in samples]
        batch["wave_lengths"] = torch.tensor(lengths, dtype=torch.long)
        batch["wave"] = _pad_stack([s["wave"] for s in samples], max(lengths))
    return batch


def _pad_stack(xs: list[torch.Tensor], length: int) -> torch.Tensor:
    out = xs[0].new_zeros((len(xs), *xs[0].shape[:-1], length))
    for i, x in enumerate(xs):
        out[i, ..., :x.shape[-1]] = x
    return out


# --- training stream -----------------------------------------------------------------------

class TrainStream(IterableDataset):
    """Batches of random utterance crops, the same number from every (rank, worker) slot."""

    def __init__(self, shards: list[dict], urls: list[str], decode: SampleDecoder,
                 batch_size: int, rank: int, world_size: int, num_workers: int,
                 shuffle_buffer: int, skip_corrupt: bool, seed: int = 0):
        self.urls, self.sizes = urls, [s["samples"] for s in shards]
        self.size_of = dict(zip(urls, self.sizes))
        self.decode, self.batch_size = decode, batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer, self.skip_corrupt = shuffle_buffer, skip_corrupt
        self.seed = seed
        # shared memory: persistent workers keep their copy of this object between epochs
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        n_slots = self.world_size * self.num_workers
        if len(urls) < n_slots:  # VoiceFaceDataModule.train_workers fits the workers first
            raise DataFormatError(
                f"{len(urls)} training shards cannot feed {self.world_size} rank(s) x "
                f"{self.num_workers} worker(s): use fewer data.num_workers or write more shards")
        slot_sizes = [sum(self.sizes[j::n_slots]) for j in range(n_slots)]
        self.batches_per_slot = math.ceil(max(slot_sizes) / batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def generator(self, worker: int) -> np.random.Generator:
        """The random stream of one slot in the current epoch."""
        return np.random.default_rng(
            [self.seed % 2**63, self.rank, worker, int(self._epoch)])

    def __len__(self) -> int:  # batches per rank and epoch
        return self.batches_per_slot * self.num_workers

    def slot_urls(self, worker: int) -> list[str]:
        n_slots = self.world_size * self.num_workers
        return self.urls[self.rank * self.num_workers + worker::n_slots]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = self.generator(worker)
        urls, skipped = self.slot_urls(worker), Counter()
        needed, batch = self.batches_per_slot * self.batch_size, []
        for raw in self._passes(urls, rng, skipped):
            sample = _decode_or_skip(self.decode, raw, rng, self.skip_corrupt, skipped)
            if sample is None:
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch, needed = [], needed - self.batch_size
                if needed <= 0:
                    break
        if skipped:
            log.warning("skipped corrupt training samples: %s", dict(skipped))

    def _passes(self, urls: list[str], rng: np.random.Generator,
                skipped: Counter) -> Iterator[dict]:
        """Shuffled passes over this slot's shards, as many as the epoch needs."""
        while True:
            order = [urls[i] for i in rng.permutation(len(urls))]
            stream = (raw for url in order for raw in self._shard(url, skipped))
            if self.shuffle_buffer > 1:
                stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                     rng=_PyRandom(rng))(stream)
            yield from stream

    def _shard(self, url: str, skipped: Counter) -> Iterator[dict]:
        """The raw samples of one shard. A truncated or unreadable shard is a
        ``DataFormatError``; with ``skip_corrupt``, its readable samples are used and the
        samples it lacks are counted in ``skipped`` and logged."""
        errors: list[Exception] = []

        def stop(exn: Exception) -> bool:  # webdataset's handler: False stops this shard
            errors.append(exn)
            return False

        # one sample is held back: when the shard turns out short, the last one read may
        # lack members, and the error should say the shard is truncated, not the sample
        n, held = 0, None
        for raw in wds.tarfile_to_samples(handler=stop)([{"url": url}]):
            if held is not None:
                yield held
            n, held = n + 1, raw
        expected = self.size_of[url]
        if not errors and n >= expected:
            if held is not None:
                yield held
            return
        if held is not None and self.skip_corrupt:
            yield held  # decoded if whole, else skipped and counted as a corrupt sample
        # webdataset appends " @ <stream>" to the message
        why = (f"{type(errors[0]).__name__}: {str(errors[0].args[0]).split(' @ ')[0]}"
               if errors and errors[0].args else "it ends early")
        message = (f"{url}: truncated or unreadable shard ({why}); {n} of its {expected} "
                   f"samples read")
        if not self.skip_corrupt:
            raise DataFormatError(message + "; rewrite it, or set data.skip_corrupt=true to "
                                            "train on its readable samples")
        skipped[url] += max(0, expected - n)
        log.warning("%s: using those (data.skip_corrupt)", message)


class TrainLoader(DataLoader):
    """The training DataLoader: tells its ``TrainStream`` the epoch before each pass.

    ``epoch()`` gives it (the trainer's ``current_epoch``, so a resumed run draws what the
    interrupted one drew); without one, passes are counted from 0.
    """

    def __init__(self, dataset: TrainStream, epoch: Callable[[], int | None] | None = None,
                 **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch, self.passes = epoch, 0

    def __iter__(self):
        epoch = self.epoch() if self.epoch is not None else None
        self.dataset.set_epoch(self.passes if epoch is None else epoch)
        self.passes += 1
        return super().__iter__()


class _PyRandom:
    """The ``random.Random`` interface webdataset's shuffle uses, backed by a numpy rng."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def randint(self, a: int, b: int) -> int:
        return int(self.rng.integers(a, b + 1))

    def random(self) -> float:
        return float(self.rng.random())


# --- evaluation: indexed shards --------------------------------------------------------------

class IndexedShards(Dataset):
    """Map-style access to the samples of a list of shards, in shard order.

    The index holds tar member offsets, so a worker reads one sample with a seek, and the
    sample order does not depend on how many workers read it.
    """

    def __init__(self, urls: list[str], decode: Callable, sizes: list[int] | None = None,
                 skip_corrupt: bool = False):
        self.urls, self.decode = urls, decode
        self.items: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for u, url in enumerate(urls):
            members = self._index(url, sizes[u] if sizes else None, skip_corrupt)
            self.items.extend((u, key, mem) for key, mem in members.items())
        self._files: dict[int, Any] = {}

    @staticmethod
    def _index(url: str, expected: int | None, skip_corrupt: bool) -> dict[str, dict]:
        """Member offsets of one shard, by sample key. A truncated shard (a member cut off,
        fewer samples than the manifest lists) is a ``DataFormatError``; with
        ``skip_corrupt``, its whole members are indexed and the loss is logged."""
        members: dict[str, dict[str, tuple[int, int]]] = {}
        problem = None
        try:
            size = Path(url).stat().st_size
            with tarfile.open(url) as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    if m.offset_data + m.size > size:
                        problem = f"member {m.name} is cut off"
                        break
                    key, _, ext = m.name.partition(".")
                    members.setdefault(key, {})[ext] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem is None and expected is not None and len(members) > expected:
            raise DataFormatError(f"{url}: {len(members)} samples, but the manifest lists "
                                  f"{expected}; the manifest is not this shard's (rewrite the "
                                  f"data with the command that made it)")
        if problem is None and expected is not None and len(members) < expected:
            problem = "it ends early"
        if problem is not None:
            message = (f"{url}: truncated or unreadable shard ({problem}); {len(members)} "
                       f"of its {expected if expected is not None else '?'} samples readable")
            if not skip_corrupt:
                raise DataFormatError(message + "; rewrite it, or set data.skip_corrupt=true "
                                                "to use its readable samples")
            log.warning("%s: using those (data.skip_corrupt)", message)
        return members

    def __len__(self) -> int:
        return len(self.items)

    def raw(self, i: int) -> dict[str, Any]:
        u, key, members = self.items[i]
        if u not in self._files:  # opened lazily, so each worker has its own handles
            self._files[u] = open(self.urls[u], "rb")
        f = self._files[u]
        raw = {"__key__": key, "__url__": self.urls[u]}
        for ext, (offset, size) in members.items():
            f.seek(offset)
            raw[ext] = f.read(size)
        return raw

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.decode(self.raw(i), None)
        sample["index"] = i
        return sample

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}


class RankSlice(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: ranks partition the set, nothing repeats."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _SkippingDataset(Dataset):
    """Wraps IndexedShards for data.skip_corrupt=true: a corrupt sample becomes None."""

    def __init__(self, inner: IndexedShards):
        self.inner, self.skipped = inner, Counter()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        sample = _decode_or_skip(self.inner.decode, self.inner.raw(i), None, True, self.skipped)
        if sample is not None:
            sample["index"] = i
        return sample


def _collate_present(samples):
    samples = [s for s in samples if s is not None]
    return collate(samples) if samples else None


# --- the DataModule ------------------------------------------------------------------------

class VoiceFaceDataModule(L.LightningDataModule):
    """VoxCeleb ∩ VGGFace-style voice–face data, from the shards of one dataset folder.

    Args:
        root: dataset folder with ``manifest.json`` (docs/data.md).
        batch_size: training batch size per rank; ``eval_batch_size`` for evaluation.
        num_workers: DataLoader worker processes.
        crop_seconds: length of the random utterance crops of training batches.
        spectrogram: also return the complex STFT (``spec``), for Speech2Face-style encoders.
        skip_corrupt: skip (and count) undecodable samples instead of raising.
        shuffle_buffer: webdataset sample shuffle buffer of the training stream.
        val_gallery: ``val_dataloader`` returns ``[samples, gallery]`` instead of samples only.
        flip: random horizontal flips of training faces.
        audio: decode the utterances (``mel``); false for face-only methods, whose batches
            then hold faces and labels only.
        train_audio: decode the utterances of training batches (with ``audio``); false for
            a method that reads cached voice embeddings there (evaluation still decodes).
        features: where training batches' log-mel (and STFT) are computed: ``"worker"``, on
            the loader workers; ``"device"``, on the accelerator: training batches carry
            ``wave`` ``[B, L]`` crops and ``wave_lengths`` instead, which
            ``datamodules.features.device_features`` turns into ``mel``/``mel_lengths``/``spec``
            in the LightningModule's ``on_after_batch_transfer``. Evaluation batches always
            carry worker features.
        seed: with the rank, the loader worker and the epoch, seeds the training stream's
            shuffling, crops and flips.
        persistent_workers: keep the training loader's workers between epochs.
    """

    def __init__(self, root: str | Path, batch_size: int = 64, eval_batch_size: int | None = None,
                 num_workers: int = 0, crop_seconds: float = 2.0, spectrogram: bool = False,
                 skip_corrupt: bool = False, shuffle_buffer: int = 500, val_gallery: bool = False,
                 flip: bool = True, audio: bool = True, train_audio: bool = True,
                 features: str = "worker", seed: int = 0, persistent_workers: bool = True):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features={features!r}: expected one of {FEATURES}")
        self.root = Path(root)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.crop_seconds = num_workers, crop_seconds
        self.spectrogram, self.skip_corrupt = spectrogram, skip_corrupt
        self.shuffle_buffer, self.val_gallery, self.flip = shuffle_buffer, val_gallery, flip
        self.audio, self.train_audio = audio, train_audio
        self.features_on, self.seed = features, seed
        self.persistent_workers = persistent_workers
        self._told: set[tuple[int, int]] = set()  # (world, workers) already reported
        self.manifest = read_manifest(self.root)
        self.identities = self.manifest["identities"]
        self.train_identities = [i["index"] for i in self.identities if i["split"] == "train"]
        self.label_of = {ident: c for c, ident in enumerate(self.train_identities)}
        self.features = AudioFeatures(spectrogram=spectrogram,
                                      sample_rate=self.manifest["sample_rate"])

    # facts the methods size their nets by
    @property
    def num_train_identities(self) -> int:
        return len(self.train_identities)

    @property
    def face_size(self) -> int:
        return int(self.manifest["face_size"])

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _decoder(self, train: bool) -> SampleDecoder:
        crop = int(self.crop_seconds * self.manifest["sample_rate"]) if train else None
        audio = self.audio and (self.train_audio or not train)
        return SampleDecoder(self.manifest, self.features if audio else None, crop,
                             self.flip and train, self.label_of,
                             wave=train and self.features_on == "device")

    def train_workers(self, world_size: int = 1, rank: int = 0) -> int:
        """The loader workers each rank trains with: ``num_workers``, or fewer where the
        training shards cannot give every (rank, worker) slot one of its own; then it says so,
        once, on rank 0. Fewer shards than ranks is a ``DataFormatError``."""
        n = len(self._split("splits", "train")[0])
        slots = world_size * max(1, self.num_workers)
        if n >= slots:
            return self.num_workers
        what = (f"{self.root / 'manifest.json'}: {n} training shards for {world_size} rank(s) x "
                f"{self.num_workers} worker(s) = {slots} loader slots")
        if n < world_size:
            raise DataFormatError(f"{what}; every rank needs a shard of its own: write more "
                                  f"shards (voice2face prepare --shard-size) or use fewer ranks")
        workers = n // world_size
        if rank == 0 and (world_size, self.num_workers) not in self._told:
            self._told.add((world_size, self.num_workers))
            warnings.warn(f"{what}; training with {workers} worker(s) per rank (set "
                          f"data.num_workers={workers}, or write more shards: voice2face "
                          f"prepare --shard-size)", stacklevel=2)
        return workers

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before training starts, not when its first batch is asked for
            rank, world = self._rank_world()
            self.train_workers(world, rank)

    def _split(self, section: str, split: str) -> tuple[list[dict], list[str]]:
        entry = self.manifest[section].get(split)
        if entry is None:
            raise DataFormatError(f"{self.root}/manifest.json has no {section} split {split!r}; "
                                  f"it has {sorted(self.manifest[section])}")
        shards = entry["shards"]
        return shards, shard_paths(self.root, [s["name"] for s in shards])

    def train_dataset(self, rank: int = 0, world_size: int = 1) -> TrainStream:
        shards, urls = self._split("splits", "train")
        return TrainStream(shards, urls, self._decoder(train=True), self.batch_size, rank,
                           world_size, self.train_workers(world_size, rank),
                           self.shuffle_buffer, self.skip_corrupt, self.seed)

    def train_dataloader(self) -> TrainLoader:
        rank, world = self._rank_world()
        workers = self.train_workers(world, rank)
        return TrainLoader(self.train_dataset(rank, world), epoch=self._current_epoch,
                           num_workers=workers,
                           persistent_workers=self.persistent_workers and workers > 0,
                           pin_memory=torch.cuda.is_available())

    def _current_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def eval_dataset(self, split: str, gallery: bool = False) -> Dataset:
        shards, urls = self._split("gallery" if gallery else "splits", split)
        ds = IndexedShards(urls, self._decoder(train=False), [s["samples"] for s in shards],
                           self.skip_corrupt)
        return _SkippingDataset(ds) if self.skip_corrupt else ds

    def eval_dataloader(self, split: str, gallery: bool = False, rank: int | None = None,
                        world_size: int | None = None) -> DataLoader:
        """Samples (or gallery faces) of a split, in a fixed order; sliced by rank under DDP."""
        if rank is None:
            rank, world_size = self._rank_world()
        ds = self.eval_dataset(split, gallery)
        return DataLoader(ds, batch_size=self.eval_batch_size,
                          sampler=RankSlice(len(ds), rank, world_size),
                          num_workers=self.num_workers,
                          collate_fn=_collate_present if self.skip_corrupt else collate)

    def gallery_dataloader(self, split: str, **kw) -> DataLoader:
        return self.eval_dataloader(split, gallery=True, **kw)

    def val_dataloader(self):
        samples = self.eval_dataloader("val")
        return [samples, self.gallery_dataloader("val")] if self.val_gallery else samples

