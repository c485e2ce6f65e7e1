"""W&B sweeps without a W&B server: every sweep file is well formed, sweeps only keys of its
method's merged config, optimises a metric the method really logs, and the command the
agent would build for a sampled parameter set trains; and what the W&B run receives."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from helpers import REPO, train_quick
from voice2face.config import experiments_dir, load_config
from voice2face.methods import METHODS, evaluable_methods
from voice2face.sweep import sweeps_dir, wandb_missing

SWEEPS = sorted(p.stem for p in sweeps_dir().glob("*.yaml"))
# registered methods without a sweep, and why
NO_SWEEP = {"face": "the judge: every method's numbers are measured with it, so it is trained "
                    "once (make train) and not tuned per sweep"}
# W&B's sweep search methods and parameter distributions (docs: sweep configuration keys)
SEARCH = {"grid", "random", "bayes"}
DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values", "normal",
                 "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"}
# what the test adds to the agent's command: a tiny world, one training batch and a
# validation right after it; never a swept key
TINY = ["data.batch_size=4", "data.num_workers=0",
        "data.crop_seconds=0.3", "trainer.max_steps=1", "trainer.val_check_interval=1",
        "trainer.log_every_n_steps=1", "run.checkpoint_every=100", "profile=cpu"]


def sweep(name: str) -> dict:
    return yaml.safe_load((sweeps_dir() / f"{name}.yaml").read_text())  # as `wandb sweep` reads it


def test_every_method_has_a_sweep_or_a_reason():
    assert set(SWEEPS) <= set(METHODS), f"sweep files of unregistered methods: {set(SWEEPS) - set(METHODS)}"
    assert set(evaluable_methods()) <= set(SWEEPS)
    assert set(SWEEPS) | set(NO_SWEEP) == set(METHODS)
    assert not set(SWEEPS) & set(NO_SWEEP)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_is_well_formed(name):
    s = sweep(name)
    assert s["method"] in SEARCH
    assert s["metric"]["goal"] in ("maximize", "minimize")
    assert s["metric"]["name"].startswith("val/")  # select on validation, never on test
    cmd = s["command"]
    assert cmd[:4] == ["${env}", "voice2face", "train", name] and cmd[-1] == "${args_no_hyphens}"
    assert "logger.mode=online" in cmd  # the agent reads the metric from the server
    assert s["parameters"]
    for key, p in s["parameters"].items():
        assert isinstance(p, dict) and (("values" in p) ^ ("value" in p) ^ ("min" in p)), key
        if "values" in p:
            assert isinstance(p["values"], list) and len(p["values"]) > 1, key
        if "min" in p:
            assert p.get("distribution", "uniform") in DISTRIBUTIONS, key
            assert isinstance(p["min"], (int, float)) and isinstance(p["max"], (int, float)), \
                f"{key}: min/max must parse as numbers (YAML 1.1 floats need a dot: 1.0e-4)"
            assert p["min"] < p["max"], key


def _values(p: dict) -> list:
    return p["values"] if "values" in p else [p["value"]] if "value" in p else [p["min"], p["max"]]


@pytest.mark.parametrize("name", SWEEPS)
def test_parameters_are_keys_of_the_merged_config(name):
    missing = object()
    cfg = load_config(name, ["profile=cpu"])
    for key, p in sweep(name)["parameters"].items():
        assert OmegaConf.select(cfg, key, default=missing) is not missing, \
            f"{name}: sweep parameter {key!r} is not a key of its config"
    # every value is of its key's declared type: all keys at once, the i-th value of each
    values = {k: _values(p) for k, p in sweep(name)["parameters"].items()}
    for i in range(max(map(len, values.values()))):
        chosen = {k: vs[i % len(vs)] for k, vs in values.items()}
        cfg = load_config(name, ["profile=cpu", *(f"{k}={v}" for k, v in chosen.items())])
        assert {k: OmegaConf.select(cfg, k) for k in chosen} == chosen


def sample(parameters: dict, rng: random.Random) -> dict:
    """One parameter set, drawn as the W&B controller would (within the ranges)."""
    out = {}
    for key, p in parameters.items():
        if "values" in p:
            out[key] = rng.choice(p["values"])
        elif "value" in p:
            out[key] = p["value"]
        elif p.get("distribution") == "log_uniform_values":
            out[key] = math.exp(rng.uniform(math.log(p["min"]), math.log(p["max"])))
        elif p.get("distribution") == "int_uniform" or isinstance(p["min"], int):
            out[key] = rng.randint(p["min"], p["max"])
        else:
            out[key] = rng.uniform(p["min"], p["max"])
    return out


def agent_command(sweep_cfg: dict, params: dict) -> list[str]:
    """The command `wandb agent` runs for ``params`` (wandb/wandb_agent.py, Agent._command_run:
    macros replaced by wandb's own create_sweep_command_args)."""
    command = create_sweep_command(list(sweep_cfg["command"]))
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros.update(interpreter=["python"], program=[sweep_cfg["program"]], env=["/usr/bin/env"])
    out = []
    for c in map(str, command):
        out += macros.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    return out


def offline_env(tmp_path: Path) -> dict:
    """No W&B key, an unreachable server, offline mode: nothing can leave the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_BASE_URL="http://127.0.0.1:9",
               HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("VOICE2FACE_RUN_NAME", None)
    return env


@pytest.mark.parametrize("name", SWEEPS)
def test_agent_command_trains_a_step_and_logs_the_metric(name, world, pretrained, tmp_path):
    s = sweep(name)
    params = sample(s["parameters"], random.Random(f"{name}-0"))
    ours = [f"data.root={world}", f"run.root={tmp_path}", "run.name=trial", *TINY]
    assert not {o.split("=")[0] for o in ours} & set(params), "the test must not override a swept key"
    cmd = agent_command(s, params) + ours
    proc = subprocess.run(cmd, cwd=REPO, env=offline_env(tmp_path), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    run = tmp_path / "trial"
    # the sampled values reached the run's resolved config
    saved = OmegaConf.load(run / "config.yaml")
    for key, value in params.items():
        assert OmegaConf.select(saved, key) == pytest.approx(value), key
    # the sweep's metric is one the method logs (from its validation after the step)
    (log,) = run.glob("csv/version_*/metrics.csv")
    header = next(csv.reader(log.open()))
    assert s["metric"]["name"] in header, f"{name} logs {sorted(h for h in header if h.startswith('val/'))}"


def test_wandb_receives_config_grids_and_the_evaluation_table(world, pretrained, tmp_path,
                                                               monkeypatch):
    """What the run hands to W&B (offline: wandb 0.31 keeps an offline run in its binary
    .wandb log, so the calls are recorded on their way in)."""
    from lightning.pytorch.loggers import WandbLogger
    calls: dict[str, list] = {"init": [], "image": [], "table": [], "summary": []}
    init, log_image, log_table = WandbLogger.__init__, WandbLogger.log_image, WandbLogger.log_table

    def spy_init(self, *a, **kw):
        calls["init"].append(kw)
        init(self, *a, **kw)

    def spy_image(self, key, images, step=None, **kw):
        calls["image"].append(key)
        return log_image(self, key, images, step, **kw)

    def spy_table(self, key, columns=None, data=None, **kw):
        calls["table"].append((key, columns, data))
        return log_table(self, key, columns, data, **kw)

    monkeypatch.setattr(WandbLogger, "__init__", spy_init)
    monkeypatch.setattr(WandbLogger, "log_image", spy_image)
    monkeypatch.setattr(WandbLogger, "log_table", spy_table)
    final = train_quick("gan", world, tmp_path, "trainer.max_steps=2", "run.name=logged",
                        "logger.wandb=true", "run.evaluate=true")
    run = final.parent.parent
    (kw,) = calls["init"]
    assert kw["offline"] is True                               # offline by default
    assert kw["config"] == OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert "profiles" not in kw["config"]                      # resolved: the cpu profile's
    assert kw["config"]["model"]["width"] == load_config("gan", ["profile=cpu"]).model.width \
        != load_config("gan", ["profile=paper"]).model.width
    assert "val/grid" in calls["image"] and "eval/grid" in calls["image"]
    ((key, columns, data),) = calls["table"]
    assert key == "eval/table" and columns[0] == "row" and "match_1to2" in columns
    rows = {r[0]: dict(zip(columns, r)) for r in data}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(rows) == set(metrics["rows"])                   # the table of metrics.md
    assert rows["method"]["match_1to2"] == pytest.approx(metrics["rows"]["method"]["match_1to2"])
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))   # a run to `wandb sync` later


# ---- make sweep without W&B -------------------------------------------------------------

def test_missing_wandb_is_named(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert "no W&B API key" in wandb_missing(home)
    assert "WANDB_MODE=offline" in wandb_missing({**home, "WANDB_MODE": "offline"})
    assert wandb_missing({**home, "WANDB_API_KEY": "x" * 40}) is None
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_missing(home) is None
    assert "no W&B API key" in wandb_missing({**home, "WANDB_BASE_URL": "https://wandb.example.org"})


def test_make_sweep_without_wandb_says_what_is_missing_and_fails(tmp_path):
    env = offline_env(tmp_path)
    env.pop("WANDB_MODE")
    proc = subprocess.run(["make", "-s", "--no-print-directory", "sweep", "METHOD=cae",
                           f"DATA={tmp_path / 'never-made'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no W&B API key" in proc.stderr and "wandb login" in proc.stderr
    assert not (tmp_path / "never-made").exists()  # checked before the data would be made


def test_sweeps_folder_is_not_a_method_config():
    # experiments/*.yaml are method configs; sweeps and the SLURM template live below
    assert not (experiments_dir() / "sweeps.yaml").exists()
    assert (experiments_dir() / "slurm" / "train.sbatch").is_file()
