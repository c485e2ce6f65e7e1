"""Config layering, struct mode and the command line's handling of bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from voice2face import cli
from voice2face.config import EXPERIMENTS, ConfigError, load_config
from voice2face.methods import METHODS, get_method
from voice2face.train import main as train_main

METHOD_FILES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "base")


def on(monkeypatch, **hardware):
    """Make ``profile=auto`` see this hardware (a CPU machine unless told otherwise)."""
    from voice2face import hardware as hw
    fake = hw.Hardware(**{"cuda": False, "driver": None, "torch": "2.11.0",
                          "torch_cuda": "13.0", **hardware})
    monkeypatch.setattr(hw, "detect", lambda: fake)
    return fake


@pytest.fixture
def experiments(tmp_path, monkeypatch) -> Path:
    on(monkeypatch)  # the tests below read profile=auto as a CPU machine does
    (tmp_path / "base.yaml").write_text(
        "method: ???\nprofile: auto\nseed: 0\ndata: {root: d, batch_size: 8}\n")
    (tmp_path / "toy.yaml").write_text(
        "model: {width: 4, depth: 2}\n"
        "profiles:\n  cpu: {model: {width: 8}}\n  paper: {model: {width: 64}, data: {batch_size: 128}}\n")
    return tmp_path


def test_layers_merge_in_order(experiments):
    cfg = load_config("toy", ["model.depth=3"], root=experiments)
    assert (cfg.method, cfg.profile, cfg.model.width, cfg.model.depth) == ("toy", "cpu", 8, 3)
    cfg = load_config("toy", ["profile=paper", "model.width=5"], root=experiments)
    assert (cfg.profile, cfg.model.width, cfg.data.batch_size) == ("paper", 5, 128)
    assert "profiles" not in cfg


def test_unknown_key_is_an_error_that_names_it(experiments):
    with pytest.raises(ConfigError, match="model.widht"):
        load_config("toy", ["model.widht=3"], root=experiments)
    with pytest.raises(ConfigError, match="key=value"):
        load_config("toy", ["model.width"], root=experiments)
    (experiments / "bad.yaml").write_text("profiles: {cpu: {modle: {width: 1}}}\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config("bad", [], root=experiments)
    with pytest.raises(ConfigError, match="no profile 'tpu'"):
        load_config("toy", ["profile=tpu"], root=experiments)


def test_struct_mode_after_merge(experiments):
    """A misspelt key is an error where the code writes or reads the merged config, not a new
    key or a None."""
    cfg = load_config("toy", [], root=experiments)
    with pytest.raises(ConfigAttributeError, match="new_key"):
        cfg.model.new_key = 1
    with pytest.raises(ConfigAttributeError, match="widht"):
        _ = cfg.model.widht
    cfg.model.width = 9  # a declared key still takes a value
    assert cfg.model.width == 9


@pytest.mark.parametrize("method", METHOD_FILES)
def test_every_experiment_config_loads(method):
    """Habit 11: each config file merges, and its method is registered."""
    cfg = load_config(method, ["profile=cpu"])
    assert cfg.method == method and OmegaConf.is_missing(cfg, "method") is False
    assert load_config(method, ["profile=paper"]).profile == "paper"
    get_method(method)


def test_unknown_method_lists_registered(capsys):
    with pytest.raises(KeyError, match="registered methods"):
        get_method("nonexistent")
    assert train_main(["nonexistent"]) == 2
    assert "registered methods" in capsys.readouterr().err


def test_cli_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out


def test_print_config_exits_before_training(capsys):
    method = sorted(METHODS)[0]
    assert train_main([method, "--print-config", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and f"method: {method}" in out
    assert train_main([method, "--print-config", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_a_variant_extends_its_method(experiments):
    (experiments / "big.yaml").write_text("extends: toy\nmodel: {depth: 5}\n")
    (experiments / "bigger.yaml").write_text("extends: big\nprofiles: {paper: {model: {width: 99}}}\n")
    cfg = load_config("big", [], root=experiments)
    assert (cfg.method, cfg.model.width, cfg.model.depth) == ("big", 8, 5)  # toy's cpu profile
    cfg = load_config("bigger", ["profile=paper"], root=experiments)
    assert (cfg.method, cfg.model.width, cfg.model.depth, cfg.data.batch_size) == ("bigger", 99, 5, 128)
    assert "extends" not in cfg
    # a variant's profile may set what the method's profile of that name leaves alone;
    # a misspelt key is refused when the profile applies
    (experiments / "deep.yaml").write_text("extends: toy\nprofiles: {cpu: {model: {depth: 7}}}\n")
    cfg = load_config("deep", [], root=experiments)
    assert (cfg.model.width, cfg.model.depth) == (8, 7)
    assert load_config("deep", ["profile=paper"], root=experiments).model.depth == 2
    (experiments / "deep.yaml").write_text("extends: toy\nprofiles: {cpu: {model: {detph: 7}}}\n")
    with pytest.raises(ConfigError, match="model.detph.*deep.yaml profile 'cpu'"):
        load_config("deep", [], root=experiments)
    (experiments / "typo.yaml").write_text("extends: toy\nmodel: {detph: 5}\n")
    with pytest.raises(ConfigError, match="model.detph.*typo.yaml"):
        load_config("typo", [], root=experiments)
    (experiments / "orphan.yaml").write_text("extends: nothing\n")
    with pytest.raises(ConfigError, match=r"no config .*nothing.yaml for .*orphan.yaml \(extends: nothing\)"):
        load_config("orphan", [], root=experiments)
    (experiments / "ping.yaml").write_text("extends: pong\n")
    (experiments / "pong.yaml").write_text("extends: ping\n")
    with pytest.raises(ConfigError, match="`extends` loops"):
        load_config("ping", [], root=experiments)


def test_cgan_is_gan_with_the_switch_its_cpu_noise_and_shared_eval_keys():
    for profile in ("cpu", "paper"):
        gan, cgan = (OmegaConf.to_container(load_config(m, [f"profile={profile}"]))
                     for m in ("gan", "cgan"))
        assert (gan["model"].pop("conditional"), cgan["model"].pop("conditional")) == (False, True)
        assert (gan.pop("method"), cgan.pop("method")) == ("gan", "cgan")
        if profile == "cpu":  # the cgan's cpu profile encodes its noise (cVAE-GAN)
            encoded = {"encode_noise": True, "noise_dim": 8, "kl_weight": 1.0}
            assert {k: cgan["model"].pop(k) for k in encoded} == encoded
            for k in encoded:
                gan["model"].pop(k)
        assert gan == cgan
    base = OmegaConf.load(EXPERIMENTS / "base.yaml")
    for method in METHOD_FILES:  # one eval block, in base.yaml
        assert "eval" not in OmegaConf.load(EXPERIMENTS / f"{method}.yaml"), method
        assert set(load_config(method, ["profile=cpu"]).eval) == set(base.eval)


def test_auto_is_the_hardwares_profile_and_a_gpu_torch_cannot_use_is_refused(experiments,
                                                                            monkeypatch):
    on(monkeypatch, cuda=True, driver="580.65")
    assert load_config("toy", [], root=experiments).profile == "paper"
    on(monkeypatch, cuda=False, driver=None)
    assert load_config("toy", [], root=experiments).profile == "cpu"
    # a GPU node whose driver is older than torch's CUDA build: said in one line, not run on
    # the CPU; profile=cpu does that on purpose
    on(monkeypatch, cuda=False, driver="535.104.05", torch="2.11.0", torch_cuda="13.0")
    with pytest.raises(ConfigError) as e:
        load_config("toy", [], root=experiments)
    line = str(e.value)
    assert "\n" not in line and "driver 535.104.05" in line and "CUDA 13.0" in line
    assert "pip install torch==2.11.0 torchaudio==2.11.0 --index-url" in line
    assert "profile=cpu" in line
    assert load_config("toy", ["profile=cpu"], root=experiments).profile == "cpu"


def test_the_hardware_command_prints_the_profile_or_refuses(monkeypatch, capsys):
    from voice2face import hardware
    on(monkeypatch, cuda=True, driver="580.65")
    assert hardware.main() == 0 and capsys.readouterr().out == "paper\n"
    on(monkeypatch, cuda=False, driver="550.1", torch="2.11.0+cu130")
    assert hardware.main() == 2
    out, err = capsys.readouterr()
    assert out == "" and "driver 550.1" in err and "torch==2.11.0 " in err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("method", ["gan", "cae", "cgan"])
@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_make_builds_the_voice_net_the_profile_loads_and_passes_the_profile(method, profile,
                                                                           tmp_path):
    """The voice embedder make builds before training is the one the run's config loads, and
    the run gets the profile make decided on (one decision: voice2face.hardware)."""
    data = tmp_path / "world"
    (data / "pretrained").mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    out = subprocess.run(["make", "-n", "--no-print-directory", "train-now", f"METHOD={method}",
                          f"PROFILE={profile}", f"DATA={data}"], cwd=EXPERIMENTS.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    voice = Path(load_config(method, [f"profile={profile}"]).model.voice).name
    assert f"{data}/pretrained/{voice}" in out.stdout  # the rule that builds it
    (run,) = [line for line in out.stdout.splitlines() if f"voice2face train {method}" in line]
    assert f"profile={profile}" in run.split()


@pytest.mark.parametrize("method,override,expected", [
    ("face", "data.batch_size=0", "data.batch_size=0: out of range, expected >= 1"),
    ("face", "data.batch_size=-3", "data.batch_size=-3: out of range, expected >= 1"),
    ("face", "data.num_workers=-1", "data.num_workers=-1: out of range, expected >= 0"),
    ("face", "trainer.max_steps=0", "trainer.max_steps=0: out of range, expected >= 1"),
    ("face", "data.crop_seconds=-1", "data.crop_seconds=-1.0: out of range, expected > 0"),
    ("gan", "model.width=0", "model.width=0.0: out of range, expected > 0"),
    ("dimnet", "model.face_width=-0.5", "model.face_width=-0.5: out of range, expected > 0"),
    ("face", "run.checkpoint_every=0", "run.checkpoint_every=0: out of range, expected >= 1"),
    ("gan", "model.face_weight=-1", "model.face_weight=-1.0: out of range, expected >= 0"),
    ("regression", "model.hidden=abc", "model.hidden: invalid value"),
    ("regression", "model.hidden=0", "model.hidden=0: out of range, expected >= 1"),
    ("face", "trainer.max_steps=[4", "cannot parse overrides"),
])
def test_a_value_out_of_its_range_is_refused_naming_the_key(method, override, expected, capsys):
    assert train_main([method, override, "profile=cpu", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err


def test_every_shipped_config_is_within_its_ranges():
    for method in METHOD_FILES:
        for profile in ("cpu", "paper"):
            load_config(method, [f"profile={profile}"])  # raises ConfigError otherwise


def test_every_key_with_a_null_default_declares_its_type():
    """A null default shows no type, so `model.hidden=abc` would pass the merge and fail later
    with a traceback: every such key is in DECLARED_TYPES."""
    from voice2face.config import DECLARED_TYPES, leaves
    for method in METHOD_FILES:
        raw = OmegaConf.to_container(OmegaConf.merge(
            OmegaConf.load(EXPERIMENTS / "base.yaml"), OmegaConf.load(EXPERIMENTS / f"{method}.yaml")))
        raw.pop("profiles", None)
        raw.pop("extends", None)
        untyped = [k for k, v in leaves(raw).items() if v is None and k not in DECLARED_TYPES]
        assert untyped == [], f"{method}: declare the type of {untyped} in DECLARED_TYPES"
