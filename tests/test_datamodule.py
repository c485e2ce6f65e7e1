"""The shard format and the shared DataModule (fake data, in-process and 2-process DDP)."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DataFormatError, VoiceFaceDataModule, read_manifest
from datamodules.features import (HOP_LENGTH, N_FFT, AudioFeatures, crop_start, device_features,
                                  face_to_tensor, random_crop, tensor_to_face)
from datamodules.voiceface import decode_crop
from datamodules.shards import (ShardWriter, decode_audio, decode_image, encode_flac, encode_png,
                                iter_tar, make_sample)
from fake_data import write_fake_dataset
from helpers import all_keys


# --- format ----------------------------------------------------------------------------------

def test_members_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    audio = (0.5 * rng.uniform(-1, 1, 8000)).astype(np.float32)
    faces = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    meta = {"identity": 7, "name": "Zoë O'Neil", "gender": "f", "split": "train", "utterance": "x"}
    with ShardWriter(tmp_path, "train", maxcount=10) as w:
        w.write(make_sample("id7-u0", encode_flac(audio), [encode_png(f) for f in faces], meta))
    (sample,) = list(iter_tar(tmp_path / "train-000000.tar"))
    assert json.loads(sample["json"]) == meta
    wave, sr = decode_audio(sample["flac"])
    assert sr == 16000 and np.abs(wave - audio).max() < 1 / 2**14  # 16-bit quantisation
    for i, face in enumerate(faces):
        assert np.array_equal(decode_image(sample[f"face{i}.png"]), face)
    assert w.entries == [{"name": "train-000000.tar", "samples": 1}]


def test_writer_rotates_and_leaves_no_partial_shard(tmp_path):
    sample = make_sample("k", encode_flac(np.zeros(400, np.float32)),
                         [encode_png(np.zeros((4, 4, 3), np.uint8))] * 2,
                         {"identity": 0, "name": "F", "gender": "m", "split": "train"})
    with pytest.raises(RuntimeError, match="interrupted"):  # the writer's own error, passed on
        with ShardWriter(tmp_path, "train", maxcount=2) as w:
            for i in range(3):
                w.write({**sample, "__key__": f"k{i}"})
            raise RuntimeError("interrupted")
    # the full first shard survives, the half-written second one does not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    with pytest.raises(DataFormatError, match="no dots"):
        ShardWriter(tmp_path, "x").write({**sample, "__key__": "a.b"})


def test_manifest_errors(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(DataFormatError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 99}')
    with pytest.raises(DataFormatError, match="format_version 99"):
        read_manifest(tmp_path)


# --- features --------------------------------------------------------------------------------

def test_logmel_frames_are_unnormalised_log_power():
    wave = torch.randn(16000)
    mel = AudioFeatures()(wave)["mel"]
    assert mel.shape == (64, 1 + (16000 - N_FFT) // HOP_LENGTH)
    # log power, left unnormalised (the voice nets normalise): twice the amplitude is
    # log(4) more in every bin and frame
    louder = AudioFeatures()(2 * wave)["mel"]
    np.testing.assert_allclose((louder - mel).numpy(), np.log(4.0), atol=1e-3)
    spec = AudioFeatures(spectrogram=True)(wave)["spec"]
    assert spec.dtype == torch.complex64 and spec.shape == (257, mel.shape[1])


def test_face_tensor_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    t = face_to_tensor(img)
    assert t.shape == (3, 5, 6) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_face(t), img)


# --- the DataModule --------------------------------------------------------------------------

def test_train_batches_shapes_and_labels(fake_root):
    dm = VoiceFaceDataModule(fake_root, batch_size=4, num_workers=0, crop_seconds=0.5)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader())
    b = batches[0]
    assert b["mel"].shape == (4, 64, AudioFeatures.num_frames(8000)) and b["mel"].dtype == torch.float32
    assert b["faces"].shape == (4, 2, 3, 16, 16) and torch.equal(b["face"], b["faces"][:, 0])
    assert b["face"].min() >= -1 and b["face"].max() <= 1
    assert (b["label"] >= 0).all() and (b["label"] < dm.num_train_identities).all()
    table = {i["index"]: i for i in dm.identities}
    for ident, gender in zip(b["identity"].tolist(), b["gender"].tolist()):
        assert table[ident]["split"] == "train" and "fm"[gender] == table[ident]["gender"]


def test_eval_whole_utterances_padded_and_ordered(fake_root):
    dm0 = VoiceFaceDataModule(fake_root, eval_batch_size=5, num_workers=0)
    dm2 = VoiceFaceDataModule(fake_root, eval_batch_size=5, num_workers=2)
    b0 = list(dm0.eval_dataloader("test"))
    b2 = list(dm2.eval_dataloader("test"))
    keys0 = [k for b in b0 for k in b["key"]]
    assert keys0 == [k for b in b2 for k in b["key"]] == all_keys(fake_root, "test")
    assert [i for b in b0 for i in b["index"].tolist()] == list(range(len(keys0)))
    b = b0[0]
    assert b["mel"].shape[-1] == b["mel_lengths"].max()
    for x, n in zip(b["mel"], b["mel_lengths"]):
        assert (x[:, n:] == 0).all()
    assert (b["label"] == -1).all()
    gallery = [k for b in dm0.gallery_dataloader("test") for k in b["key"]]
    assert len(gallery) == read_manifest(fake_root)["gallery"]["test"]["samples"]


def test_faces_only_batches_skip_the_audio(fake_root, monkeypatch):
    both = next(iter(VoiceFaceDataModule(fake_root, eval_batch_size=4).eval_dataloader("test")))
    dm = VoiceFaceDataModule(fake_root, eval_batch_size=4, audio=False)
    monkeypatch.setattr("datamodules.voiceface.decode_audio", None)  # calling it would fail
    faces = next(iter(dm.eval_dataloader("test")))
    assert "mel" not in faces and "mel_lengths" not in faces
    assert faces["key"] == both["key"] and torch.equal(faces["faces"], both["faces"])
    train = next(iter(dm.train_dataloader()))
    assert "mel" not in train and train["faces"].shape[0] == dm.batch_size


def test_eval_ranks_partition_the_split(fake_root):
    dm = VoiceFaceDataModule(fake_root, eval_batch_size=3)
    parts = [[i for b in dm.eval_dataloader("val", rank=r, world_size=3) for i in b["index"].tolist()]
             for r in range(3)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(all_keys(fake_root, "val"))))


@pytest.mark.parametrize("ranks,workers", [(1, 2), (2, 1), (2, 2)])
def test_train_slots_disjoint_covering_and_equal(fake_root, ranks, workers):
    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=workers, crop_seconds=0.2)
    seen, counts = [], []
    for rank in range(ranks):
        ds = dm.train_dataset(rank, ranks)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(ds)
        seen.append({k for b in batches for k in b["key"]})
    assert len(set(counts)) == 1
    assert set.union(*seen) == set(all_keys(fake_root, "train"))
    if ranks == 2:
        assert not seen[0] & seen[1]


def test_too_few_shards_for_the_slots(fake_root):
    # 5 training shards: 2 ranks x 4 workers run with 2 workers each, and say so in one
    # line naming the manifest, the shards and the slots, once and before training
    dm = VoiceFaceDataModule(fake_root, batch_size=2, num_workers=4)
    with pytest.warns(UserWarning) as told:
        dm.setup("fit")  # no trainer: one rank
        assert dm.train_workers(2) == 2
    (message,) = [str(w.message) for w in told]
    for fact in (str(fake_root / "manifest.json"), "5 training shards", "2 rank(s) x 4 worker(s)",
                 "2 worker(s) per rank", "data.num_workers=2", "--shard-size"):
        assert fact in message, (fact, message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert dm.train_dataset(0, 2).num_workers == 2 and dm.train_workers(1) == 4
        assert dm.train_workers(2, rank=1) == 2
    # fewer shards than ranks: no worker count helps
    with pytest.raises(DataFormatError, match=r"manifest.json: 5 training shards for 6 rank\(s\)"
                                              r" x 4 worker\(s\) = 24 loader slots; every rank"):
        dm.train_workers(6)


def test_train_loader_is_persistent_and_seeded(fake_root):
    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=1, crop_seconds=0.2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert not VoiceFaceDataModule(fake_root, num_workers=0).train_dataloader().persistent_workers
    assert not VoiceFaceDataModule(fake_root, num_workers=1,
                                   persistent_workers=False).train_dataloader().persistent_workers
    # every pass of a persistent worker is a new epoch, and the same seed repeats them
    epochs = [[(b["key"], b["mel"]) for b in loader] for _ in range(2)]
    again = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=1, crop_seconds=0.2)
    loader = again.train_dataloader()
    repeated = [[(b["key"], b["mel"]) for b in loader] for _ in range(2)]
    for epoch, rerun in zip(epochs, repeated):
        assert [k for k, _ in epoch] == [k for k, _ in rerun]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(epoch, rerun))
    assert [k for k, _ in epochs[0]] != [k for k, _ in epochs[1]]


def test_slot_streams_differ_by_seed_rank_worker_and_epoch(fake_root):
    def draws(seed=0, rank=0, worker=0, epoch=0):
        ds = VoiceFaceDataModule(fake_root, num_workers=2, seed=seed).train_dataset(rank, 2)
        ds.set_epoch(epoch)
        return ds.generator(worker).integers(0, 2**32, 4).tolist()

    assert draws() == draws()
    assert len({str(draws()), str(draws(seed=1)), str(draws(rank=1)), str(draws(worker=1)),
                str(draws(epoch=1))}) == 5


def test_ranks_draw_different_crops_reproducibly(fake_root, monkeypatch):
    """Every rank used to seed its workers alike (the DataLoader's base seed): N GPUs drew
    the same crop offsets and flips. The crops drawn, by rank and seed:"""
    import datamodules.voiceface as V
    starts: list[int] = []

    def recording(n, length, rng):
        starts.append(crop_start(n, length, rng))
        return starts[-1]

    monkeypatch.setattr(V, "crop_start", recording)

    def crops(rank, seed=0):
        starts.clear()
        dm = VoiceFaceDataModule(fake_root, batch_size=3, crop_seconds=0.2, seed=seed)
        batches = list(dm.train_dataset(rank, 2))
        return list(starts), [k for b in batches for k in b["key"]], batches

    s0, k0, b0 = crops(0)
    s1, k1, _ = crops(1)
    assert len(s0) == len(k0) > 0 and s0 != s1[:len(s0)]
    assert not set(k0) & set(k1)  # and their samples are disjoint, as before
    again, keys, b = crops(0)
    assert (again, keys) == (s0, k0)
    assert all(torch.equal(x["mel"], y["mel"]) and torch.equal(x["face"], y["face"])
               for x, y in zip(b0, b))
    assert crops(0, seed=1)[0] != s0


# --- features on the accelerator -------------------------------------------------------------

def test_crop_decodes_only_its_window():
    rng = np.random.default_rng(3)
    for seconds in (0.1, 0.5, 1.7):
        wave = (0.3 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
        data = encode_flac(wave)
        whole = decode_audio(data)[0]
        for seed in range(3):
            crop, sr = decode_crop(data, 8000, np.random.default_rng(seed))
            assert sr == 16000
            assert np.array_equal(crop, random_crop(whole, 8000, np.random.default_rng(seed)))


@pytest.mark.parametrize("spectrogram", [False, True])
def test_device_features_equal_worker_features(fake_root, spectrogram):
    kw = dict(batch_size=4, crop_seconds=0.3, spectrogram=spectrogram, seed=5)
    worker = next(iter(VoiceFaceDataModule(fake_root, **kw).train_dataset()))
    dm = VoiceFaceDataModule(fake_root, features="device", **kw)
    shipped = next(iter(dm.train_dataset()))
    assert "mel" not in shipped and "spec" not in shipped
    assert shipped["wave"].shape == (4, 4800) and (shipped["wave_lengths"] == 4800).all()
    assert shipped["key"] == worker["key"] and torch.equal(shipped["faces"], worker["faces"])
    batch = device_features(shipped, spectrogram=spectrogram)
    assert "wave" not in batch and torch.equal(batch["mel_lengths"], worker["mel_lengths"])
    assert batch["mel"].shape == worker["mel"].shape
    assert (batch["mel"] - worker["mel"]).abs().max() < 1e-4
    if spectrogram:
        assert (batch["spec"] - worker["spec"]).abs().max() < 1e-4
    # evaluation batches carry worker features, which device_features leaves alone
    evaluation = next(iter(dm.eval_dataloader("test")))
    assert "mel" in evaluation and device_features(evaluation) is evaluation


def test_device_features_of_padded_utterances():
    """Whole utterances of different lengths (shorter than a window, too): the frames past
    each one's end are zero, as the worker path pads them."""
    rng = np.random.default_rng(0)
    waves = [torch.from_numpy((0.3 * rng.standard_normal(n)).astype(np.float32))
             for n in (5000, 300, 2345)]
    per_sample = [AudioFeatures()(w)["mel"] for w in waves]
    lengths = torch.tensor([m.shape[-1] for m in per_sample])
    batch = {"wave": torch.zeros(3, 5000), "wave_lengths": torch.tensor([5000, 300, 2345])}
    for i, w in enumerate(waves):
        batch["wave"][i, :len(w)] = w
    out = device_features(batch)
    assert torch.equal(out["mel_lengths"], lengths)
    for i, mel in enumerate(per_sample):
        n = mel.shape[-1]
        assert (out["mel"][i, :, :n] - mel).abs().max() < 1e-4
        assert (out["mel"][i, :, n:] == 0).all()


# --- corrupt members -----------------------------------------------------------------------

def corrupt_copy(src: Path, dst: Path, member: str) -> str:
    """Copy a dataset, replacing ``member`` of the first test sample with garbage."""
    import shutil
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    shard = dst / "shards" / manifest["splits"]["test"]["shards"][0]["name"]
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
    key = members[0][0].name.split(".")[0]
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            if m.name == f"{key}.{member}":
                data = b"\x00garbage" * 10
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    return key


@pytest.mark.parametrize("member", ["flac", "face1.png", "json"])
def test_corrupt_member_names_shard_and_key(fake_root, tmp_path, member):
    key = corrupt_copy(fake_root, tmp_path / "d", member)
    dm = VoiceFaceDataModule(tmp_path / "d", eval_batch_size=4)
    with pytest.raises(DataFormatError) as e:
        list(dm.eval_dataloader("test"))
    assert key in str(e.value) and "test-000000.tar" in str(e.value)
    dm = VoiceFaceDataModule(tmp_path / "d", eval_batch_size=4, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping corrupt sample"):
        keys = [k for b in dm.eval_dataloader("test") for k in b["key"]]
    assert key not in keys and len(keys) == len(all_keys(fake_root, "test")) - 1


# --- truncated shards ------------------------------------------------------------------------

def truncated_copy(src: Path, dst: Path, split: str, cut) -> tuple[Path, list[str]]:
    """Copy a dataset with the first shard of ``split`` cut to ``cut(size)`` bytes; the keys
    of the samples it still holds whole (every member before the cut)."""
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pretrained"))
    name = read_manifest(dst)["splits"][split]["shards"][0]["name"]
    shard = dst / "shards" / name
    data = shard.read_bytes()
    size = cut(len(data))
    members: dict[str, list[int]] = {}  # sample key -> end offset of each member
    with tarfile.open(shard) as tf:
        for m in tf:
            members.setdefault(m.name.split(".")[0], []).append(m.offset_data + m.size)
    shard.write_bytes(data[:size])
    return shard, [k for k, ends in members.items() if max(ends) <= size]


# cut in the middle of a member, and exactly at a header: between two samples or inside one
# (tar reads those as a shorter, valid archive; the manifest's sample count tells)
@pytest.mark.parametrize("header", [None, 4, 5])
def test_truncated_training_shard(fake_root, tmp_path, header, caplog):
    with tarfile.open(fake_root / "shards" / "train-000000.tar") as tf:
        offsets = [m.offset for m in tf]  # 4 members per sample
    cut = (lambda n: n // 2) if header is None else (lambda n: offsets[header])
    shard, whole = truncated_copy(fake_root, tmp_path / "d", "train", cut)
    dm = VoiceFaceDataModule(tmp_path / "d", batch_size=4, crop_seconds=0.3, shuffle_buffer=0)
    with pytest.raises(DataFormatError, match=f"{shard}: truncated or unreadable shard"):
        list(dm.train_dataset())
    dm = VoiceFaceDataModule(tmp_path / "d", batch_size=4, crop_seconds=0.3, shuffle_buffer=0,
                             skip_corrupt=True)
    with caplog.at_level("WARNING", logger="datamodules.voiceface"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-sample warning of a sample cut in two
        keys = [k for b in dm.train_dataset() for k in b["key"]]
    assert whole and set(whole) <= set(keys)  # the shard's readable samples are used
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(shard) in m and "using those (data.skip_corrupt)" in m for m in messages)
    # and the samples it lacks are counted, per pass over it
    (summary,) = [m for m in messages if m.startswith("skipped corrupt training samples")]
    assert str(shard) in summary


def test_truncated_evaluation_shard(fake_root, tmp_path, caplog):
    shard, whole = truncated_copy(fake_root, tmp_path / "d", "test", lambda n: n // 2)
    dm = VoiceFaceDataModule(tmp_path / "d", eval_batch_size=4)
    with pytest.raises(DataFormatError, match=f"{shard}: truncated or unreadable shard"):
        dm.eval_dataset("test")
    dm = VoiceFaceDataModule(tmp_path / "d", eval_batch_size=4, skip_corrupt=True)
    with caplog.at_level("WARNING", logger="datamodules.voiceface"):
        keys = [k for b in dm.eval_dataloader("test") for k in b["key"]]
    assert set(whole) <= set(keys) and str(shard) in caplog.text
    others = len(all_keys(fake_root, "test")) - 5  # the first shard holds 5 samples
    assert len(keys) == len(whole) + others


def test_shards_for_8_gpus_x_8_workers(tmp_path):
    """`voice2face prepare` cuts a training split into a shard per (rank, worker) slot of
    8 x 8 (VoxCeleb1's ~110,000 utterances: 110 shards of 1,000), and such a data set feeds
    them all without reducing the workers."""
    from voice2face.prepare.plan import shard_sizes
    assert len(shard_sizes(110_000, 1000)) >= 64 and len(shard_sizes(1_000_000, 1000)) == 1000
    assert len(shard_sizes(512, 1000)) == 64 and sum(shard_sizes(600, 1000)) == 600
    from fake_data import fake_identities
    write_fake_dataset(tmp_path, utterances=4, per_shard=1, seconds=0.1,
                       identities=fake_identities(n_train=16, n_val=2, n_test=4))
    dm = VoiceFaceDataModule(tmp_path, batch_size=2, num_workers=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dm.train_workers(8) == 8 and len(dm.train_dataset(7, 8).slot_urls(7)) == 1


# Lightning's note that the module's hook, not the DataModule's (it has none), is used
@pytest.mark.filterwarnings("ignore:You have overridden `on_after_batch_transfer`")
def test_device_features_in_a_lightning_module(fake_root):
    """What a method does with features="device": the Trainer's batches reach the
    LightningModule's on_after_batch_transfer as waveforms and its training_step as log-mel."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w, self.shapes = torch.nn.Parameter(torch.zeros(())), []

        def on_after_batch_transfer(self, batch, dataloader_idx):
            return device_features(batch)

        def training_step(self, batch, _):
            self.shapes.append(tuple(batch["mel"].shape))
            return (self.w - batch["mel"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=1, crop_seconds=0.2,
                             features="device")
    module = Module()
    L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0).fit(module, datamodule=dm)
    assert module.shapes == [(3, 64, AudioFeatures.num_frames(3200))] * 3


def test_a_manifest_that_is_not_its_datas_is_refused_naming_the_field(fake_root, tmp_path):
    import json
    import shutil

    from datamodules import DataFormatError, VoiceFaceDataModule
    root = tmp_path / "copy"
    shutil.copytree(fake_root, root)
    good = json.loads((fake_root / "manifest.json").read_text())

    def refused(manifest, match):
        (root / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataFormatError, match=match):
            VoiceFaceDataModule(root)

    refused([good], "expected a JSON object, found a list")
    refused({**good, "splits": {**good["splits"], "train": {**good["splits"]["train"],
                                                             "shards": 5}}},
            r"splits.train is .*expected an object with \"shards\" \(a list\)")
    refused({**good, "face_size": "16"}, "face_size is \"16\"; expected a positive integer")
    train = good["splits"]["train"]
    refused({**good, "splits": {**good["splits"], "train": {**train, "samples": train["samples"] + 1}}},
            f"splits.train.samples is {train['samples'] + 1}; expected the sum of its shards' "
            f"samples, {train['samples']}")
    # a shard holding more samples than the manifest says, in both directions
    fewer = json.loads(json.dumps(good))
    fewer["splits"]["val"]["shards"][0]["samples"] -= 1
    fewer["splits"]["val"]["samples"] -= 1
    (root / "manifest.json").write_text(json.dumps(fewer))
    name = fewer["splits"]["val"]["shards"][0]["name"]
    with pytest.raises(DataFormatError, match=f"{name}: 5 samples, but the manifest lists 4"):
        VoiceFaceDataModule(root).eval_dataset("val")
    # a file given as the data folder
    with pytest.raises(DataFormatError, match="is a file; expected the folder"):
        VoiceFaceDataModule(root / "manifest.json")
