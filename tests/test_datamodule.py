"""The shard format and the shared DataModule (fake data, in-process and 2-process DDP)."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DataFormatError, VoiceFaceDataModule, read_manifest
from datamodules.features import HOP_LENGTH, N_FFT, AudioFeatures, face_to_tensor, tensor_to_face
from datamodules.shards import (ShardWriter, decode_audio, decode_image, encode_flac, encode_png,
                                iter_tar, make_sample)
from fake_data import write_fake_dataset


def all_keys(root: Path, split: str) -> list[str]:
    m = read_manifest(root)
    return [s["__key__"] for e in m["splits"][split]["shards"]
            for s in iter_tar(root / "shards" / e["name"])]


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
    with pytest.raises(RuntimeError):
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


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 1), (2, 2)])
def test_train_slots_disjoint_covering_and_equal(fake_root, world, workers):
    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=workers, crop_seconds=0.2)
    seen, counts = [], []
    for rank in range(world):
        ds = dm.train_dataset(rank, world)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(ds)
        seen.append({k for b in batches for k in b["key"]})
    assert len(set(counts)) == 1
    assert set.union(*seen) == set(all_keys(fake_root, "train"))
    if world == 2:
        assert not seen[0] & seen[1]


def test_too_many_slots_is_a_clear_error(fake_root):
    dm = VoiceFaceDataModule(fake_root, batch_size=2, num_workers=4)
    with pytest.raises(DataFormatError, match="training shards cannot feed 2 rank"):
        dm.train_dataset(0, 2)


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
