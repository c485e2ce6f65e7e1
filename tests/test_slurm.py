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

from voice2face.config import load_config
from voice2face.requeue import Requeued, SlurmRequeue, cluster_plugins
from voice2face.slurm import missing_nets

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


class FakeStrategy:
    def reduce_boolean_decision(self, decision, all=True):
        return decision

    def broadcast(self, obj, src=0):
        return obj


class FakeTrainer:
    """What SlurmRequeue uses of a Trainer; records the SIGTERM handler at each save."""
    strategy, is_global_zero, global_step, loggers = FakeStrategy(), True, 7, []

    def __init__(self):
        self.saved, self.sigterm_at_save = [], []

    def save_checkpoint(self, path):
        self.saved.append(path)
        self.sigterm_at_save.append(signal.getsignal(signal.SIGTERM))


@pytest.fixture
def srun(no_slurm):
    for k, v in {**SRUN_ENV, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1"}.items():
        no_slurm.setenv(k, v)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    yield no_slurm
    signal.signal(signal.SIGTERM, previous[0])
    assert signal.getsignal(signal.SIGUSR1) == previous[1]


@pytest.mark.parametrize("requeued", [True, False])
def test_requeue_callback_checkpoints_requeues_and_stops(srun, tmp_path, capsys, requeued):
    """The handler only sets a flag; the save and the requeue happen at a batch boundary,
    with SIGTERM ignored (SLURM sends it as soon as the job is requeued), and the requeue is
    said before anything else can fail. A requeue that fails leaves training going, SIGTERM
    handled as before."""
    calls = []
    cb = SlurmRequeue(tmp_path / "last.ckpt", check_every=2)
    srun.setattr(SlurmRequeue, "_requeue", staticmethod(lambda: calls.append(1) or requeued))
    trainer = FakeTrainer()
    def lightnings(signum, frame):  # Lightning's SIGTERM handler, in a real fit
        pass

    handler = signal.signal(signal.SIGTERM, lightnings)
    cb.on_fit_start(trainer, None)
    try:
        cb.on_train_batch_end(trainer, None, None, None, 0)
        os.kill(os.getpid(), signal.SIGUSR1)      # arrives mid-batch: only the flag is set
        assert cb.signalled and not trainer.saved
        if requeued:
            with pytest.raises(Requeued, match="requeued; saved .*last.ckpt at step 7"):
                cb.on_train_batch_end(trainer, None, None, None, 1)
            assert capsys.readouterr().out == (
                f"voice2face: SLURM job 4242 requeued; saved {tmp_path / 'last.ckpt'} at step "
                f"7, which the requeued job resumes\n")
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        else:
            cb.on_train_batch_end(trainer, None, None, None, 1)
            assert "requeued" not in capsys.readouterr().out and not cb.signalled
            assert signal.getsignal(signal.SIGTERM) is lightnings
        assert trainer.saved == [tmp_path / "last.ckpt"] and calls == [1]
        assert trainer.sigterm_at_save == [signal.SIG_IGN]
    finally:
        cb.on_exception(trainer, None, None)
        signal.signal(signal.SIGTERM, handler)


# ---- the rendered script -----------------------------------------------------------------

# every pretrained net a job of some method and profile loads (empty files: the check before
# submitting only asks whether they exist)
NETS = ("face", "voice", "dimnet", "face-target", "decoder")


@pytest.fixture
def data(tmp_path) -> Path:
    """A data root named like the default one, with every pretrained net."""
    root = tmp_path / "synth-default"
    (root / "pretrained").mkdir(parents=True)
    for net in NETS:
        (root / "pretrained" / f"{net}.ckpt").touch()
    return root


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
def test_gpu_script_directives(nodes, gpus, data):
    script = make_slurm("DRY=1", "METHOD=gan", f"NODES={nodes}", f"GPUS={gpus}", f"DATA={data}",
                        "RUN_NAME=gan-test", "ARGS=trainer.max_steps=100").stdout
    d = directives(script)
    assert d["nodes"] == str(nodes)
    assert d["ntasks-per-node"] == str(gpus)        # one task per GPU
    assert d["gres"] == f"gpu:{gpus}"
    assert d["cpus-per-task"] == "8"                # data workers: 7, and the trainer's core
    assert d["signal"] == "SIGUSR1@90"              # no "B:": the signal reaches the job step
    assert "requeue" in d and d["open-mode"] == "append"
    assert d["job-name"] not in ("bash", "interactive")
    cmd = srun_line(script)
    assert cmd[1:4] == ["--kill-on-bad-exit=1", ".venv/bin/voice2face", "train"] and cmd[4] == "gan"
    for arg in (f"trainer.devices={gpus}", f"trainer.num_nodes={nodes}", "trainer.accelerator=gpu",
                "run.name=gan-test", "run.resume=auto", "trainer.max_steps=100",
                "profile=paper", "data.num_workers=7"):
        assert arg in cmd
    assert ("trainer.strategy=ddp" in cmd) == (nodes * gpus > 1)
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cpu_script_has_tasks_and_no_gres(data):
    script = make_slurm("DRY=1", "METHOD=voice", "NODES=1", "GPUS=0", "TASKS=2",
                        f"DATA={data}").stdout
    d = directives(script)
    assert d["ntasks-per-node"] == "2" and "gres" not in d and d["cpus-per-task"] == "1"
    cmd = srun_line(script)
    assert {"trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1",
            "trainer.strategy=ddp", "profile=cpu", "data.num_workers=0"} <= set(cmd)
    # the run name is fixed when the script is written, so every requeue uses one folder
    (name,) = [a.split("=", 1)[1] for a in cmd if a.startswith("run.name=")]
    assert re.fullmatch(r"voice-synth-default-slurm-\d{8}-\d{6}", name)


def fake_sbatch(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\necho 77\n")
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, record


def test_dry_run_prints_and_submits_nothing(tmp_path, data):
    env, record = fake_sbatch(tmp_path)
    before = set((REPO / "slurm").glob("*")) if (REPO / "slurm").is_dir() else set()
    proc = make_slurm("DRY=1", "METHOD=cae", "GPUS=2", "RUN_NAME=dry-test", f"DATA={data}",
                      env=env)
    assert proc.stdout.startswith("#!/bin/bash") and "srun " in proc.stdout
    assert not record.exists()
    after = set((REPO / "slurm").glob("*")) if (REPO / "slurm").is_dir() else set()
    assert after == before                          # no script written either


def test_submit_writes_the_script_and_calls_sbatch(tmp_path, data):
    env, record = fake_sbatch(tmp_path)
    name = f"submit-test-{os.getpid()}"
    script = REPO / "slurm" / f"{name}.sbatch"
    try:
        proc = make_slurm("METHOD=gan", "GPUS=2", f"RUN_NAME={name}", f"DATA={data}", env=env)
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


def test_cpus_set_the_directive_and_the_workers_unless_args_do(data):
    script = make_slurm("DRY=1", "METHOD=gan", "GPUS=2", "CPUS=4", f"DATA={data}").stdout
    assert directives(script)["cpus-per-task"] == "4" and "data.num_workers=3" in srun_line(script)
    script = make_slurm("DRY=1", "METHOD=gan", "GPUS=2", "CPUS=4", f"DATA={data}",
                        "ARGS=data.num_workers=1").stdout
    workers = [a for a in srun_line(script) if a.startswith("data.num_workers=")]
    assert workers == ["data.num_workers=1"]
    proc = make_slurm("DRY=1", "METHOD=gan", "CPUS=0", f"DATA={data}", check=False)
    assert proc.returncode == 2 and "CPUS >= 1" in proc.stderr


def test_the_job_runs_the_profile_it_was_checked_with(data):
    """GPUS>0: profile=paper on the job's command line (a GPU node would resolve auto to
    paper too, but says so nowhere); ARGS may name another. The srun line's overrides load."""
    cmd = srun_line(make_slurm("DRY=1", "METHOD=gan", "GPUS=4", f"DATA={data}",
                               "ARGS=profile=auto").stdout)
    assert [a for a in cmd if a.startswith("profile=")] == ["profile=paper"]
    cfg = load_config("gan", cmd[5:])
    assert cfg.profile == "paper" and cfg.model.voice == f"{data}/pretrained/voice.ckpt"
    assert cfg.data.num_workers == 7 and cfg.trainer.devices == 4
    cmd = srun_line(make_slurm("DRY=1", "METHOD=gan", "GPUS=4", f"DATA={data}",
                               "ARGS=profile=cpu").stdout)
    assert [a for a in cmd if a.startswith("profile=")] == ["profile=cpu"]
    assert load_config("gan", cmd[5:]).model.voice.endswith("/dimnet.ckpt")


@pytest.mark.parametrize("gpus,profile,net", [("2", "paper", "voice"), ("0", "cpu", "dimnet")])
def test_missing_net_of_the_jobs_profile_is_refused_with_its_build_command(tmp_path, data,
                                                                          gpus, profile, net):
    """A GPU job of the GAN loads voice.ckpt (paper), a CPU one dimnet.ckpt (cpu): the check
    looks for the one the job will load, whatever this machine has."""
    env, record = fake_sbatch(tmp_path)
    (data / "pretrained" / f"{net}.ckpt").unlink()
    proc = make_slurm("METHOD=gan", f"GPUS={gpus}", "RUN_NAME=nets-test", f"DATA={data}",
                      env=env, check=False)
    assert proc.returncode == 2 and not record.exists()
    path = f"{data}/pretrained/{net}.ckpt"
    (line,) = [ln for ln in proc.stderr.splitlines() if path in ln]
    assert "model.voice" in line
    assert f"`make {path} DATA={data} PROFILE={profile}`" in line
    assert f"profile={profile}" in proc.stderr.splitlines()[0]
    # the other profile's net is missing too: not this job's business
    other = "dimnet" if net == "voice" else "voice"
    (data / "pretrained" / f"{other}.ckpt").unlink()
    proc = make_slurm("METHOD=gan", f"GPUS={gpus}", "RUN_NAME=nets-test", f"DATA={data}",
                      env=env, check=False)
    assert f"{other}.ckpt" not in proc.stderr


def test_the_build_command_is_the_makefiles_rule(tmp_path):
    """Each missing net's command is a Makefile target that trains that net and exports it
    to the path the job loads (make -n: printed, not run)."""
    data = tmp_path / "world"
    cfg = load_config("regression", [f"data.root={data}", "profile=paper"])
    lines = missing_nets("regression", cfg)
    made = {ln.split()[0]: ln for ln in lines}
    assert set(made) == {f"{data}/pretrained/{n}.ckpt" for n in ("face", "face-target", "decoder")}
    for path, line in made.items():
        command = re.search(r"`make ([^`]*)`", line).group(1).split()
        dry = subprocess.run(["make", "-n", *command], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"--export {path}" in dry.stdout
        assert set(re.findall(r"profile=\w+", dry.stdout)) == {"profile=paper"}


def test_nets_a_method_does_not_load_are_not_asked_for(tmp_path):
    data = tmp_path / "world"
    for method in ("voice", "face"):      # pretraining: no judge
        assert missing_nets(method, load_config(method, [f"data.root={data}"])) == []
    # measured by the judge; checked against it (its target must not be the judge)
    for method in ("dimnet", "face_decoder"):
        keys = [ln.split()[1] for ln in missing_nets(method, load_config(method, [f"data.root={data}"]))]
        assert "(eval.judge):" in keys
    # a net outside the data's pretrained folder has no build rule: the message says so
    cfg = load_config("gan", [f"data.root={data}", "profile=paper",
                              f"model.voice={tmp_path}/mine.ckpt"])
    (line,) = [ln for ln in missing_nets("gan", cfg) if "mine.ckpt" in ln]
    assert "give model.voice an existing checkpoint" in line


def test_reserved_job_name_is_refused():
    proc = subprocess.run([sys.executable, "-m", "voice2face.slurm", "gan", "--job-name", "bash",
                           "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Lightning does not detect SLURM" in proc.stderr
