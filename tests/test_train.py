"""The training entry point: run folders, checkpoints, resumption, checkpoint identity."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from voice2face.cli import main as cli_main
from voice2face.config import EXPERIMENTS, ConfigError, load_config
from voice2face.methods import METHODS, Evaluation, MethodModule, load_method
from voice2face.methods.base import CheckpointError, read_checkpoint_meta
from voice2face.training import is_rank_zero, run_folder, train
from voice2face.train import main as train_main


class ToyModule(MethodModule):
    """Speaker classification from the time-averaged log-mel: the smallest real method."""

    evaluation = Evaluation.PRETRAINING

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.head = torch.nn.Linear(64, data["num_train_identities"])

    def training_step(self, batch, _):
        logits = self.head(batch["mel"].mean(-1))
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        self.log("val/mel_mean", batch["mel"].mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=float(self.cfg["optim"]["lr"]))


@pytest.fixture
def toy(tmp_path, monkeypatch, fake_root):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    shutil.copy(EXPERIMENTS / "base.yaml", experiments / "base.yaml")
    (experiments / "toy.yaml").write_text("optim: {lr: 0.1}\n")
    monkeypatch.setitem(METHODS, "toy", ToyModule)

    def config(*overrides):
        return load_config("toy", [f"data.root={fake_root}", f"run.root={tmp_path / 'runs'}",
                                   "data.batch_size=4", "data.num_workers=0",
                                   "data.crop_seconds=0.3", "logger.wandb=false",
                                   "trainer.val_check_interval=3", "run.checkpoint_every=2",
                                   "seed=0",
                                   *overrides], root=experiments)
    return config


def test_run_folder_contents_and_resume(toy):
    final = train(toy("trainer.max_steps=4", "run.name=r1"))
    folder = final.parent.parent
    assert folder.name == "r1"
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.method == "toy" and saved.trainer.max_steps == 4
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = folder.glob("csv/version_*/metrics.csv")
    assert metrics.read_text().count("\n") > 1
    assert torch.load(final, weights_only=False)["global_step"] == 4
    assert not list(folder.rglob("*.tmp"))

    # resuming continues from the last checkpoint up to the new max_steps
    final = train(toy("trainer.max_steps=7", f"run.resume={folder}"))
    assert final.parent.parent == folder
    assert len(list(folder.glob("csv/version_*/metrics.csv"))) == 2  # the first log is kept
    assert torch.load(final, weights_only=False)["global_step"] == 7

    # run.resume=auto with the same run.name also picks the run up again
    final = train(toy("trainer.max_steps=9", "run.name=r1", "run.resume=auto"))
    assert torch.load(final, weights_only=False)["global_step"] == 9


def test_checkpoint_identity_and_errors(toy, tmp_path):
    final = train(toy("trainer.max_steps=2", "run.name=r2"))
    meta = read_checkpoint_meta(final)
    assert meta["method"] == "toy" and meta["data"]["num_train_identities"] == 6
    module = load_method(final, expect="toy")
    assert isinstance(module, ToyModule) and not module.training
    with pytest.raises(CheckpointError, match="a checkpoint of method 'toy', expected 'gan'"):
        load_method(final, expect="gan")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a voice2face checkpoint"):
        load_method(plain)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a readable"):
        load_method(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_method(tmp_path / "missing.ckpt")


def test_wandb_logs_offline_into_the_run_folder(toy):
    final = train(toy("trainer.max_steps=2", "run.name=r3", "logger.wandb=true"))
    runs = list((final.parent.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# --- failures, interruptions, checkpoint names ------------------------------------------------

class FailingToy(ToyModule):
    """The toy method with a bug (or a Ctrl-C) at training batch ``fail_at``."""

    fail_at, error = 1, RuntimeError

    def training_step(self, batch, i):
        if self.global_step == self.fail_at:
            raise self.error("at batch %d" % self.fail_at)
        return super().training_step(batch, i)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(toy, monkeypatch, tmp_path):
    monkeypatch.setitem(METHODS, "toy", FailingToy)
    with pytest.raises(RuntimeError, match="at batch 1"):  # a bug keeps its traceback
        train(toy("trainer.max_steps=6", "run.name=bug"))
    assert not (tmp_path / "runs" / "bug").exists()
    # after its first checkpoint, the folder stays (it can be resumed)
    monkeypatch.setattr(FailingToy, "fail_at", 3)
    with pytest.raises(RuntimeError, match="at batch 3"):
        train(toy("trainer.max_steps=6", "run.name=late"))
    assert (tmp_path / "runs" / "late" / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture
def toy_cli(toy, tmp_path, monkeypatch, fake_root):
    """`voice2face train toy ...` as a user types it, on the toy config."""
    monkeypatch.setattr("voice2face.config.EXPERIMENTS", tmp_path / "experiments")
    previous = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
    yield lambda *o: train_main(["toy", f"data.root={fake_root}", f"run.root={tmp_path / 'runs'}",
                                 "data.batch_size=4", "data.num_workers=0",
                                 "data.crop_seconds=0.3", "logger.wandb=false",
                                 "trainer.val_check_interval=3", "run.checkpoint_every=2", *o])
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_says_what_was_kept_and_how_to_resume(toy_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "toy", FailingToy)
    monkeypatch.setattr(FailingToy, "error", KeyboardInterrupt)
    monkeypatch.setattr(FailingToy, "fail_at", 3)
    assert toy_cli("trainer.max_steps=6", "run.name=r") == 130
    err = capsys.readouterr().err
    folder = tmp_path / "runs" / "r"
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "interrupted" in line and f"kept {folder}" in line
    assert "last.ckpt" in line and "step000002.ckpt" in line
    assert f"voice2face train toy run.resume={folder}" in line
    # and the command it names does continue, from the kept step
    monkeypatch.setattr(FailingToy, "fail_at", 10**9)
    assert toy_cli("trainer.max_steps=6", f"run.resume={folder}") == 0
    final = torch.load(folder / "checkpoints" / "final.ckpt", weights_only=False)
    assert final["global_step"] == 6
    assert len(list(folder.glob("csv/version_*/metrics.csv"))) == 2  # resumed, not restarted

    monkeypatch.setattr(FailingToy, "fail_at", 1)  # before the first checkpoint
    assert toy_cli("trainer.max_steps=6", "run.name=early") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "runs" / "early").exists()
    assert err.strip().splitlines()[-1].endswith(
        f"interrupted before the first checkpoint; nothing kept ({tmp_path / 'runs' / 'early'} removed)")


def test_checkpoints_are_named_by_the_methods_steps(toy, monkeypatch):
    """A method with two optimizer steps per batch (the GAN) names checkpoints by batches."""
    final = train(toy("trainer.max_steps=4", "run.name=one"))
    assert sorted(p.name for p in final.parent.glob("*.ckpt")) == ["final.ckpt", "last.ckpt",
                                                                    "step000004.ckpt"]
    monkeypatch.setitem(METHODS, "toy", TwoStepToy)
    final = train(toy("trainer.max_steps=4", "run.name=two"))
    assert torch.load(final, weights_only=False)["global_step"] == 8
    assert sorted(p.name for p in final.parent.glob("*.ckpt")) == ["final.ckpt", "last.ckpt",
                                                                    "step000004.ckpt"]


class TwoStepToy(ToyModule):
    """Two optimizer steps per batch under manual optimization, as the GAN takes."""

    steps_per_batch = 2

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.automatic_optimization = False
        self.other = torch.nn.Linear(64, 1)

    def training_step(self, batch, _):
        opt_a, opt_b = self.optimizers()
        x = batch["mel"].mean(-1)
        for opt, loss in ((opt_a, torch.nn.functional.cross_entropy(self.head(x), batch["label"])),
                          (opt_b, self.other(x).pow(2).mean())):
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self):
        return (torch.optim.SGD(self.head.parameters(), lr=0.1),
                torch.optim.SGD(self.other.parameters(), lr=0.1))


# --- one run folder under any launcher ----------------------------------------------------------

# A process of `srun --ntasks=2`: SLURM's variables per task, nothing re-launched. It runs the
# part of `voice2face train` that picks and makes the run folder, and prints the folder.
SRUN_TASK = """
import sys
from voice2face.config import load_config
from voice2face.training import run_folder, start_run
cfg = load_config("face", sys.argv[1:])
folder, _ = run_folder(cfg)
start_run(cfg, folder)
print(folder)
"""


def srun_env(task: int, job: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VOICE2FACE_RUN_NAME", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    return {**env, "SLURM_JOB_ID": job, "SLURM_NTASKS": "2", "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task), "SLURM_NODEID": "0", "SLURM_STEP_ID": "0",
            "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train"}


def srun(job: str, args: list[str], tasks=(0, 1)) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", SRUN_TASK, *args], env=srun_env(t, job),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t in tasks]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return [out.strip().splitlines()[-1] for out, _ in outs]


def test_every_srun_task_uses_one_run_folder(fake_root, tmp_path):
    args = [f"data.root={fake_root}", f"run.root={tmp_path}", "profile=cpu"]
    # task 1 on its own decides the folder but writes nothing: that is rank zero's part
    (alone,) = srun("41", args, tasks=(1,))
    assert alone == str(tmp_path / f"face-{fake_root.name}-slurm41.0")
    assert not list(tmp_path.iterdir())
    # both tasks at once: one folder, one config, written by task 0
    folders = srun("42", args)
    assert folders[0] == folders[1] == str(tmp_path / f"face-{fake_root.name}-slurm42.0")
    assert [p.name for p in tmp_path.iterdir()] == [Path(folders[0]).name]
    assert OmegaConf.load(Path(folders[0]) / "config.yaml").method == "face"


def test_other_launchers_need_a_run_name(toy, monkeypatch):
    """Processes started side by side by a launcher without a job id cannot agree on a
    time stamp: run.name is required, and it is what they all use."""
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with pytest.raises(ConfigError, match="run.name: 2 processes were started"):
        run_folder(toy(), env)
    folder, _ = run_folder(toy("run.name=shared"), env)
    assert folder.name == "shared" and not is_rank_zero(env)
    # torchrun gives every worker the same run id
    folder, _ = run_folder(toy(), {**env, "TORCHELASTIC_RUN_ID": "abc123"})
    assert folder.name.endswith("-abc123")
    # under sbatch with one task, Lightning's re-launched processes inherit SLURM_PROCID=0
    assert not is_rank_zero({"SLURM_PROCID": "0", "LOCAL_RANK": "1"})
    assert is_rank_zero({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}) and is_rank_zero({})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_ctrl_c(fake_root, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it. (Without DataLoader workers:
    a SIGINT that lands while torch builds a worker iterator makes torch print an "Exception
    ignored in __del__" traceback of its own, which no code of ours can prevent.)"""
    import time
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice2face.cli", "train", "face", f"data.root={fake_root}",
         f"run.root={tmp_path}", "data.batch_size=4", "data.num_workers=0", "profile=cpu",
         "logger.wandb=false", "trainer.max_steps=100000", "trainer.val_check_interval=50",
         "run.evaluate=false", "run.checkpoint_every=5", "run.name=r"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"})
    deadline = time.time() + 300
    while not (tmp_path / "r" / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"voice2face train: interrupted; kept {tmp_path / 'r'}")


# --- distributed runs ------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_distributed_run_of_a_method_with_idle_nets_finds_unused_parameters(method):
    """Lightning picks plain DDP by itself for devices > 1; the methods whose backward passes
    leave a net without gradients (the GAN, the CAE) get find_unused_parameters then too."""
    from voice2face.training import ddp_strategy, processes
    cls = METHODS[method]
    wants = getattr(cls, "ddp_find_unused_parameters", False)
    assert wants == (method in ("gan", "cgan", "cae", "cae-concat"))

    def t(**kw):
        return OmegaConf.create({"devices": 1, "num_nodes": 1, "strategy": "auto",
                                 "accelerator": "cpu", **kw})
    unused = "ddp_find_unused_parameters_true"
    for cfg in (t(devices=2), t(devices="2"), t(strategy="ddp", devices=2), t(devices=[0, 1]),
                t(num_nodes=2), t(strategy="ddp", devices=1, num_nodes=4)):
        assert processes(cfg) > 1
        assert ddp_strategy(cfg, cls) == (unused if wants else cfg.strategy), cfg
    for cfg in (t(), t(devices="auto"), t(strategy="ddp")):  # one process: nothing to find
        assert processes(cfg) == 1 and ddp_strategy(cfg, cls) == cfg.strategy
    # a strategy typed out is the user's
    assert ddp_strategy(t(strategy="ddp_spawn", devices=2), cls) == "ddp_spawn"
    assert processes(t(devices=3, num_nodes=2)) == 6


RANK_SEED_SCRIPT = '''
import sys
import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, {repo!r})
from voice2face.training import RankSeed


class Draws(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, i):
        torch.save(torch.randn(4), f"{out}/rank{{self.global_rank}}-step{{i}}.pt")
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


L.seed_everything({seed})
trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[RankSeed({seed})])
trainer.fit(Draws(), DataLoader(torch.ones(8, 1), batch_size=2))
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_rank_draws_its_own_random_stream(tmp_path):
    repo = str(Path(__file__).resolve().parents[1])

    def draws(seed: int, out: Path) -> dict[str, torch.Tensor]:
        out.mkdir()
        script = out / "draws.py"
        script.write_text(RANK_SEED_SCRIPT.format(repo=repo, out=str(out), seed=seed))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return {p.stem: torch.load(p) for p in out.glob("rank*.pt")}

    a = draws(0, tmp_path / "a")
    assert set(a) == {f"rank{r}-step{s}" for r in (0, 1) for s in (0, 1)}
    assert not torch.equal(a["rank0-step0"], a["rank1-step0"])  # the ranks' noise differs
    assert not torch.equal(a["rank0-step0"], a["rank0-step1"])
    again = draws(0, tmp_path / "b")  # and the same seed draws the same again
    assert all(torch.equal(a[k], again[k]) for k in a)
    other = draws(1, tmp_path / "c")
    assert not torch.equal(a["rank1-step0"], other["rank1-step0"])


def test_more_processes_than_val_samples_is_refused_before_anything_starts(fake_root, tmp_path,
                                                                           capsys):
    """The tiny world has 12 val samples and 9 val gallery images: 16 processes would leave
    some without a validation batch, and the others waiting for them."""
    args = ["train", "face", f"data.root={fake_root}", f"run.root={tmp_path}", "profile=cpu",
            "trainer.accelerator=cpu", "logger.wandb=false", "run.name=r"]
    assert cli_main([*args, "trainer.devices=16"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{fake_root / 'manifest.json'}: 12 val samples for 16 training processes" in err
    assert not (tmp_path / "r").exists()
    assert cli_main([*args, "trainer.devices=5", "trainer.num_nodes=2", "--print-config"]) == 0
    capsys.readouterr()
    # the methods that validate on the gallery too: 9 images for 10 processes
    assert cli_main(["train", "cgan", *args[2:], "trainer.devices=5", "trainer.num_nodes=2"]) == 2
    assert "9 val gallery images for 10 training processes" in capsys.readouterr().err


# --- a run is never damaged -------------------------------------------------------------------

def test_a_second_writer_is_stopped_naming_the_holder(toy):
    from voice2face.training import RunLock
    folder = train(toy("trainer.max_steps=2", "run.name=busy")).parent.parent
    before = (folder / "config.yaml").read_text()
    with RunLock(folder):  # as a trainer of this run still running would hold it
        with pytest.raises(ConfigError, match=f"run folder {folder} is in use by host .* pid "
                                              f"{os.getpid()}"):
            train(toy("trainer.max_steps=4", "run.name=busy", "run.resume=auto"))
    assert (folder / "config.yaml").read_text() == before  # nothing written
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    # the lock goes with its holder: now the resume runs
    final = train(toy("trainer.max_steps=4", "run.name=busy", "run.resume=auto"))
    assert torch.load(final, weights_only=False)["global_step"] == 4


def test_resume_takes_the_newest_checkpoint_that_loads_whatever_its_name(toy, capsys):
    folder = train(toy("trainer.max_steps=4", "run.name=r", "run.checkpoint_every=2")
                   ).parent.parent
    ckpts = folder / "checkpoints"
    (ckpts / "final.ckpt").unlink()
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short by a full disk
    capsys.readouterr()
    final = train(toy("trainer.max_steps=6", f"run.resume={folder}"))
    out = capsys.readouterr().out
    assert "from step000004.ckpt (optimizer step 4); skipped last.ckpt: they do not load" in out
    assert torch.load(final, weights_only=False)["global_step"] == 6
    for name in ("final.ckpt", "last.ckpt"):  # rewritten whole
        assert torch.load(ckpts / name, weights_only=False)["global_step"] == 6


def test_a_copied_run_resumes_in_its_new_folder_and_keeps_last_ckpt_current(toy, tmp_path):
    old = train(toy("trainer.max_steps=2", "run.name=g1")).parent.parent
    new = tmp_path / "runs" / "g2"
    shutil.copytree(old, new)
    train(toy("trainer.max_steps=4", f"run.resume={new}"))
    assert sorted(p.name for p in (new / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert torch.load(old / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    saved = OmegaConf.load(new / "config.yaml")
    assert (saved.run.root, saved.run.name) == (str(new.parent), "g2")


def test_resume_trains_with_the_runs_own_config(toy, fake_root, tmp_path, capsys):
    folder = train(toy("trainer.max_steps=2", "run.name=own", "optim.lr=0.05")).parent.parent
    before = (folder / "config.yaml").read_text()
    # an override a resume may not change, refused before anything is written
    with pytest.raises(ConfigError, match=r"optim.lr=0.2: the run .* was trained with "
                                          r"optim.lr=0.05"):
        train(toy("optim.lr=0.2", f"run.resume={folder}"), ["optim.lr=0.2", f"run.resume={folder}"])
    assert (folder / "config.yaml").read_text() == before
    # overrides that a resume may change are taken; the rest is the run's, typed or not
    final = train(toy("trainer.max_steps=3", f"run.resume={folder}"),
                  ["trainer.max_steps=3", f"run.resume={folder}"])
    saved = OmegaConf.load(folder / "config.yaml")
    assert (saved.optim.lr, saved.trainer.max_steps) == (0.05, 3)
    assert torch.load(final, weights_only=False)["hyper_parameters"]["cfg"]["optim"]["lr"] == 0.05
    # a config.yaml edited by hand since the checkpoint is refused, naming the key
    (folder / "config.yaml").write_text(before.replace("lr: 0.05", "lr: 0.5"))
    with pytest.raises(ConfigError, match=r"config.yaml: optim.lr is 0.5, but .* was trained "
                                          r"with 0.05"):
        train(toy(f"run.resume={folder}"), [f"run.resume={folder}"])


def test_the_interrupt_hint_resumes_as_printed(fake_root, tmp_path, monkeypatch, capsys):
    """`voice2face train face run.resume=<run>` alone: data.root and the rest come from the
    run's config.yaml, not from the defaults."""
    monkeypatch.chdir(tmp_path)  # where the default data root does not exist
    args = ["train", "face", f"data.root={fake_root}", f"run.root={tmp_path / 'runs'}",
            "profile=cpu", "data.batch_size=4", "data.num_workers=0", "logger.wandb=false",
            "trainer.val_check_interval=2", "run.checkpoint_every=2", "run.evaluate=false",
            "trainer.max_steps=2", "run.name=hint"]
    assert cli_main(args) == 0
    folder = tmp_path / "runs" / "hint"
    assert cli_main(["train", "face", f"run.resume={folder}", "trainer.max_steps=3"]) == 0
    assert torch.load(folder / "checkpoints" / "final.ckpt",
                      weights_only=False)["global_step"] == 3


def test_checkpoints_and_exports_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno

    from voice2face import atomic
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    atomic.write_bytes(target, b"old" * 100)
    (target.parent / "step000002.ckpt").write_bytes(b"kept")
    # not enough room: refused before writing, one line with the sizes and what is intact
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(9, 9, 10))
    with pytest.raises(atomic.DiskFull) as e:
        atomic.write_bytes(target, b"x" * 2**20)
    line = str(e.value)
    assert "\n" not in line and str(target.parent) in line and "1.0 MB needed" in line
    assert "intact (last.ckpt, step000002.ckpt)" in line
    monkeypatch.undo()
    # the disk fills up while writing: the temporary file goes, the target stays as it was

    real_open = open

    def full_disk(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode:
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            f.write = write
        return f
    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(atomic.DiskFull, match="last.ckpt"):
        atomic.write_bytes(target, b"new" * 100)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" * 100
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "step000002.ckpt"]


def test_training_writes_nothing_outside_the_run_folder(toy, tmp_path, monkeypatch):
    """W&B's logs, cache and artifact staging live in the run folder, not under $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR",
                "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    final = train(toy("trainer.max_steps=2", "run.name=w", "logger.wandb=true"))
    assert list(home.rglob("*")) == []
    assert list((final.parent.parent / "wandb").glob("offline-run-*"))


def test_a_full_disk_ends_the_run_in_one_line_and_the_run_resumes(fake_root, tmp_path,
                                                                  monkeypatch, capsys):
    import shutil as sh

    from voice2face import atomic
    args = ["train", "face", f"data.root={fake_root}", f"run.root={tmp_path / 'runs'}",
            "profile=cpu", "data.batch_size=4", "data.num_workers=0", "logger.wandb=false",
            "trainer.val_check_interval=2", "run.checkpoint_every=2", "run.evaluate=false",
            "trainer.max_steps=6", "run.name=full"]
    real, writes = sh.disk_usage, []

    def filling(path):  # room for the first two checkpoints (step000002 and last), then none
        writes.append(path)
        usage = real(path)
        return usage._replace(free=usage.free if len(writes) <= 2 else 1000)
    monkeypatch.setattr(atomic.shutil, "disk_usage", filling)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "no space left on the device of" in err[0] and "MB needed, 0.0 MB free" in err[0]
    ckpts = tmp_path / "runs" / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000002.ckpt"]
    monkeypatch.undo()
    assert cli_main(["train", "face", f"run.resume={ckpts.parent}"]) == 0
    assert torch.load(ckpts / "final.ckpt", weights_only=False)["global_step"] == 6


def test_training_time_adds_up_across_resumes(toy):
    from voice2face.training import training_seconds
    final = train(toy("trainer.max_steps=2", "run.name=t"))
    first = training_seconds(final)
    assert first is not None and first > 0
    final = train(toy("trainer.max_steps=4", f"run.resume={final.parent.parent}"))
    assert training_seconds(final) > first  # the first invocation's time is kept


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_wandb_included(
        toy, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    def broken(self, batch, _):
        raise RuntimeError("a bug in the step")
    step = ToyModule.training_step
    monkeypatch.setattr(ToyModule, "training_step", broken)
    with pytest.raises(RuntimeError, match="a bug in the step"):
        train(toy("trainer.max_steps=2", "run.name=failed", "logger.wandb=true"))
    assert not (tmp_path / "runs" / "failed").exists()
    assert list(home.rglob("*")) == []
    monkeypatch.setattr(ToyModule, "training_step", step)
    # and the retry with the same name is not refused as existing
    assert train(toy("trainer.max_steps=2", "run.name=failed")).is_file()
