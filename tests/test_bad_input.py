"""`voice2face train` on bad input: one line that names the key or path, exit 2, no
traceback, and no file written or changed outside the run's own folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import QUICK, train_quick
from voice2face import cli
from voice2face.training import export


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: modification time and content hash."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.fixture(scope="module")
def site(fake_root, tmp_path_factory) -> Path:
    """A world of its own, a finished face run and an exported face checkpoint, all in one
    tmp tree that the tests snapshot."""
    site = tmp_path_factory.mktemp("site")
    world = site / "world"
    shutil.copytree(fake_root, world, ignore=shutil.ignore_patterns("pretrained"))
    final = train_quick("face", world, site / "runs", "trainer.max_steps=2", "run.name=face-run",
                        "run.checkpoint_every=1")
    export(final, world / "pretrained" / "face.ckpt")
    return site


def train_fails(capsys, *args: str) -> str:
    """stderr of a `voice2face train` that must stop with exit 2 and no traceback."""
    rc = cli.main(["train", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def quick(site: Path, *overrides: str) -> list[str]:
    return [f"data.root={site / 'world'}", f"run.root={site / 'new-runs'}", *QUICK, *overrides]


def test_config_values_are_checked_against_their_types(site, capsys):
    for override, key in [("trainer.max_steps=abc", "trainer.max_steps"),
                          ("data.batch_size=abc", "data.batch_size"),
                          ("data.skip_corrupt=maybe", "data.skip_corrupt"),
                          ("optim.lr=fast", "optim.lr")]:
        line = train_fails(capsys, "face", *quick(site, override))
        assert line.startswith(f"voice2face train: {key}: invalid value"), line
    # the declared types still take what they should: an int for a float, "auto" devices
    assert cli.main(["train", "face", *quick(site, "optim.lr=1", "trainer.devices=auto"),
                     "--print-config"]) == 0
    assert not (site / "new-runs").exists()


def test_bad_data_folders_name_the_path(site, capsys):
    empty = site / "empty"
    empty.mkdir(exist_ok=True)
    truncated = site / "truncated-manifest"
    truncated.mkdir(exist_ok=True)
    text = (site / "world" / "manifest.json").read_text()
    (truncated / "manifest.json").write_text(text[: len(text) // 2])
    before = snapshot(site)
    for root, expected in [(site / "missing", "does not exist"), (empty, "has no manifest.json"),
                           (truncated, "not valid JSON")]:
        line = train_fails(capsys, "face", *quick(site, f"data.root={root}"))
        assert str(root) in line and expected in line, line
    assert "data.root is empty" in train_fails(capsys, "face", *quick(site, "data.root="))
    assert changed(before, snapshot(site)) == set()
    assert not (site / "new-runs").exists()


def test_bad_pretrained_nets_and_resume_paths_name_them(site, capsys):
    before = snapshot(site)
    missing = site / "nothing.ckpt"
    line = train_fails(capsys, "gan", *quick(site, f"model.voice={missing}"))
    assert f"checkpoint {missing} does not exist" in line and "model.voice" in line
    face = site / "world" / "pretrained" / "face.ckpt"
    line = train_fails(capsys, "gan", *quick(site, f"model.voice={face}"))
    assert str(face) in line and "a checkpoint of method 'face', expected" in line
    line = train_fails(capsys, "face", *quick(site, f"run.resume={site / 'nowhere'}"))
    assert line.endswith("does not exist; expected a run folder or a .ckpt file")
    assert f"run.resume={site / 'nowhere'}" in line
    line = train_fails(capsys, "face", *quick(site, f"run.resume={site / 'world'}"))
    assert "not the folder of a `voice2face train` run" in line
    assert changed(before, snapshot(site)) == set()
    assert not (site / "new-runs").exists()


def test_resume_checks_method_and_data_before_writing_anything(site, capsys):
    """The GAN resumed from a face run (its folder, or a face.ckpt elsewhere) and a face run
    resumed on other data stop before any file is written, anywhere."""
    other = site / "other-world"
    shutil.copytree(site / "world", other, ignore=shutil.ignore_patterns("pretrained"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["identities"][0]["name"] = "Fredrika Other"
    (other / "manifest.json").write_text(json.dumps(manifest))
    face_run = site / "runs" / "face-run"
    before = snapshot(site)
    for resume in (face_run, face_run / "checkpoints" / "last.ckpt",
                   site / "world" / "pretrained" / "face.ckpt"):
        line = train_fails(capsys, "gan", *quick(site, f"run.resume={resume}"))
        assert str(resume) in line and "checkpoint of method 'face'" in line, line
        assert "this run trains 'gan'" in line
    # a run resumes with its own data: another data.root is refused, naming both
    line = train_fails(capsys, "face", *quick(site, f"data.root={other}", f"run.resume={face_run}"))
    assert f"data.root={other}: the run {face_run} was trained with data.root=" in line
    # a checkpoint outside a run folder continues in a new one, on data of its own identities
    line = train_fails(capsys, "face", *quick(site, f"data.root={other}",
                                              f"run.resume={site / 'world' / 'pretrained' / 'face.ckpt'}"))
    assert "trained on other data" in line and str(other) in line
    assert changed(before, snapshot(site)) == set()
    assert not (site / "new-runs").exists()

    # a good resume changes files in its own run folder only
    assert cli.main(["train", "face", *quick(site, f"run.resume={face_run}",
                                             "trainer.max_steps=3")]) == 0
    touched = changed(before, snapshot(site))
    assert touched and all(p.startswith("runs/face-run/") for p in touched), touched


def test_a_fresh_run_never_reuses_another_runs_folder(site, capsys):
    before = snapshot(site)
    line = train_fails(capsys, "face", f"data.root={site / 'world'}", f"run.root={site / 'runs'}",
                       *QUICK, "run.name=face-run")
    assert "run.name=face-run" in line and "already exists" in line and "run.resume=auto" in line
    assert changed(before, snapshot(site)) == set()


def test_truncated_training_shard(site, capsys, caplog):
    cut = site / "cut-world"
    shutil.copytree(site / "world", cut, ignore=shutil.ignore_patterns("pretrained"))
    shard = cut / "shards" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    runs = site / "cut-runs"
    args = [f"data.root={cut}", f"run.root={runs}", *QUICK, "trainer.max_steps=6", "run.name=r"]
    line = train_fails(capsys, "face", *args)
    assert str(shard) in line and "truncated or unreadable shard" in line
    assert "data.skip_corrupt=true" in line
    assert not (runs / "r").exists()  # failed before its first checkpoint: no folder left

    # with skip_corrupt the run trains on the shard's readable samples; the skip is logged
    with caplog.at_level("WARNING", logger="datamodules.voiceface"):
        assert cli.main(["train", "face", *args, "data.skip_corrupt=true"]) == 0
    warned = [r.getMessage() for r in caplog.records if str(shard) in r.getMessage()]
    assert warned and "using those (data.skip_corrupt)" in warned[0]
    assert (runs / "r" / "checkpoints" / "final.ckpt").is_file()
