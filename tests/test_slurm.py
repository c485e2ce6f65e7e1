"""The SLURM path without a SLURM: the facts it relies on (Lightning's detection), the script
`make slurm` renders, and that DRY=1 submits nothing. `make test-slurm` runs it for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from voice2face.requeue import Requeued, SlurmRequeue, cluster_plugins

REPO = Path(__file__).resolve().parent.parent
SRUN_ENV = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "v2f-gan", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.fixture
def no_slurm(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    return monkeypatch


# ---- Lightning's detection: what the template must satisfy -----------------------------

def test_slurm_is_detected_only_with_ntasks_and_a_real_job_name(no_slurm):
    assert not SLURMEnvironment.detect()
    no_slurm.setenv("SLURM_JOB_ID", "4242")            # sbatch alone (batch shell): no
    no_slurm.setenv("SLURM_JOB_NAME", "v2f-gan")
    assert not SLURMEnvironment.detect()
    no_slurm.setenv("SLURM_NTASKS", "2")               # srun sets SLURM_NTASKS: yes
    assert SLURMEnvironment.detect()
    for name in ("bash", "interactive"):               # Lightning's opt-out names
        no_slurm.setenv("SLURM_JOB_NAME", name)
        assert not SLURMEnvironment.detect()
    no_slurm.setenv("SLURM_JOB_NAME", "v2f-gan")
    # several tasks need --ntasks-per-node (as the template sets it), not --ntasks
    with pytest.raises(RuntimeError, match="ntasks-per-node"):
        cluster_plugins()
    no_slurm.setenv("SLURM_NTASKS_PER_NODE", "2")
    (env,) = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # SlurmRequeue does it


def test_trainer_takes_ranks_from_slurm(no_slurm):
    for k, v in {**SRUN_ENV, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1"}.items():
        no_slurm.setenv(k, v)
    trainer = L.Trainer(accelerator="cpu", devices=1, plugins=cluster_plugins(), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally


def test_requeue_callback_checkpoints_requeues_and_stops(no_slurm, tmp_path):
    """The handler only sets a flag; the save and the requeue happen at a batch boundary."""
    for k, v in {**SRUN_ENV, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1"}.items():
        no_slurm.setenv(k, v)
    calls = []
    cb = SlurmRequeue(tmp_path / "last.ckpt", check_every=2)
    no_slurm.setattr(SlurmRequeue, "_requeue", staticmethod(lambda: calls.append(1) or True))

    class FakeStrategy:
        def reduce_boolean_decision(self, decision, all=True):
            return decision

        def broadcast(self, obj, src=0):
            return obj

    class FakeTrainer:
        strategy, is_global_zero, global_step, loggers = FakeStrategy(), True, 7, []
        saved = []

        def save_checkpoint(self, path):
            self.saved.append(path)

    trainer = FakeTrainer()
    previous = signal.getsignal(signal.SIGUSR1)
    cb.on_fit_start(trainer, None)
    try:
        cb.on_train_batch_end(trainer, None, None, None, 0)
        os.kill(os.getpid(), signal.SIGUSR1)      # arrives mid-batch: only the flag is set
        assert cb.signalled and not trainer.saved
        with pytest.raises(Requeued, match="requeued; saved .*last.ckpt at step 7"):
            cb.on_train_batch_end(trainer, None, None, None, 1)
        assert trainer.saved == [tmp_path / "last.ckpt"] and calls == [1]
    finally:
        cb.on_exception(trainer, None, None)
    assert signal.getsignal(signal.SIGUSR1) == previous


# ---- the rendered script -----------------------------------------------------------------

def make_slurm(*variables: str, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", "--no-print-directory", "-s", "slurm", *variables],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH --([a-z-]+)(?:=(.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def srun_line(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    return line.split()


@pytest.mark.parametrize("nodes,gpus", [(2, 4), (1, 1), (3, 8)])
def test_gpu_script_directives(nodes, gpus):
    script = make_slurm("DRY=1", "METHOD=gan", f"NODES={nodes}", f"GPUS={gpus}",
                        "RUN_NAME=gan-test", "ARGS=trainer.max_steps=100").stdout
    d = directives(script)
    assert d["nodes"] == str(nodes)
    assert d["ntasks-per-node"] == str(gpus)        # one task per GPU
    assert d["gres"] == f"gpu:{gpus}"
    assert d["signal"] == "SIGUSR1@90"              # no "B:": the signal reaches the job step
    assert "requeue" in d and d["open-mode"] == "append"
    assert d["job-name"] not in ("bash", "interactive")
    cmd = srun_line(script)
    assert cmd[1:4] == ["--kill-on-bad-exit=1", ".venv/bin/voice2face", "train"] and cmd[4] == "gan"
    for arg in (f"trainer.devices={gpus}", f"trainer.num_nodes={nodes}", "trainer.accelerator=gpu",
                "run.name=gan-test", "run.resume=auto", "trainer.max_steps=100"):
        assert arg in cmd
    assert ("trainer.strategy=ddp" in cmd) == (nodes * gpus > 1)
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cpu_script_has_tasks_and_no_gres():
    script = make_slurm("DRY=1", "METHOD=voice", "NODES=1", "GPUS=0", "TASKS=2").stdout
    d = directives(script)
    assert d["ntasks-per-node"] == "2" and "gres" not in d
    cmd = srun_line(script)
    assert {"trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1",
            "trainer.strategy=ddp"} <= set(cmd)
    # the run name is fixed when the script is written, so every requeue uses one folder
    (name,) = [a.split("=", 1)[1] for a in cmd if a.startswith("run.name=")]
    assert re.fullmatch(r"voice-synth-default-slurm-\d{8}-\d{6}", name)


def fake_sbatch(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\necho 77\n")
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, record


def test_dry_run_prints_and_submits_nothing(tmp_path):
    env, record = fake_sbatch(tmp_path)
    before = set((REPO / "slurm").glob("*")) if (REPO / "slurm").is_dir() else set()
    proc = make_slurm("DRY=1", "METHOD=cae", "GPUS=2", "RUN_NAME=dry-test", env=env)
    assert proc.stdout.startswith("#!/bin/bash") and "srun " in proc.stdout
    assert not record.exists()
    after = set((REPO / "slurm").glob("*")) if (REPO / "slurm").is_dir() else set()
    assert after == before                          # no script written either


def test_submit_writes_the_script_and_calls_sbatch(tmp_path):
    env, record = fake_sbatch(tmp_path)
    name = f"submit-test-{os.getpid()}"
    script = REPO / "slurm" / f"{name}.sbatch"
    try:
        proc = make_slurm("METHOD=gan", "GPUS=2", f"RUN_NAME={name}", env=env)
        assert "submitted job 77" in proc.stdout and script.is_file()
        assert record.read_text().split() == ["--parsable", f"slurm/{name}.sbatch"]
    finally:
        script.unlink(missing_ok=True)


@pytest.mark.parametrize("args,message", [
    ("trainer.devices=8", "set by the SLURM script"),
    ("model.no_such_key=1", "unknown config key"),
])
def test_bad_arguments_fail_before_submitting(tmp_path, args, message):
    env, record = fake_sbatch(tmp_path)
    proc = make_slurm("METHOD=gan", f"ARGS={args}", "RUN_NAME=bad-test", env=env, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not record.exists()


def test_reserved_job_name_is_refused():
    proc = subprocess.run([sys.executable, "-m", "voice2face.slurm", "gan", "--job-name", "bash",
                           "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Lightning does not detect SLURM" in proc.stderr
